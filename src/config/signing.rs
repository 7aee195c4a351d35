//! `[signing]` (docs/design.md §4, docs/signing.md): the key files that sign
//! the visitor facts of `signed` projects, how long a token lives, and who
//! it says issued it. The key files are read by the snapshot, so a reload
//! rotates them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{ConfigError, RawSigning};

/// The shortest and longest `signing.ttl`.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// `[signing]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// PKCS#8 PEM private keys; the first signs, every one is published.
    pub keys: Vec<PathBuf>,
    /// `exp - iat` of every token, in whole seconds.
    pub ttl: Duration,
    /// `iss`; `None`: `https://` and the first certificate name, found by
    /// the snapshot once the certificates are loaded.
    pub issuer: Option<String>,
}

/// `[signing]` when present.
pub(super) fn parse_signing(
    file: &Path,
    raw: Option<RawSigning>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<Signing>, ConfigError> {
    raw.map(|raw| parse(file, raw, resolve)).transpose()
}

fn parse(
    file: &Path,
    raw: RawSigning,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Signing, ConfigError> {
    if raw.keys.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "signing.keys",
            "must list at least one key file (visitord signing-key generate --out FILE)",
        ));
    }
    let keys: Vec<PathBuf> = raw.keys.iter().map(|k| resolve(k)).collect();
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(ConfigError::invalid(
                file,
                format!("signing.keys[{i}]"),
                format!("{}: listed twice", k.display()),
            ));
        }
    }
    if raw.ttl < MIN_TTL || raw.ttl > MAX_TTL || raw.ttl.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            file,
            "signing.ttl",
            format!(
                "{}: must be whole seconds from 1s to 24h",
                humantime::format_duration(raw.ttl)
            ),
        ));
    }
    let issuer = raw.issuer.trim();
    if issuer.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            file,
            "signing.issuer",
            "must not contain control characters",
        ));
    }
    Ok(Signing {
        keys,
        ttl: raw.ttl,
        issuer: (!issuer.is_empty()).then(|| issuer.to_owned()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(signing: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n\
             [geo]\ndatabases = [\"x.mmdb\"]\n{signing}"
        );
        Config::parse(Path::new("/etc/visitord/visitord.toml"), &text)
    }

    #[test]
    fn defaults_and_resolved_paths() {
        let c = parse("[signing]\nkeys = [\"signing/a.pem\", \"/k/b.pem\"]\n").unwrap();
        let s = c.signing.unwrap();
        assert_eq!(
            s.keys,
            [
                PathBuf::from("/etc/visitord/signing/a.pem"),
                PathBuf::from("/k/b.pem")
            ]
        );
        assert_eq!(s.ttl, Duration::from_secs(600));
        assert_eq!(s.issuer, None);
        let c = parse(
            "[signing]\nkeys = [\"a.pem\"]\nttl = \"24h\"\nissuer = \" https://v.example \"\n",
        )
        .unwrap();
        assert!(c
            .source_files()
            .contains(&PathBuf::from("/etc/visitord/a.pem")));
        let s = c.signing.unwrap();
        assert_eq!(s.ttl, MAX_TTL);
        assert_eq!(s.issuer.as_deref(), Some("https://v.example"));
        assert!(parse("").unwrap().signing.is_none());
    }

    #[test]
    fn each_bad_value_is_refused_with_its_key() {
        for (text, key) in [
            ("keys = []", "signing.keys:"),
            ("keys = [\"a.pem\", \"./a.pem\"]", "signing.keys[1]:"),
            ("keys = [\"a.pem\"]\nttl = \"0s\"", "signing.ttl:"),
            ("keys = [\"a.pem\"]\nttl = \"25h\"", "signing.ttl:"),
            ("keys = [\"a.pem\"]\nttl = \"1500ms\"", "signing.ttl:"),
            (
                "keys = [\"a.pem\"]\nissuer = \"a\\u0000b\"",
                "signing.issuer:",
            ),
            ("keys = [\"a.pem\"]\nalgorithm = \"RS256\"", "signing"),
            ("ttl = \"1m\"", "signing"),
        ] {
            let e = parse(&format!("[signing]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("/etc/visitord/visitord.toml: {key}")),
                "{text}: {e}"
            );
        }
    }
}
