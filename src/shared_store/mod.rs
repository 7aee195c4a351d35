//! The shared store of a fleet (`[limits] shared_store`, docs/fleet.md): a
//! Redis or Valkey server where each node adds what it admitted per project
//! and minute, and reads the fleet's total back — the way API gateways
//! (Kong, Envoy) share rate limits, with no consensus of our own.
//!
//! Only project ids and window numbers reach the store: one key per project
//! and window, `visitord:rate:{project}:{window}`, holding a count and
//! expiring after two windows. Never a client address; per-client limits
//! stay on each node.
//!
//! No Pingora types: `store_sync` drives this from a background service.
//!
//! What the store sends back is bounded (`link`): a reply larger than an
//! exchange can need ends the connection, which counts as an outage.

mod link;

use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo};

use link::{Bounded, Budget};

use crate::certs::ca::read_ca;
use crate::config::{ConfigError, SharedStore, StoreUrl};
use crate::limits::project_counts::{Pending, Window, WINDOW};

/// Every key visitord writes starts with this.
pub const KEY_PREFIX: &str = "visitord:rate:";
/// A window's key outlives the window by one more, for nodes whose clocks
/// are a little behind.
const KEY_TTL: Duration = Duration::from_secs(2 * WINDOW.as_secs());
/// A store that does not accept a connection within this is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A store that does not answer a sync within this is failing: counting
/// falls back to the node's own until it answers in time again.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes the store may send while a connection is set up: `+OK` to `AUTH`
/// and `SELECT`, and whatever it says to the client library's
/// `CLIENT SETINFO` (an error from an older server).
const HANDSHAKE_BUDGET: usize = 4096;
/// Bytes the store may send in reply to an exchange: a little for the
/// exchange, plus one reply per command (`:N`, `$N` and N digits, or a
/// short error), so a few KiB even for hundreds of projects.
const REPLY_BUDGET: usize = 512;
const REPLY_BUDGET_PER_COMMAND: usize = 128;

/// The key of a project's count in a window.
pub fn key(project: &str, window: Window) -> String {
    format!("{KEY_PREFIX}{project}:{window}")
}

/// A failed connection or sync.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no connection within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("the store sent more than was asked for (a reply larger than visitord needs); connection dropped")]
    OverBudget,
    #[error("{0} replies to {1} commands")]
    Replies(usize, usize),
}

/// The store as configured, its password and CA read: what connections are
/// made from. Two settings are equal when a connection made from one would
/// be made from the other, so a reload that changes none of it keeps the
/// connection.
pub struct StoreSettings {
    url: StoreUrl,
    password: Option<String>,
    ca: Option<Vec<u8>>,
    /// The address, and the database, user and password to log in with.
    info: ConnectionInfo,
}

impl StoreSettings {
    /// Reads the password and CA files `config` names; errors name
    /// `file`'s key.
    pub fn load(file: &Path, config: &SharedStore) -> Result<StoreSettings, ConfigError> {
        let password = match &config.password_file {
            Some(path) => Some(read_password(path).map_err(|reason| {
                ConfigError::invalid(
                    file,
                    "limits.shared_store_password_file",
                    format!("{}: {reason}", path.display()),
                )
            })?),
            None => None,
        };
        let ca = match &config.ca {
            Some(path) => Some(read_ca(path).map(|ca| ca.pem).map_err(|reason| {
                ConfigError::invalid(
                    file,
                    "limits.shared_store_ca",
                    format!("{}: {reason}", path.display()),
                )
            })?),
            None => None,
        };
        let mut info = config.url.connection_info().clone();
        if let Some(password) = &password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        Ok(StoreSettings {
            url: config.url.clone(),
            password,
            ca,
            info,
        })
    }

    /// The URL, which holds no password (safe to log).
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Connects (and authenticates); does not retry.
    pub async fn connect(&self) -> Result<StoreConnection, StoreError> {
        let budget = Budget::default();
        budget.allow(HANDSHAKE_BUDGET);
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        let setup = async {
            let stream = link::open(self.info.addr(), self.ca.as_deref()).await?;
            let stream = Bounded::new(stream, budget.clone());
            let settings = self.info.redis_settings();
            Ok::<_, StoreError>(
                MultiplexedConnection::new_with_config(settings, stream, config).await?,
            )
        };
        let (conn, driver) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| StoreError::ConnectTimeout)?
            .map_err(|e| over_budget(&budget, e))?;
        // Ends when `conn` is dropped, or when the stream fails.
        tokio::spawn(driver);
        Ok(StoreConnection { conn, budget })
    }
}

impl PartialEq for StoreSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.password == other.password && self.ca == other.ca
    }
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url.as_str())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

