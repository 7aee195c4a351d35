//! [`AllowedOrigins`]: the per-snapshot cache of `Origin` values a project
//! already allowed, with the value to echo.

use std::fmt;

/// How many (project, `Origin`) pairs [`AllowedOrigins`] keeps.
const ALLOWED_ORIGINS: usize = 4096;

/// `Origin` values already parsed and allowed, per project, with the value
/// to echo in `Access-Control-Allow-Origin`. A site's pages send the same
/// `Origin` on every call; parsing and matching it costs more than a lookup.
/// Only allowed pairs are kept, keyed by the exact header bytes, so a hit
/// means what [`caller_origin`](super::caller_origin) then
/// [`decide`](super::decide) would say: allowed, with this echo. Bounded;
/// one per snapshot, since keys are project indexes.
pub struct AllowedOrigins {
    cache: quick_cache::sync::Cache<OriginKey, http::HeaderValue>,
}

#[derive(Hash, PartialEq, Eq)]
struct OriginKey {
    project: usize,
    origin: Box<[u8]>,
}

/// Borrowed form of [`OriginKey`]; hashes the same way.
#[derive(Hash)]
struct OriginKeyRef<'a> {
    project: usize,
    origin: &'a [u8],
}

impl quick_cache::Equivalent<OriginKey> for OriginKeyRef<'_> {
    fn equivalent(&self, key: &OriginKey) -> bool {
        self.project == key.project && self.origin == &*key.origin
    }
}

impl AllowedOrigins {
    pub fn new() -> AllowedOrigins {
        AllowedOrigins {
            cache: quick_cache::sync::Cache::new(ALLOWED_ORIGINS),
        }
    }

    /// The echo for an `Origin` header value `project` allowed before.
    pub fn get(&self, project: usize, origin: &[u8]) -> Option<http::HeaderValue> {
        self.cache.get(&OriginKeyRef { project, origin })
    }

    /// Records that `project` allows the `Origin` header value `origin`,
    /// echoed as `echo`.
    pub fn insert(&self, project: usize, origin: &[u8], echo: http::HeaderValue) {
        let key = OriginKey {
            project,
            origin: origin.into(),
        };
        self.cache.insert(key, echo);
    }
}

impl Default for AllowedOrigins {
    fn default() -> Self {
        AllowedOrigins::new()
    }
}

impl fmt::Debug for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedOrigins")
            .field("cached", &self.cache.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_origins_are_kept_per_project_and_exact_bytes() {
        let cache = AllowedOrigins::new();
        let echo = http::HeaderValue::from_static("https://shop.example.com");
        assert_eq!(cache.get(0, b"https://shop.example.com"), None);
        cache.insert(0, b"https://shop.example.com", echo.clone());
        assert_eq!(cache.get(0, b"https://shop.example.com"), Some(echo));
        assert_eq!(cache.get(1, b"https://shop.example.com"), None);
        assert_eq!(cache.get(0, b"https://shop.example.com "), None);
        assert_eq!(cache.get(0, b"https://SHOP.example.com"), None);
    }
}
