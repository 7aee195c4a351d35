//! Certificates: loading and checking PEM pairs, choosing one by SNI, and the
//! localhost development certificate.
//!
//! Everything here is plain rustls; the listener wiring lives in `proxy.rs`.
//! Certificates are part of the snapshot, so the resolver (in `proxy.rs`)
//! reads whichever set is current on every handshake: a rotated certificate
//! is served on the next handshake without a restart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::clock;
use crate::config::CertificateFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error("{dir}: cannot write the self-signed certificate: {reason}")]
    DevCert { dir: PathBuf, reason: String },
}

impl TlsError {
    /// The file the error is about, if one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            TlsError::Read { file, .. } | TlsError::Invalid { file, .. } => Some(file),
            TlsError::DevCert { .. } => None,
        }
    }
}

fn invalid(file: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// One loaded certificate chain with its key, and what we learned from it.
#[derive(Debug)]
pub struct LoadedCertificate {
    /// For an ACME certificate, `cert` and `key` are the same file.
    pub files: CertificateFiles,
    pub source: CertSource,
    pub key: Arc<CertifiedKey>,
    /// DNS names (and IP addresses, as text) from subjectAltName; the
    /// subject CN only when there is no SAN, as browsers do.
    pub names: Vec<String>,
    /// `notBefore` and `notAfter`, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The issuer's distinguished name, as text.
    pub issuer: String,
    /// The serial number in lower-case hex: with the issuer, names the
    /// certificate.
    pub serial: String,
}

label_enum! {
    /// Where a served certificate comes from (the dashboard's `source`).
    pub enum CertSource {
        /// A `[tls] certificates` pair.
        File => "file",
        /// Ordered over ACME and kept in `acme.state_dir`.
        Acme => "acme",
    }
}

/// The configured certificates, indexed for SNI selection.
#[derive(Debug, Default)]
pub struct Certificates {
    list: Vec<LoadedCertificate>,
    /// Lowercase exact names, and wildcard parents as `*.example.com`.
    by_name: HashMap<String, usize>,
    /// Names ACME keeps a certificate for that have none yet: a handshake
    /// for one is refused rather than answered with another name's
    /// certificate.
    waiting: Vec<String>,
}

impl Certificates {
    /// Loads every pair; fails on the first one that is unreadable, malformed,
    /// expired, or whose key does not match its certificate.
    pub fn load(files: &[CertificateFiles]) -> Result<Certificates, TlsError> {
        let now = clock::now();
        let mut out = Certificates::default();
        for f in files {
            let loaded = read_pair(f, CertSource::File)?;
            check_validity(&loaded, now)?;
            out.push(loaded);
        }
        Ok(out)
    }

    fn push(&mut self, loaded: LoadedCertificate) {
        let index = self.list.len();
        for name in &loaded.names {
            // The first certificate listed for a name wins, as in nginx.
            self.by_name.entry(name.clone()).or_insert(index);
        }
        self.list.push(loaded);
    }

    /// Adds the ACME certificate for `name` from `bundle`, one file holding
    /// the private key and the chain. A certificate outside its validity
    /// period is left out and the name waits for a new one (`Ok(false)`):
    /// a node that was down past the expiry must still start. Anything
    /// else wrong with the file is an error, as for a file pair.
    pub fn add_acme(&mut self, name: &str, bundle: &Path) -> Result<bool, TlsError> {
        let loaded = check_bundle(name, &read(bundle)?, bundle)?;
        if check_validity(&loaded, clock::now()).is_err() {
            self.wait_for(name);
            return Ok(false);
        }
        self.push(loaded);
        Ok(true)
    }

    /// Marks `name` as waiting for its first ACME certificate.
    pub fn wait_for(&mut self, name: &str) {
        if !self.waiting.iter().any(|n| n == name) {
            self.waiting.push(name.to_owned());
        }
    }

    /// The names waiting for an ACME certificate, in the order added.
    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.waiting.iter().map(String::as_str)
    }

    /// Whether a loaded certificate covers `name`, exactly or by a
    /// one-level wildcard (the SNI rules).
    pub fn covers(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The certificate SNI `name` selects, if one covers it.
    pub fn for_name(&self, name: &str) -> Option<&LoadedCertificate> {
        self.list.get(self.find(name)?)
    }

    /// The certificate for a handshake: exact SNI match, then a wildcard one
    /// level up; a name waiting for its ACME certificate gets none (the
    /// handshake fails); any other name, or no SNI (clients connecting by
    /// IP address), gets the first certificate.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = match sni.map(|name| (name, self.find(name))) {
            Some((_, Some(i))) => i,
            Some((name, None)) if self.is_waiting(name) => return None,
            _ if self.list.is_empty() => return None,
            _ => 0,
        };
        Some(self.list[index].key.clone())
    }

    fn is_waiting(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.waiting.iter().any(|n| n == name)
    }

    fn find(&self, name: &str) -> Option<usize> {
        // rustls hands us SNI already lowercased and validated as a DNS name.
        let name = name.trim_end_matches('.');
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let parent = &name[name.find('.')?..];
        self.by_name.get(&format!("*{parent}")).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LoadedCertificate> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Refuses a certificate outside its validity period (a minute of clock
/// skew allowed at the start).
fn check_validity(c: &LoadedCertificate, now: i64) -> Result<(), TlsError> {
    if c.not_after < now {
        return Err(invalid(
            &c.files.cert,
            format!("expired (notAfter {})", clock::rfc3339(c.not_after)),
        ));
    }
    if c.not_before > now + 60 {
        return Err(invalid(
            &c.files.cert,
            format!("not valid yet (notBefore {})", clock::rfc3339(c.not_before)),
        ));
    }
    Ok(())
}

/// Checks an ACME bundle (key and chain in one PEM) as if read from
/// `file`: well formed, key matching, and covering `name`.
pub fn check_bundle(name: &str, pem: &[u8], file: &Path) -> Result<LoadedCertificate, TlsError> {
    let files = CertificateFiles {
        cert: file.to_path_buf(),
        key: file.to_path_buf(),
    };
    let loaded = parse_pair(pem, pem, &files, CertSource::Acme)?;
    if !loaded.names.iter().any(|n| n == name) {
        return Err(invalid(
            file,
            format!(
                "does not cover {name} (its names: {})",
                loaded.names.join(", ")
            ),
        ));
    }
    Ok(loaded)
}

/// Reads and checks a chain and its key.
fn read_pair(files: &CertificateFiles, source: CertSource) -> Result<LoadedCertificate, TlsError> {
    parse_pair(&read(&files.cert)?, &read(&files.key)?, files, source)
}

fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    files: &CertificateFiles,
    source: CertSource,
) -> Result<LoadedCertificate, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(&files.cert, "no CERTIFICATE block found"));
    };
    let facts = inspect(&files.cert, leaf)?;

    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(&files.key, format!("no usable PRIVATE KEY block: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, &default_provider()).map_err(|e| {
        invalid(
            &files.key,
            format!("does not fit certificate {}: {e}", files.cert.display()),
        )
    })?;
    // `from_der` lets "unknown" consistency pass; we insist on a positive match
    // so that a pair replaced in two steps is never served half-swapped.
    certified.keys_match().map_err(|e| {
        invalid(
            &files.key,
            format!("does not match certificate {}: {e}", files.cert.display()),
        )
    })?;

    Ok(LoadedCertificate {
        files: files.clone(),
        source,
        key: Arc::new(certified),
        names: facts.names,
        not_before: facts.not_before,
        not_after: facts.not_after,
        issuer: facts.issuer,
        serial: facts.serial,
    })
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    crate::lookup::input::read(file, None).map_err(|source| TlsError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// What a leaf certificate says about itself.
struct LeafFacts {
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
    issuer: String,
    serial: String,
}

/// Names, validity window, issuer and serial of a leaf certificate.
fn inspect(file: &Path, der: &CertificateDer<'_>) -> Result<LeafFacts, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid(file, format!("unparsable certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.trim_end_matches('.').to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    let serial = serial_hex(cert.raw_serial());
    Ok(LeafFacts {
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        serial,
    })
}

/// A DER serial number as its issuer prints it: the integer in lower-case
/// hex, without the sign byte or leading zeros.
fn serial_hex(raw: &[u8]) -> String {
    let mut hex = raw.iter().fold(String::new(), |mut s, b| {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    });
    let zeros = hex.len() - hex.trim_start_matches('0').len();
    hex.drain(..zeros.min(hex.len().saturating_sub(1)));
    hex
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1`
/// to `cert`/`key` unless both already exist. For development only: the
/// quick start uses it so that no private key is ever committed.
/// Returns whether files were written.
pub fn ensure_dev_certificate(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    let names = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
    ensure_self_signed_certificate(cert, key, &names)
}

/// Writes a self-signed certificate for `names` (DNS names or IP addresses)
/// to `cert`/`key` unless both already exist, as Debian's snakeoil pair: the
/// package makes one for the machine's name so that an installed visitord
/// serves HTTPS before the operator configures a real certificate. The key
/// is written with mode 0600. Returns whether files were written.
pub fn ensure_self_signed_certificate(
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<bool, TlsError> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let dir = cert
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let fail = |reason: String| TlsError::DevCert {
        dir: dir.clone(),
        reason,
    };
    let generated =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    if let Some(key_dir) = key.parent() {
        std::fs::create_dir_all(key_dir).map_err(|e| fail(e.to_string()))?;
    }
    write_private(key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(cert, generated.cert.pem()).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, sans: &[&str]) -> CertificateFiles {
        let c = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, c.cert.pem()).unwrap();
        std::fs::write(&files.key, c.signing_key.serialize_pem()).unwrap();
        files
    }

    fn same(a: &Arc<CertifiedKey>, b: &LoadedCertificate) -> bool {
        a.cert[0] == b.key.cert[0]
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["localhost"]);
        let b = pair(dir.path(), "b", &["example.com", "*.example.com"]);
        let certs = Certificates::load(&[a, b]).unwrap();
        let list: Vec<_> = certs.iter().collect();
        assert!(same(&certs.resolve(Some("localhost")).unwrap(), list[0]));
        assert!(same(&certs.resolve(Some("example.com")).unwrap(), list[1]));
        assert!(same(
            &certs.resolve(Some("www.example.com")).unwrap(),
            list[1]
        ));
        // A wildcard covers one label only.
        assert!(same(
            &certs.resolve(Some("a.b.example.com")).unwrap(),
            list[0]
        ));
        assert!(same(&certs.resolve(None).unwrap(), list[0]));
        assert!(same(&certs.resolve(Some("other.org")).unwrap(), list[0]));
        assert_eq!(list[1].names, vec!["example.com", "*.example.com"]);
    }

    #[test]
    fn mismatched_key_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["localhost"]);
        let b = pair(dir.path(), "b", &["localhost"]);
        let mixed = CertificateFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = Certificates::load(&[mixed]).unwrap_err().to_string();
        assert!(e.contains("b.key"), "{e}");
        assert!(e.contains("a.crt"), "{e}");
    }

    #[test]
    fn missing_and_garbage_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["localhost"]);
        let missing = CertificateFiles {
            cert: dir.path().join("nope.crt"),
            key: a.key.clone(),
        };
        let e = Certificates::load(&[missing]).unwrap_err().to_string();
        assert!(e.contains("nope.crt: cannot read"), "{e}");

        std::fs::write(&a.cert, "hello").unwrap();
        let e = Certificates::load(std::slice::from_ref(&a))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.crt: no CERTIFICATE block"), "{e}");

        let b = pair(dir.path(), "b", &["localhost"]);
        std::fs::write(
            &b.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = Certificates::load(&[b]).unwrap_err().to_string();
        assert!(e.contains("b.key"), "{e}");
    }

    #[test]
    fn expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let files = CertificateFiles {
            cert: dir.path().join("old.crt"),
            key: dir.path().join("old.key"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let e = Certificates::load(&[files]).unwrap_err().to_string();
        assert!(e.contains("old.crt: expired"), "{e}");
    }

    /// One file with the key and the certificate, as ACME stores them.
    fn bundle(dir: &Path, name: &str, params: rcgen::CertificateParams) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        file
    }

    #[test]
    fn acme_certificates_join_after_file_pairs_and_waiting_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["localhost", "*.files.example"]);
        let mut certs = Certificates::load(&[a]).unwrap();
        let shop = bundle(
            dir.path(),
            "shop.example",
            rcgen::CertificateParams::new(vec!["shop.example".to_owned()]).unwrap(),
        );
        assert!(certs.add_acme("shop.example", &shop).unwrap());
        certs.wait_for("new.example");
        certs.wait_for("new.example");

        let got = certs.for_name("shop.example").unwrap();
        assert_eq!(got.source, CertSource::Acme);
        assert_eq!(got.files.cert, got.files.key);
        assert!(!got.serial.is_empty() && !got.serial.starts_with('0'));
        assert!(same(&certs.resolve(Some("shop.example")).unwrap(), got));
        assert!(
            certs.resolve(Some("new.example")).is_none(),
            "refused, not the default"
        );
        assert!(certs.resolve(Some("new.example.")).is_none());
        let first = certs.iter().next().unwrap();
        assert!(same(&certs.resolve(Some("other.example")).unwrap(), first));
        assert!(certs.covers("x.files.example") && !certs.covers("new.example"));
        assert_eq!(certs.waiting().collect::<Vec<_>>(), ["new.example"]);

        let e = certs
            .add_acme("other.example", &shop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shop.example.pem: does not cover other.example"),
            "{e}"
        );

        let mut params = rcgen::CertificateParams::new(vec!["old.example".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let old = bundle(dir.path(), "old.example", params);
        assert!(
            !certs.add_acme("old.example", &old).unwrap(),
            "expired: waits"
        );
        assert_eq!(
            certs.waiting().collect::<Vec<_>>(),
            ["new.example", "old.example"]
        );

        std::fs::write(&old, "garbage").unwrap();
        let e = certs.add_acme("old.example", &old).unwrap_err().to_string();
        assert!(e.contains("old.example.pem: no CERTIFICATE block"), "{e}");
    }

    #[test]
    fn serials_print_as_their_issuer_prints_them() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "abc");
        assert_eq!(serial_hex(&[0x00]), "0");
    }

    #[test]
    fn dev_certificate_is_created_once_with_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls/localhost.crt");
        let key = dir.path().join("tls/localhost.key");
        assert!(ensure_dev_certificate(&cert, &key).unwrap());
        assert!(!ensure_dev_certificate(&cert, &key).unwrap());
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let certs = Certificates::load(&[CertificateFiles { cert, key }]).unwrap();
        let names = &certs.iter().next().unwrap().names;
        assert_eq!(names, &["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn self_signed_certificate_names_the_given_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls/host.crt");
        let key = dir.path().join("private/host.key");
        let names = ["visitor.example.com", "visitor", "192.0.2.7"].map(str::to_owned);
        assert!(ensure_self_signed_certificate(&cert, &key, &names).unwrap());
        let certs = Certificates::load(&[CertificateFiles { cert, key }]).unwrap();
        assert_eq!(certs.iter().next().unwrap().names, names);
    }
}