/// The password: the file's text without a final line break.
fn read_password(path: &Path) -> Result<String, String> {
    let text = crate::lookup::input::read_to_string(path, None)
        .map_err(|e| format!("cannot read: {e}"))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("empty".to_owned());
    }
    if password.contains(['\n', '\r']) {
        return Err("more than one line".to_owned());
    }
    Ok(password.to_owned())
}

/// The error to report: the budget's, when it was exceeded (the client
/// library only sees the connection break).
fn over_budget(budget: &Budget, e: impl Into<StoreError>) -> StoreError {
    if budget.exceeded() {
        StoreError::OverBudget
    } else {
        e.into()
    }
}

/// A connection to the store.
pub struct StoreConnection {
    conn: MultiplexedConnection,
    budget: Budget,
}

impl StoreConnection {
    /// One round trip for the whole batch: adds each project's delta to its
    /// window's key (refreshing the key's expiry), or only reads the key
    /// when there is nothing to add. Returns the fleet's count of each, in
    /// batch order. An empty batch checks the store with `PING`.
    pub async fn sync(&mut self, batch: &[Pending]) -> Result<Vec<u64>, StoreError> {
        // `EXPIRE` is a command too; its reply is read and dropped.
        let commands = batch
            .iter()
            .map(|p| if p.delta > 0 { 2 } else { 1 })
            .sum::<usize>();
        self.budget
            .allow(REPLY_BUDGET + REPLY_BUDGET_PER_COMMAND * commands.max(1));
        if batch.is_empty() {
            redis::cmd("PING")
                .query_async::<()>(&mut self.conn)
                .await
                .map_err(|e| over_budget(&self.budget, e))?;
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for p in batch {
            let key = key(&p.project, p.window);
            if p.delta > 0 {
                pipe.cmd("INCRBY").arg(&key).arg(p.delta);
                pipe.cmd("EXPIRE").arg(&key).arg(KEY_TTL.as_secs()).ignore();
            } else {
                pipe.cmd("GET").arg(&key);
            }
        }
        let totals: Vec<Option<u64>> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(|e| over_budget(&self.budget, e))?;
        if totals.len() != batch.len() {
            return Err(StoreError::Replies(totals.len(), batch.len()));
        }
        Ok(totals.into_iter().map(|t| t.unwrap_or(0)).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    const FILE: &str = "/etc/visitord/visitord.toml";

    fn store(url: &str, password_file: Option<&Path>, ca: Option<&Path>) -> SharedStore {
        SharedStore {
            url: StoreUrl::parse(url).unwrap(),
            password_file: password_file.map(Path::to_path_buf),
            ca: ca.map(Path::to_path_buf),
        }
    }

    #[test]
    fn keys_hold_a_project_id_and_a_window_only() {
        assert_eq!(key("demo", 29_000_000), "visitord:rate:demo:29000000");
        assert_eq!(KEY_TTL, Duration::from_secs(120));
    }

    #[test]
    fn the_password_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let settings =
            StoreSettings::load(Path::new(FILE), &store("redis://store", Some(&file), None))
                .unwrap();
        assert_eq!(settings.password.as_deref(), Some("s3cret"));
        assert!(!format!("{settings:?}").contains("s3cret"));
        // The same files make equal settings; another password does not.
        let again =
            StoreSettings::load(Path::new(FILE), &store("redis://store", Some(&file), None))
                .unwrap();
        assert_eq!(settings, again);
        std::fs::write(&file, "other").unwrap();
        let changed =
            StoreSettings::load(Path::new(FILE), &store("redis://store", Some(&file), None))
                .unwrap();
        assert_ne!(settings, changed);
        for (text, reason) in [
            ("", "empty"),
            ("\n", "empty"),
            ("a\nb\n", "more than one line"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e =
                StoreSettings::load(Path::new(FILE), &store("redis://store", Some(&file), None))
                    .unwrap_err()
                    .to_string();
            assert!(
                e.contains("limits.shared_store_password_file") && e.contains(reason),
                "{text:?}: {e}"
            );
        }
        let e = StoreSettings::load(
            Path::new(FILE),
            &store("redis://store", Some(&dir.path().join("missing")), None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn the_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let e = StoreSettings::load(Path::new(FILE), &store("rediss://store", None, Some(&file)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.shared_store_ca") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["store".to_owned()]).unwrap();
        std::fs::write(&file, ca.cert.pem()).unwrap();
        let settings =
            StoreSettings::load(Path::new(FILE), &store("rediss://store", None, Some(&file)))
                .unwrap();
        assert_eq!(settings.url().as_str(), "rediss://store");
    }
}
