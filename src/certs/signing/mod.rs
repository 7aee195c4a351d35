//! Signed visitor facts (docs/signing.md): the keys of `[signing]` read
//! from their files (refusing files others may read, encrypted keys and
//! other key types), the public set (JWKS, RFC 7517) and what the API
//! needs to sign a token. Built with the snapshot, so a reload rotates
//! the keys; a file that fails keeps the previous snapshot's keys signing.

mod key;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

pub use key::{SignError, SigningKey};

use crate::config::{self, ConfigError};

/// Group members may at most read a key file (0640); others nothing.
const LOOSER_THAN_0640: u32 = 0o037;

/// `[signing]` with its keys read: what a snapshot signs with.
#[derive(Debug)]
pub struct Signing {
    /// In `signing.keys` order: the first signs, all are published.
    keys: Vec<SigningKey>,
    ttl_secs: i64,
    issuer: String,
    /// The JWKS document, the same bytes for every request.
    jwks: Bytes,
    /// `max-age` of the JWKS: the token lifetime, so a verifier that caches
    /// the set learns of a new key within one `ttl`.
    jwks_cache_control: HeaderValue,
}

impl Signing {
    /// Reads every key of `signing`; `issuer` is `signing.issuer` or the
    /// default the snapshot found. Errors name `config_file`, the key
    /// (`signing.keys[i]`), the key file and the reason.
    pub fn load(
        config_file: &Path,
        signing: &config::Signing,
        issuer: String,
    ) -> Result<Signing, ConfigError> {
        let keys = load_keys(config_file, &signing.keys)?;
        let ttl_secs = i64::try_from(signing.ttl.as_secs()).unwrap_or(i64::MAX);
        let jwks_cache_control = HeaderValue::from_str(&format!("public, max-age={ttl_secs}"))
            .unwrap_or_else(|_| HeaderValue::from_static("no-store"));
        Ok(Signing {
            jwks: Bytes::from(jwks(&keys)),
            keys,
            ttl_secs,
            issuer,
            jwks_cache_control,
        })
    }

    /// The key that signs: the first listed.
    pub fn signer(&self) -> Option<&SigningKey> {
        self.keys.first()
    }

    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// `exp - iat`, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `{"keys":[...]}`: every key's public JWK.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// `Cache-Control` of the JWKS answer.
    pub fn jwks_cache_control(&self) -> &HeaderValue {
        &self.jwks_cache_control
    }
}

/// The public set of `keys` (RFC 7517 §5), in their order.
pub fn jwks(keys: &[SigningKey]) -> Vec<u8> {
    let set: Vec<serde_json::Value> = keys.iter().map(SigningKey::public_jwk).collect();
    serde_json::to_vec(&serde_json::json!({ "keys": set })).unwrap_or_default()
}

