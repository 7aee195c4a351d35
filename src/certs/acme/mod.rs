//! Automatic certificates (ACME, RFC 8555): which names visitord keeps a
//! certificate for, the state it keeps for them under `acme.state_dir`,
//! when to order, and the orders themselves.
//!
//! - [`plan`]: the names to manage, once `[tls]` file pairs are loaded
//!   (a pair that covers a name wins).
//! - `store`: the files under `state_dir`, written atomically.
//! - `lease`: the lock that makes one node of a fleet order a name.
//! - `schedule`: renewal times and backoff, pure.
//! - `client`: the conversation with the CA (`instant-acme`).
//! - `renew`: one pass over the managed names: what is due, under a
//!   lease, ordered, recorded.
//! - `challenge`: answering the CA's checks from `state_dir`, so that
//!   whichever node the CA reaches answers.
//!
//! Certificates are served like file pairs: the snapshot loads
//! `CA/certs/NAME.pem` through `tls::Certificates`, and the reload watcher
//! picks up a new one. Nothing here runs on a request thread except
//! [`challenge::http01_token`], a string check.

pub mod challenge;
pub mod client;
pub mod lease;
pub mod renew;
pub mod schedule;
pub mod store;

use crate::certs::tls::Certificates;
use crate::config::Acme;

pub use store::Store;

/// The names of `[acme]` split by who provides their certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub store: Store,
    /// Names ACME keeps a certificate for.
    pub managed: Vec<String>,
    /// Names a `[tls]` file pair already covers: the pair is served.
    pub covered: Vec<String>,
}

/// Splits `[acme]`'s names into those a loaded file pair covers (exactly
/// or by a wildcard) and those ACME manages.
pub fn plan(acme: &Acme, files: &Certificates) -> Plan {
    let (covered, managed) = acme
        .domains
        .iter()
        .cloned()
        .partition(|name| files.covers(name));
    Plan {
        store: Store::new(&acme.state_dir, &acme.directory),
        managed,
        covered,
    }
}

/// 64 random bits from the operating system (`ring`'s generator); 0 if it
/// fails, which only makes jitter and temporary names less random.
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

/// A random 16-hex-digit string, for unique file names and lease tokens.
pub fn random_hex() -> String {
    format!("{:016x}", random_u64())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::{CertificateFiles, Config};
    use std::path::Path;

    #[test]
    fn file_pairs_win_for_the_names_they_cover() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec![
            "api.example.com".to_owned(),
            "*.shop.example.com".to_owned(),
        ])
        .unwrap();
        let files = CertificateFiles {
            cert: dir.path().join("a.crt"),
            key: dir.path().join("a.key"),
        };
        std::fs::write(&files.cert, generated.cert.pem()).unwrap();
        std::fs::write(&files.key, generated.signing_key.serialize_pem()).unwrap();
        let certs = Certificates::load(&[files]).unwrap();
        let config = Config::parse(
            Path::new("/etc/visitord/visitord.toml"),
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = true\n\
             [[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n\
             [geo]\ndatabases = [\"x.mmdb\"]\n\
             [acme]\nstate_dir = \"/srv/acme\"\ndomains = [\"api.example.com\", \"www.example.com\", \"eu.shop.example.com\", \"a.b.shop.example.com\"]\n",
        )
        .unwrap();
        let plan = plan(config.acme.as_ref().unwrap(), &certs);
        assert_eq!(plan.covered, ["api.example.com", "eu.shop.example.com"]);
        assert_eq!(plan.managed, ["www.example.com", "a.b.shop.example.com"]);
        assert_eq!(
            plan.store.bundle_file("www.example.com"),
            Path::new("/srv/acme/acme-v02.api.letsencrypt.org-directory/certs/www.example.com.pem")
        );
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
        assert_eq!(random_hex().len(), 16);
    }
}
