//! Who may read the metrics listener (`/metrics`, the dashboard and
//! `/status.json`): peers inside `metrics.allow`, when it lists networks,
//! and holders of the bearer token of `metrics.token_file`, when one is
//! configured. With neither, the listener must be bound to loopback
//! (checked by `config`).
//!
//! The token is compared in constant time, so its bytes cannot be learned
//! from how long a refusal takes.

use std::net::IpAddr;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::net::client_ip::Networks;
use crate::net::host::parse_authority;

/// The shortest token accepted: anything shorter can be guessed over the
/// network.
pub const MIN_TOKEN_LEN: usize = 16;

/// `metrics.allow`: the networks whose peers may connect.
pub type AllowList = Networks;

/// Why a token file was refused (the config error names file and key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("cannot read: {0}")]
    Read(String),
    #[error("the token is empty")]
    Empty,
    #[error("the token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("the token must be visible ASCII without spaces (it travels in a header)")]
    InvalidChar,
}

/// The bearer token of `metrics.token_file`. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsToken(Box<[u8]>);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// Reads the token file: the token, with surrounding whitespace (a
    /// trailing newline) ignored.
    pub fn read(path: &Path) -> Result<MetricsToken, TokenError> {
        let text = crate::lookup::input::read_to_string(path, None)
            .map_err(|e| TokenError::Read(e.to_string()))?;
        MetricsToken::parse(&text)
    }

    pub fn parse(text: &str) -> Result<MetricsToken, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::InvalidChar);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort);
        }
        Ok(MetricsToken(token.as_bytes().into()))
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.ct_eq(presented))
    }
}

/// Whether a listener on `ip` takes connections from this machine only.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The decision for one request to the metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// The peer is outside `metrics.allow`: 403.
    AddressRefused,
    /// No token, or the wrong one: 401 with `WWW-Authenticate: Bearer`.
    TokenRequired,
}

/// Whether a connection from `peer` to a listener on `listener` may be
/// read at all: the address half of [`decide`], applied at accept so that
/// a refused peer is closed before it sends a byte.
pub fn may_connect(
    listener: IpAddr,
    peer: IpAddr,
    allow: &AllowList,
    token: Option<&MetricsToken>,
) -> bool {
    decide(listener, peer, allow, token, None) != Access::AddressRefused
}

/// Whether a request naming `host` (its `Host` header) may be answered,
/// against DNS rebinding: a web page can point a name it controls at
/// 127.0.0.1 (or at an `ssh -L` tunnel) and read the answer as same-origin.
/// With a token the name does not matter (the page cannot know the token);
/// without one, only loopback names and addresses, the addresses the
/// listener is reached at, and the `metrics.hosts` names are answered. A
/// request without `Host` (HTTP/1.0) is answered: browsers always send one.
pub fn host_allowed(
    host: Option<&[u8]>,
    listener: &[IpAddr],
    names: &[String],
    token: bool,
) -> bool {
    let Some(raw) = host else {
        return true;
    };
    if token {
        return true;
    }
    let Ok(authority) = parse_authority(raw) else {
        return false;
    };
    let host = authority.host;
    if host.loopback {
        return true;
    }
    if let Some(ip) = host.ip() {
        if listener
            .iter()
            .any(|l| l.to_canonical() == ip.to_canonical())
        {
            return true;
        }
    }
    names.iter().any(|name| name == host.as_str())
}

/// Applies `allow` and `token` to a request from `peer`, carrying the
/// `authorization` header value, to a listener bound to `listener`.
///
/// `allow` and `token` reload live while the bound address does not, so
/// the rule `config` checks is applied here too: a listener bound off
/// loopback answers nobody once a reload removed both.
pub fn decide(
    listener: IpAddr,
    peer: IpAddr,
    allow: &AllowList,
    token: Option<&MetricsToken>,
    authorization: Option<&[u8]>,
) -> Access {
    if !allow.is_empty() && !allow.contains(peer) {
        return Access::AddressRefused;
    }
    if allow.is_empty() && token.is_none() && !is_loopback(listener) {
        return Access::AddressRefused;
    }
    match token {
        None => Access::Granted,
        Some(token)
            if authorization
                .and_then(bearer)
                .is_some_and(|p| token.matches(p)) =>
        {
            Access::Granted
        }
        Some(_) => Access::TokenRequired,
    }
}

