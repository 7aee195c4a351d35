//! The ACME state on disk, under `acme.state_dir`, which a fleet may share:
//!
//! ```text
//! state_dir/
//!   http-01/TOKEN                 key authorizations, served by any node
//!   CA/account.json               the account (its key inside), 0600
//!   CA/certs/NAME.pem             private key + chain, 0600, one file
//!   CA/certs/NAME.json            renewal record (`Meta`)
//!   CA/locks/NAME.lock            leases (`lease`)
//! ```
//!
//! `CA` is a folder per directory URL, so switching from a staging CA to
//! production orders fresh certificates instead of serving untrusted ones.
//! Key and chain share one file so that one rename replaces both: a reload
//! never sees a new certificate beside an old key. Every write goes to a
//! temporary file in the same folder, is synced, then renamed over the old
//! one; the reload watcher loads the result like any certificate pair.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{file}: {reason}")]
    Io { file: PathBuf, reason: String },
    #[error("{file}: damaged, left as it is: {reason}")]
    Damaged { file: PathBuf, reason: String },
}

fn io_error(file: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        file: file.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Where one CA's state lives, and the shared challenge folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
    ca: PathBuf,
}

/// What is known about the certificate kept for one name, beside it in
/// `NAME.json`. Written only under the name's lease, so every node reads
/// the same schedule and the same backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Serial of the certificate this record describes (lower-case hex);
    /// a record about another certificate is ignored.
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub not_after: Option<i64>,
    /// Unix seconds.
    #[serde(default)]
    pub issued_at: Option<i64>,
    #[serde(default)]
    pub order_url: Option<String>,
    /// When to renew, Unix seconds: picked once per certificate (inside
    /// the CA's renewal window, or `renew_before` ahead of expiry) so that
    /// restarts and other nodes agree.
    #[serde(default)]
    pub renew_at: Option<i64>,
    /// The CA's renewal window (RFC 9773), when it offers one.
    #[serde(default)]
    pub ari: Option<AriWindow>,
    /// Orders that failed in a row, and when the next may be tried.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub retry_at: Option<i64>,
    /// The last failure, as logged.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A suggested renewal window, Unix seconds, and when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriWindow {
    pub start: i64,
    pub end: i64,
    pub next_check: i64,
}