/// Reads each key file of `signing.keys`; the same key listed twice is
/// refused too (two entries, one `kid`).
pub fn load_keys(config_file: &Path, files: &[PathBuf]) -> Result<Vec<SigningKey>, ConfigError> {
    let mut keys: Vec<SigningKey> = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let fail = |reason: String| {
            ConfigError::invalid(
                config_file,
                format!("signing.keys[{i}]"),
                format!("{}: {reason}", file.display()),
            )
        };
        let key = read_key(file).map_err(fail)?;
        if let Some(j) = keys.iter().position(|k| k.kid() == key.kid()) {
            return Err(fail(format!("the same key as signing.keys[{j}]")));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// One key file, or why it is refused.
fn read_key(file: &Path) -> Result<SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & LOOSER_THAN_0640 != 0 {
        return Err(format!(
            "mode {mode:04o} lets others read or change the private key: \
             at most 0640 (chmod 600 {})",
            file.display()
        ));
    }
    let pem = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    if contains(&pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("an encrypted key: visitord reads unencrypted PKCS#8 \
                    (openssl pkcs8 -topk8 -nocrypt)"
            .to_owned());
    }
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(PrivateKeyDer::Pkcs8(der)) => SigningKey::from_pkcs8(der.secret_pkcs8_der())
            .ok_or_else(|| "not an Ed25519 or P-256 key (only EdDSA and ES256 sign)".to_owned()),
        Ok(PrivateKeyDer::Pkcs1(_)) => {
            Err("an RSA key: only Ed25519 or P-256 keys sign".to_owned())
        }
        Ok(PrivateKeyDer::Sec1(_)) => Err("a SEC1 \"EC PRIVATE KEY\": convert it to PKCS#8 \
             (openssl pkcs8 -topk8 -nocrypt)"
            .to_owned()),
        Ok(_) | Err(_) => Err("no PEM \"PRIVATE KEY\" (PKCS#8) block".to_owned()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes a new Ed25519 key as PKCS#8 PEM to `out`, mode 0600, refusing
/// to replace an existing file. Returns the key (for its `kid`).
pub fn generate_key_file(out: &Path) -> Result<SigningKey, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let key = SigningKey::from_pkcs8(&pair.serialize_der())
        .ok_or_else(|| "the generated key is not Ed25519".to_owned())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(pair.serialize_pem().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(key)
}

/// `iss` when `signing.issuer` is not set: `https://` and the first name
/// of the first certificate (a `[tls]` pair's, else the first ACME name),
/// leaving out wildcards; `None` when there is none.
pub fn default_issuer<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let name = names.into_iter().find(|n| !n.starts_with("*."))?;
    Some(match name.contains(':') {
        true => format!("https://[{name}]"),
        false => format!("https://{name}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn refusal(files: &[PathBuf]) -> String {
        load_keys(Path::new("visitord.toml"), files)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn generated_keys_load_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        let made = generate_key_file(&a).unwrap();
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_keys(Path::new("v.toml"), std::slice::from_ref(&a)).unwrap();
        assert_eq!((loaded[0].kid(), loaded[0].alg()), (made.kid(), "EdDSA"));
        let before = std::fs::read(&a).unwrap();
        let e = generate_key_file(&a).unwrap_err();
        assert!(e.contains("a.pem") && e.contains("exists"), "{e}");
        assert_eq!(std::fs::read(&a).unwrap(), before);
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            load_keys(Path::new("v.toml"), &[a]).is_ok(),
            "0640 is allowed"
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_key_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pem");
        generate_key_file(&good).unwrap();
        let pem = std::fs::read_to_string(&good).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n";
        // RSA keys (which ring cannot generate) are refused in tests/signing.rs.
        let cases = [
            (write(dir.path(), "world.pem", &pem, 0o644), "mode 0644"),
            (write(dir.path(), "group-w.pem", &pem, 0o660), "mode 0660"),
            (
                write(dir.path(), "enc.pem", encrypted, 0o600),
                "an encrypted key",
            ),
            (
                write(dir.path(), "p384.pem", &p384.serialize_pem(), 0o600),
                "not an Ed25519 or P-256 key",
            ),
            (
                write(
                    dir.path(),
                    "cert.pem",
                    "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
                    0o600,
                ),
                "no PEM",
            ),
            (dir.path().join("missing.pem"), "cannot read"),
        ];
        for (file, reason) in cases {
            let e = refusal(&[good.clone(), file.clone()]);
            let want = format!(
                "visitord.toml: signing.keys[1]: {}: {reason}",
                file.display()
            );
            assert!(e.starts_with(&want), "{e}\nwanted {want}");
        }
        let e = refusal(&[good.clone(), write(dir.path(), "copy.pem", &pem, 0o600)]);
        assert!(e.ends_with("the same key as signing.keys[0]"), "{e}");
    }

    #[test]
    fn the_jwks_publishes_every_key_in_order_and_the_first_signs() {
        let dir = tempfile::tempdir().unwrap();
        let files = [dir.path().join("new.pem"), dir.path().join("old.pem")];
        let kids: Vec<String> = files
            .iter()
            .map(|f| generate_key_file(f).unwrap().kid().to_owned())
            .collect();
        let config = config::Signing {
            keys: files.to_vec(),
            ttl: std::time::Duration::from_secs(90),
            issuer: None,
        };
        let s = Signing::load(Path::new("v.toml"), &config, "https://v.example".into()).unwrap();
        assert_eq!(s.signer().unwrap().kid(), kids[0]);
        let set: serde_json::Value = serde_json::from_slice(s.jwks()).unwrap();
        let published: Vec<&str> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(published, kids);
        assert_eq!(
            set["keys"][0]["d"],
            serde_json::Value::Null,
            "no private part"
        );
        assert_eq!(s.jwks_cache_control(), "public, max-age=90");
        assert_eq!((s.ttl_secs(), s.issuer()), (90, "https://v.example"));
    }

    #[test]
    fn the_default_issuer_is_the_first_plain_certificate_name() {
        assert_eq!(
            default_issuer(["*.example.com", "visitor.example.com"]).as_deref(),
            Some("https://visitor.example.com")
        );
        assert_eq!(default_issuer(["::1"]).as_deref(), Some("https://[::1]"));
        assert_eq!(default_issuer(["*.example.com"]), None);
        assert_eq!(default_issuer([]), None);
    }
}