/// The credentials of `Bearer <token>` (RFC 6750 §2.1; the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn allow(nets: &[&str]) -> AllowList {
        AllowList::new(nets.iter().map(|n| n.parse().unwrap()))
    }

    #[test]
    fn only_loopback_and_listed_hosts_are_answered_without_a_token() {
        let listener = ["10.0.0.5".parse().unwrap()];
        let names = ["metrics.internal".to_owned()];
        let allowed = |host: &str| host_allowed(Some(host.as_bytes()), &listener, &names, false);
        for host in [
            "localhost",
            "LOCALHOST:9180",
            "localhost.",
            "prometheus.localhost:9180",
            "127.0.0.1:9180",
            "127.8.9.10",
            "[::1]:9180",
            "10.0.0.5:9180",
            "metrics.internal",
            "Metrics.Internal.:9180",
        ] {
            assert!(allowed(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9180",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.6",
            "metrics.internal.evil",
            "",
            "a b",
        ] {
            assert!(!allowed(host), "{host}");
        }
        assert!(host_allowed(
            Some(b"attacker.example"),
            &listener,
            &names,
            true
        ));
        assert!(host_allowed(None, &listener, &names, false));
    }

    #[test]
    fn peers_outside_the_allow_list_may_not_connect() {
        let list = allow(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(may_connect(LOCAL, ip("10.1.2.3"), &list, None));
        assert!(!may_connect(LOCAL, ip("127.0.0.9"), &list, None));
        let token = MetricsToken::parse(TOKEN).unwrap();
        assert!(!may_connect(LOCAL, ip("127.0.0.9"), &list, Some(&token)));
        let none = AllowList::default();
        assert!(may_connect(LOCAL, ip("127.0.0.9"), &none, None));
        assert!(!may_connect(ip("0.0.0.0"), ip("192.0.2.1"), &none, None));
        assert!(may_connect(
            ip("0.0.0.0"),
            ip("192.0.2.1"),
            &none,
            Some(&token)
        ));
    }

    #[test]
    fn addresses_outside_the_allow_list_are_refused_first() {
        let list = allow(&["10.0.0.0/8", "::ffff:192.0.2.0/120"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            decide(LOCAL, ip("10.1.2.3"), &list, None, None),
            Access::Granted
        );
        assert_eq!(
            decide(LOCAL, ip("::ffff:10.1.2.3"), &list, None, None),
            Access::Granted
        );
        assert_eq!(
            decide(LOCAL, ip("192.0.2.9"), &list, None, None),
            Access::Granted
        );
        assert_eq!(
            decide(LOCAL, ip("127.0.0.1"), &list, None, None),
            Access::AddressRefused,
            "loopback is not implied once a list is given"
        );
        let token = MetricsToken::parse(TOKEN).unwrap();
        let good = format!("Bearer {TOKEN}");
        assert_eq!(
            decide(
                LOCAL,
                ip("172.16.0.1"),
                &list,
                Some(&token),
                Some(good.as_bytes())
            ),
            Access::AddressRefused,
            "a token does not open a refused address"
        );
        // No list: every address (the listener is on loopback).
        assert_eq!(
            decide(LOCAL, ip("203.0.113.1"), &AllowList::default(), None, None),
            Access::Granted
        );
        // Off loopback without a list or a token (a reload removed them):
        // nobody.
        for listener in ["0.0.0.0", "192.0.2.1", "::"] {
            assert_eq!(
                decide(
                    ip(listener),
                    ip("127.0.0.1"),
                    &AllowList::default(),
                    None,
                    None
                ),
                Access::AddressRefused,
                "{listener}"
            );
        }
        assert_eq!(
            decide(ip("0.0.0.0"), ip("10.1.1.1"), &list, None, None),
            Access::Granted
        );
        assert!(is_loopback(ip("::1")) && is_loopback(ip("::ffff:127.0.0.2")));
        assert!(!is_loopback(ip("0.0.0.0")));
    }

    #[test]
    fn a_configured_token_must_be_presented_exactly() {
        let token = MetricsToken::parse(&format!("  {TOKEN}\n")).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let none = AllowList::default();
        let ask =
            |auth: Option<&str>| decide(LOCAL, ip, &none, Some(&token), auth.map(str::as_bytes));
        assert_eq!(ask(Some(&format!("Bearer {TOKEN}"))), Access::Granted);
        assert_eq!(ask(Some(&format!("bearer   {TOKEN} "))), Access::Granted);
        assert_eq!(ask(None), Access::TokenRequired);
        assert_eq!(ask(Some(TOKEN)), Access::TokenRequired);
        assert_eq!(ask(Some(&format!("Basic {TOKEN}"))), Access::TokenRequired);
        assert_eq!(ask(Some(&format!("Bearer{TOKEN}"))), Access::TokenRequired);
        assert_eq!(
            ask(Some(&format!("Bearer {TOKEN}x"))),
            Access::TokenRequired
        );
        assert_eq!(
            ask(Some(&format!("Bearer {}", &TOKEN[1..]))),
            Access::TokenRequired
        );
        assert_eq!(ask(Some("Bearer ")), Access::TokenRequired);
    }

    #[test]
    fn token_files_are_checked() {
        assert_eq!(MetricsToken::parse(" \n"), Err(TokenError::Empty));
        assert_eq!(MetricsToken::parse("short"), Err(TokenError::TooShort));
        assert_eq!(
            MetricsToken::parse("0123456789 abcdefgh"),
            Err(TokenError::InvalidChar)
        );
        assert_eq!(
            MetricsToken::parse("0123456789abcdéfgh"),
            Err(TokenError::InvalidChar)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(matches!(
            MetricsToken::read(&path),
            Err(TokenError::Read(_))
        ));
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        assert_eq!(
            MetricsToken::read(&path).unwrap(),
            MetricsToken::parse(TOKEN).unwrap()
        );
        assert_eq!(
            format!("{:?}", MetricsToken::read(&path).unwrap()),
            "MetricsToken(..)"
        );
    }
}