impl Store {
    /// The state of the CA at `directory`, under `state_dir`.
    pub fn new(state_dir: &Path, directory: &str) -> Store {
        Store {
            root: state_dir.to_path_buf(),
            ca: state_dir.join(ca_folder(directory)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn account_file(&self) -> PathBuf {
        self.ca.join("account.json")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.ca.join("certs")
    }

    /// The private key and chain of `name`'s certificate.
    pub fn bundle_file(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.pem"))
    }

    pub fn meta_file(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.json"))
    }

    /// The lease for ordering `what` (a name, or `account`).
    pub fn lock_file(&self, what: &str) -> PathBuf {
        self.ca.join("locks").join(format!("{what}.lock"))
    }

    pub fn http01_dir(&self) -> PathBuf {
        self.root.join("http-01")
    }

    /// Where the key authorization for an HTTP-01 `token` lives; `None`
    /// for anything that is not a token (RFC 8555 §8.3: base64url
    /// characters only), so a request path never names another file.
    pub fn http01_file(&self, token: &str) -> Option<PathBuf> {
        is_token(token).then(|| self.http01_dir().join(token))
    }

    /// Creates the folders (mode 0700: the state holds private keys).
    pub fn prepare(&self) -> Result<(), StoreError> {
        for dir in [
            self.http01_dir(),
            self.tls_alpn01_dir(),
            self.certs_dir(),
            self.ca.join("locks"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io_error(&dir, format!("cannot create: {e}")))?;
        }
        Ok(())
    }

    /// The renewal record of `name`: `None` when there is none yet.
    pub fn read_meta(&self, name: &str) -> Result<Option<Meta>, StoreError> {
        let file = self.meta_file(name);
        let Some(text) = read_optional(&file)? else {
            return Ok(None);
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::Damaged {
                file,
                reason: e.to_string(),
            })
    }

    pub fn write_meta(&self, name: &str, meta: &Meta) -> Result<(), StoreError> {
        let file = self.meta_file(name);
        let text = serde_json::to_vec_pretty(meta).map_err(|e| io_error(&file, e))?;
        write_atomic(&file, &text, 0o644)
    }

    /// Replaces `name`'s key and chain in one rename.
    pub fn write_bundle(
        &self,
        name: &str,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<(), StoreError> {
        let mut bundle = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        bundle.push_str(key_pem.trim_end());
        bundle.push('\n');
        bundle.push_str(chain_pem);
        write_atomic(&self.bundle_file(name), bundle.as_bytes(), 0o600)
    }

    /// The stored account (the credentials' JSON), if any.
    pub fn read_account(&self) -> Result<Option<Vec<u8>>, StoreError> {
        read_optional(&self.account_file())
    }

    pub fn write_account(&self, json: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.account_file(), json, 0o600)
    }

    pub fn tls_alpn01_dir(&self) -> PathBuf {
        self.root.join("tls-alpn-01")
    }

    /// Where the key authorization for a TLS-ALPN-01 challenge of `name`
    /// lives (names are normalised DNS names, safe as file names).
    pub fn tls_alpn01_file(&self, name: &str) -> PathBuf {
        self.tls_alpn01_dir().join(name)
    }

    pub fn write_tls_alpn01(&self, name: &str, key_authorization: &str) -> Result<(), StoreError> {
        write_atomic(
            &self.tls_alpn01_file(name),
            key_authorization.as_bytes(),
            0o644,
        )
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        let _ = std::fs::remove_file(self.tls_alpn01_file(name));
    }

    pub fn write_http01(&self, token: &str, key_authorization: &str) -> Result<(), StoreError> {
        let file = self
            .http01_file(token)
            .ok_or_else(|| io_error(&self.http01_dir(), format!("{token:?} is not a token")))?;
        write_atomic(&file, key_authorization.as_bytes(), 0o644)
    }

    /// Best effort: a token left behind is harmless (it answers only the
    /// CA's question, which is over) and small.
    pub fn remove_http01(&self, token: &str) {
        if let Some(file) = self.http01_file(token) {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A folder name for a directory URL: its host, port and path, in
/// characters any file system takes (`acme-v02.api.letsencrypt.org-directory`).
fn ca_folder(directory: &str) -> String {
    let rest = directory
        .split_once("://")
        .map_or(directory, |(_, rest)| rest);
    let mut out = String::with_capacity(rest.len());
    for c in rest.chars() {
        let c = c.to_ascii_lowercase();
        out.push(match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            ':' => '_',
            _ => '-',
        });
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "ca".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// RFC 8555 §8.1: a token is base64url without padding; CAs use 43
/// characters, and no legitimate one is longer than a few hundred.
fn is_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn read_optional(file: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(file, format!("cannot read: {e}"))),
    }
}

/// Writes `bytes` to `path` so that a reader sees the old content or the
/// new, never a part: a temporary file in the same folder, synced, then
/// renamed over `path`, then the folder synced so the rename survives a
/// crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", super::random_hex()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io_error(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_ca_gets_its_own_folder() {
        for (url, folder) in [
            (
                "https://acme-v02.api.letsencrypt.org/directory",
                "acme-v02.api.letsencrypt.org-directory",
            ),
            (
                "https://acme-staging-v02.api.letsencrypt.org/directory",
                "acme-staging-v02.api.letsencrypt.org-directory",
            ),
            ("https://127.0.0.1:14000/dir", "127.0.0.1_14000-dir"),
            ("https://[::1]:14000/dir?x=1", "__1-_14000-dir-x-1"),
            ("https://", "ca"),
        ] {
            let f = ca_folder(url);
            assert_eq!(f, folder, "{url}");
            assert!(!f.contains('/') && !f.starts_with('.'), "{f}");
        }
    }

    #[test]
    fn tokens_never_name_another_file() {
        let store = Store::new(Path::new("/var/lib/visitord/acme"), "https://ca/dir");
        assert_eq!(
            store.http01_file("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"),
            Some(PathBuf::from(
                "/var/lib/visitord/acme/http-01/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
            ))
        );
        for bad in [
            "",
            "..",
            "../account.json",
            "a/b",
            "a.b",
            "%2e%2e",
            &"a".repeat(257),
        ] {
            assert_eq!(store.http01_file(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn writes_replace_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "https://ca.example/dir");
        store.prepare().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.certs_dir()), 0o700);

        store.write_bundle("a.example", "KEY\n", "CHAIN\n").unwrap();
        let bundle = store.bundle_file("a.example");
        assert_eq!(std::fs::read_to_string(&bundle).unwrap(), "KEY\nCHAIN\n");
        assert_eq!(mode(&bundle), 0o600);
        store.write_bundle("a.example", "KEY2", "CHAIN2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&bundle).unwrap(), "KEY2\nCHAIN2\n");

        store.write_account(b"{}").unwrap();
        assert_eq!(mode(&store.account_file()), 0o600);
        assert_eq!(store.read_account().unwrap().unwrap(), b"{}");

        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(store.certs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.example.pem"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.json");
        std::fs::write(&target, "old").unwrap();
        // A folder where the file should be: the rename fails.
        let blocked = dir.path().join("sub");
        std::fs::create_dir_all(blocked.join("x.json")).unwrap();
        std::fs::write(blocked.join("x.json").join("keep"), "").unwrap();
        let e = write_atomic(&blocked.join("x.json"), b"new", 0o644).unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&blocked).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file is removed");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
    }

    #[test]
    fn meta_round_trips_and_damage_is_reported_not_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "https://ca.example/dir");
        store.prepare().unwrap();
        assert_eq!(store.read_meta("a.example").unwrap(), None);
        let meta = Meta {
            serial: Some("1f".into()),
            not_after: Some(2_000_000_000),
            renew_at: Some(1_990_000_000),
            ari: Some(AriWindow {
                start: 1,
                end: 2,
                next_check: 3,
            }),
            failures: 2,
            ..Meta::default()
        };
        store.write_meta("a.example", &meta).unwrap();
        assert_eq!(store.read_meta("a.example").unwrap(), Some(meta));

        std::fs::write(store.meta_file("a.example"), "{\"serial\": ").unwrap();
        let e = store.read_meta("a.example").unwrap_err().to_string();
        assert!(e.contains("a.example.json: damaged, left as it is"), "{e}");
        assert_eq!(
            std::fs::read_to_string(store.meta_file("a.example")).unwrap(),
            "{\"serial\": "
        );
    }

    #[test]
    fn unknown_fields_in_a_record_are_ignored() {
        // A newer visitord on another node may write more.
        let m: Meta = serde_json::from_str(r#"{"renew_at": 5, "future": true}"#).unwrap();
        assert_eq!(m.renew_at, Some(5));
    }
}
