//! Certificates: loading and checking PEM pairs, choosing one by SNI, and the
//! localhost development certificate.
//!
//! Everything here is plain rustls; the listener wiring lives in `proxy.rs`.
//! Certificates are part of the snapshot, so the resolver (in `proxy.rs`)
//! reads whichever set is current on every handshake: a rotated certificate
//! is served on the next handshake without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

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
    #[error("{dir}: cannot write the development certificate: {reason}")]
    DevCert { dir: PathBuf, reason: String },
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
    pub files: CertificateFiles,
    pub key: Arc<CertifiedKey>,
    /// DNS names (and IP addresses, as text) from subjectAltName; the
    /// subject CN only when there is no SAN, as browsers do.
    pub names: Vec<String>,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

/// The configured certificates, indexed for SNI selection.
#[derive(Debug, Default)]
pub struct Certificates {
    list: Vec<LoadedCertificate>,
    /// Lowercase exact names, and wildcard parents as `*.example.com`.
    by_name: HashMap<String, usize>,
}

impl Certificates {
    /// Loads every pair; fails on the first one that is unreadable, malformed,
    /// expired, or whose key does not match its certificate.
    pub fn load(files: &[CertificateFiles]) -> Result<Certificates, TlsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs() as i64;
        let mut out = Certificates::default();
        for f in files {
            let loaded = load_pair(f, now)?;
            let index = out.list.len();
            for name in &loaded.names {
                // The first certificate listed for a name wins, as in nginx.
                out.by_name.entry(name.clone()).or_insert(index);
            }
            out.list.push(loaded);
        }
        Ok(out)
    }

    /// The certificate for a handshake: exact SNI match, then a wildcard one
    /// level up, then the first configured certificate (clients without SNI,
    /// e.g. those connecting by IP address).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = sni
            .and_then(|name| self.find(name))
            .or(if self.list.is_empty() { None } else { Some(0) })?;
        Some(self.list[index].key.clone())
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

fn load_pair(files: &CertificateFiles, now: i64) -> Result<LoadedCertificate, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;

    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(&files.cert, "no CERTIFICATE block found"));
    };
    let (names, not_before, not_after) = inspect(&files.cert, leaf)?;
    if not_after < now {
        return Err(invalid(
            &files.cert,
            format!("expired (notAfter {})", format_unix(not_after)),
        ));
    }
    if not_before > now + 60 {
        return Err(invalid(
            &files.cert,
            format!("not valid yet (notBefore {})", format_unix(not_before)),
        ));
    }

    let key = PrivateKeyDer::from_pem_slice(&key_pem)
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
        key: Arc::new(certified),
        names,
        not_after,
    })
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// Names and validity window of a leaf certificate.
fn inspect(file: &Path, der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), TlsError> {
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
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn format_unix(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1`
/// to `cert`/`key` unless both already exist. For development only: the
/// quick start uses it so that no private key is ever committed.
/// Returns whether files were written.
pub fn ensure_dev_certificate(cert: &Path, key: &Path) -> Result<bool, TlsError> {
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
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
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
}
