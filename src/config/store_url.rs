//! `[limits] shared_store`: the URL of the Redis or Valkey server a fleet
//! counts its project limits in (docs/fleet.md). Read by the client
//! library's own parser, so what `check` accepts is what `run` connects to.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// A store URL the client accepts: `redis://`, `rediss://` (TLS),
/// `valkey://`, `valkeys://`, or a Unix socket (`redis+unix:///path`,
/// `unix:///path`); a user name may be given, a password may not.
#[derive(Clone)]
pub struct StoreUrl {
    text: String,
    info: ConnectionInfo,
}

impl StoreUrl {
    /// The URL, or why it cannot be one (for a config error). A reason
    /// never repeats the URL: it might hold a password.
    pub fn parse(text: &str) -> Result<StoreUrl, String> {
        let Some(url) = redis::parse_redis_url(text) else {
            return Err(
                "not a redis://, rediss://, valkey://, valkeys:// or unix:// URL".to_owned(),
            );
        };
        if url.password().is_some() {
            return Err(
                "a password in the URL would show in logs and process listings; \
                 put it in limits.shared_store_password_file"
                    .to_owned(),
            );
        }
        if url.fragment() == Some("insecure") {
            return Err("#insecure turns certificate verification off; \
                 name the server's CA in limits.shared_store_ca instead"
                .to_owned());
        }
        let info = url.into_connection_info().map_err(|e| e.to_string())?;
        if !info.addr().is_supported() {
            return Err("this kind of address is not supported on this system".to_owned());
        }
        Ok(StoreUrl {
            text: text.to_owned(),
            info,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the client connects with (no password; the snapshot adds it).
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Whether the connection is TLS (`rediss://`, `valkeys://`).
    pub fn is_tls(&self) -> bool {
        matches!(self.info.addr(), ConnectionAddr::TcpTls { .. })
    }
}

impl PartialEq for StoreUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreUrl").field(&self.text).finish()
    }
}

/// The URL as written: it holds no password, so it may be logged.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn store_urls_the_client_takes() {
        for (text, tls, db) in [
            ("redis://127.0.0.1:6379/0", false, 0),
            ("redis://store.internal", false, 0),
            ("rediss://store.internal:6380/2", true, 2),
            ("valkey://[::1]:6379/1", false, 1),
            ("valkeys://visitord@store.internal/3", true, 3),
            ("redis+unix:///run/valkey/valkey.sock", false, 0),
        ] {
            let url = StoreUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((url.as_str(), url.is_tls()), (text, tls));
            assert_eq!(url.connection_info().redis_settings().db(), db, "{text}");
        }
        let url = StoreUrl::parse("rediss://visitord@store.internal").unwrap();
        assert_eq!(
            url.connection_info().redis_settings().username(),
            Some("visitord")
        );
    }

    #[test]
    fn bad_store_urls_say_why_without_repeating_a_password() {
        for (text, reason) in [
            ("http://store:6379", "not a redis://"),
            ("store:6379", "not a redis://"),
            ("", "not a redis://"),
            ("redis://:s3cret@store:6379", "password in the URL"),
            ("redis://user:s3cret@store:6379", "password in the URL"),
            ("rediss://store:6379#insecure", "#insecure"),
            ("redis://store:6379/zero", "database"),
            ("redis://0.0.0.0:6379", "wildcard"),
        ] {
            let e = StoreUrl::parse(text).unwrap_err();
            assert!(e.contains(reason), "{text}: {e}");
            assert!(!e.contains("s3cret"), "{text}: {e}");
        }
    }
}
