//! Answering the CA's checks. The node that orders writes the answer into
//! `state_dir`; whichever node of the fleet the CA's request reaches reads
//! it from there.

/// Where the CA asks for an HTTP-01 token (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The token an HTTP-01 request path asks for; `None` when the path is
/// not under [`HTTP01_PREFIX`]. The token itself is checked by
/// `Store::http01_file` before it names a file.
pub fn http01_token(path: &str) -> Option<&str> {
    path.strip_prefix(HTTP01_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_well_known_path_only() {
        assert_eq!(
            http01_token("/.well-known/acme-challenge/abc-_123"),
            Some("abc-_123")
        );
        assert_eq!(http01_token("/.well-known/acme-challenge/"), Some(""));
        assert_eq!(http01_token("/.well-known/acme-challengeX"), None);
        assert_eq!(http01_token("/api/"), None);
    }
}
