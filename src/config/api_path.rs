//! Where an API is mounted: `api.path`, and a site's same-origin `api_path`.

use std::fmt;

/// The public signing keys' name under an API path, and under
/// `/.well-known/` (RFC 8615) on hosts that are not sites.
pub const JWKS_FILE: &str = "jwks.json";

/// An API mount path: absolute, of `[A-Za-z0-9/-_.~]`, without `//`, not
/// `/` itself, at most 256 bytes, and always ending in `/` (one is added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath(String);

impl ApiPath {
    /// The path, or why it cannot be one (for a config error).
    pub fn parse(path: &str) -> Result<ApiPath, String> {
        let valid_chars = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
        if !path.starts_with('/') || !valid_chars || path.contains("//") || path.len() > 256 {
            return Err(format!(
                "{path:?}: must be an absolute path of [A-Za-z0-9/-_.~]"
            ));
        }
        if path == "/" {
            return Err("\"/\" would shadow /healthz and every site".to_owned());
        }
        let mut p = path.to_owned();
        if !p.ends_with('/') {
            p.push('/');
        }
        Ok(ApiPath(p))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a request for `path` is for this API: the path itself, or
    /// the path without its trailing slash (`/api/` and `/api`).
    pub fn matches(&self, path: &str) -> bool {
        path == self.0 || Some(path) == self.0.strip_suffix('/')
    }

    /// Whether `path` is the public signing keys under this API:
    /// `<path>jwks.json` (docs/signing.md).
    pub fn is_jwks(&self, path: &str) -> bool {
        path.strip_prefix(self.0.as_str()) == Some(JWKS_FILE)
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn paths_get_their_slash_and_match_with_or_without_it() {
        let p = ApiPath::parse("/visitor-api").unwrap();
        assert_eq!(p.as_str(), "/visitor-api/");
        assert!(p.matches("/visitor-api/"));
        assert!(p.matches("/visitor-api"));
        assert!(!p.matches("/visitor-api/x"));
        assert!(!p.matches("/visitor-apix"));
        assert!(!p.matches("/"));
        assert_eq!(ApiPath::parse("/api/").unwrap().as_str(), "/api/");
    }

    #[test]
    fn bad_paths_say_why() {
        for bad in ["api", "/a b", "/a//b", "/é", "/a?b"] {
            let e = ApiPath::parse(bad).unwrap_err();
            assert!(e.contains("must be an absolute path"), "{bad}: {e}");
        }
        assert!(ApiPath::parse("/").unwrap_err().contains("would shadow"));
        assert!(ApiPath::parse(&format!("/{}", "a".repeat(256))).is_err());
    }
}
