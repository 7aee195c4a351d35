//! Host names and ports, wherever they come from: the `Host` header (or
//! HTTP/2 `:authority`), an `Origin` or `Referer`, a project's domains, a
//! site's hosts and upstreams, a forwarding header's hops. One parser, so
//! that every part of visitord agrees on what a host is.
//!
//! A host is normalised once, into the form a browser puts on the wire:
//! ASCII lowercase, IDNs in their punycode (`xn--`) form, no trailing dot,
//! IPv6 literals in brackets in RFC 5952 form. Matching is then a byte
//! comparison. What is refused: empty labels (a leading dot, `a..b`),
//! labels over 63 bytes, hosts over 253, characters other than letters,
//! digits, `-`, `_` and `.`, and a host whose last label is a number but
//! which is not a dotted-decimal IPv4 address (`127.1`, `0x7f.0.0.1`), as
//! the WHATWG URL standard reads such hosts as IPv4. `_` is allowed because
//! browsers accept it in hosts (it is not a WHATWG forbidden code point).

use std::borrow::Cow;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// RFC 1035 limits, without the trailing root dot.
pub const MAX_HOST_LEN: usize = 253;
pub const MAX_LABEL_LEN: usize = 63;

/// Room for `[` + the longest RFC 5952 text form (45 bytes) + `]`.
const IPV6_TEXT_BUF: usize = 48;

/// Why a host (or `host:port`) is not acceptable. Messages never quote the
/// input: it may be an IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("invalid character {0:?}")]
    InvalidChar(char),
    #[error("empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("a label is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
    #[error("longer than {MAX_HOST_LEN} bytes")]
    TooLong,
    #[error("not a valid internationalised domain name")]
    Idna,
    /// The last label is a number, so the host can only be an IPv4 address,
    /// and it is not one in dotted-decimal form (`127.1`, `0x7f.0.0.1` and
    /// `01.2.3.4` are refused rather than guessed at).
    #[error("ends in a number but is not a dotted-decimal IPv4 address")]
    InvalidIpv4,
    #[error("not a valid bracketed IPv6 address")]
    InvalidIpv6,
    #[error("invalid port (expected 1 to 65535)")]
    InvalidPort,
}

/// What a normalised host names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    Domain,
    Ipv4,
    Ipv6,
}

/// A normalised host (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host<'a> {
    /// Borrowed when the input was already normalised (at most a trailing
    /// dot dropped): the common case costs no allocation.
    pub text: Cow<'a, str>,
    pub kind: HostKind,
    /// `localhost`, `*.localhost`, `127.0.0.0/8` or `[::1]`.
    pub loopback: bool,
}

impl Host<'_> {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The address, for an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        let text = self.text.trim_start_matches('[').trim_end_matches(']');
        match self.kind {
            HostKind::Domain => None,
            HostKind::Ipv4 | HostKind::Ipv6 => text.parse().ok(),
        }
    }

    pub fn into_owned(self) -> Host<'static> {
        Host {
            text: Cow::Owned(self.text.into_owned()),
            kind: self.kind,
            loopback: self.loopback,
        }
    }
}

/// Non-ASCII input: converted to punycode (configuration, where a person
/// may write `bücher.example`), or refused (the wire, where browsers
/// always send punycode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unicode {
    ToPunycode,
    Refuse,
}

/// Bytes of an already normalised host name.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
}

/// Normalises a host without a port: a name, a dotted IPv4 address, or a
/// bracketed IPv6 address.
pub fn normalize(input: &str, unicode: Unicode) -> Result<Host<'_>, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.starts_with('[') {
        return normalize_ipv6(input);
    }
    let text: Cow<'_, str> = if input.bytes().all(is_host_byte) {
        // The fast path: what browsers send. No IDN work, no allocation.
        Cow::Borrowed(input)
    } else {
        // Refuse stray ASCII before UTS #46 so the error names the character.
        if let Some(c) = input
            .chars()
            .find(|c| c.is_ascii() && !is_host_byte(c.to_ascii_lowercase() as u8))
        {
            return Err(HostError::InvalidChar(c));
        }
        if input.is_ascii() {
            Cow::Owned(input.to_ascii_lowercase())
        } else if unicode == Unicode::ToPunycode {
            Cow::Owned(idna_to_ascii(input)?)
        } else {
            let c = input.chars().find(|c| !c.is_ascii()).unwrap_or('?');
            return Err(HostError::InvalidChar(c));
        }
    };
    let text = match text {
        Cow::Borrowed(s) => Cow::Borrowed(s.strip_suffix('.').unwrap_or(s)),
        Cow::Owned(mut s) => {
            if s.ends_with('.') {
                s.pop();
            }
            Cow::Owned(s)
        }
    };
    check_ascii_host(&text)?;

    let last_label = text.rsplit('.').next().unwrap_or_default();
    if is_numeric_label(last_label) {
        let ip: Ipv4Addr = text.parse().map_err(|_| HostError::InvalidIpv4)?;
        return Ok(Host {
            text,
            kind: HostKind::Ipv4,
            loopback: ip.is_loopback(),
        });
    }
    let loopback = is_localhost_name(&text);
    Ok(Host {
        text,
        kind: HostKind::Domain,
        loopback,
    })
}

/// `input` is `[...]`, brackets included. Normalises to RFC 5952 text in
/// brackets, which is what browsers serialise.
fn normalize_ipv6(input: &str) -> Result<Host<'_>, HostError> {
    let inner = input
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(HostError::InvalidIpv6)?;
    let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::InvalidIpv6)?;
    let loopback = addr.to_canonical().is_loopback();

    let mut buf = [0u8; IPV6_TEXT_BUF];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "[{addr}]").map_err(|_| HostError::InvalidIpv6)?;
    let len = usize::try_from(cursor.position()).map_err(|_| HostError::InvalidIpv6)?;
    let canonical = buf.get(..len).ok_or(HostError::InvalidIpv6)?;
    let text = if canonical == input.as_bytes() {
        Cow::Borrowed(input)
    } else {
        let canonical = std::str::from_utf8(canonical).map_err(|_| HostError::InvalidIpv6)?;
        Cow::Owned(canonical.to_owned())
    };
    Ok(Host {
        text,
        kind: HostKind::Ipv6,
        loopback,
    })
}

/// UTS #46 ToASCII with the WHATWG URL settings (no hyphen checks, URL deny
/// list); lengths are checked afterwards by [`check_ascii_host`].
pub fn idna_to_ascii(input: &str) -> Result<String, HostError> {
    idna::uts46::Uts46::new()
        .to_ascii(
            input.as_bytes(),
            idna::AsciiDenyList::URL,
            idna::uts46::Hyphens::Allow,
            idna::uts46::DnsLength::Ignore,
        )
        .map(Cow::into_owned)
        .map_err(|_| HostError::Idna)
}

/// Final shape check of a normalised host (no trailing dot).
fn check_ascii_host(host: &str) -> Result<(), HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some(c) = host
        .chars()
        .find(|&c| !c.is_ascii() || !is_host_byte(c as u8))
    {
        return Err(HostError::InvalidChar(c));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong);
        }
    }
    Ok(())
}

/// WHATWG URL "ends in a number": such a host is parsed as IPv4 or refused.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
}

fn is_localhost_name(host: &str) -> bool {
    const SUFFIX: &[u8] = b".localhost";
    let bytes = host.as_bytes();
    host.eq_ignore_ascii_case("localhost")
        || (bytes.len() > SUFFIX.len()
            && bytes[bytes.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// Whether `host` is a loopback host: `localhost`, any `*.localhost`
/// (RFC 6761 reserves the whole tree for loopback), an address in
/// `127.0.0.0/8`, or `::1` (bracketed or not; IPv4-mapped loopback counts
/// too). Meant for normalised hosts, but tolerant of case and one trailing
/// dot.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let ip_text = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match ip_text.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => is_localhost_name(host),
    }
}

/// Splits `host[:port]` or `[v6][:port]` at the port's colon; the port
/// text is returned unchecked (callers differ: an origin drops its
/// scheme's default port, a `Forwarded` hop may have an obfuscated one).
/// A bracketed host must be followed by nothing or by `:`.
pub fn split_port(authority: &str) -> Result<(&str, Option<&str>), HostError> {
    if authority.starts_with('[') {
        let close = authority.find(']').ok_or(HostError::InvalidIpv6)?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(HostError::InvalidIpv6),
            },
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// A port: 1 to 5 digits, 1 to 65535 (leading zeros allowed, as URLs do).
pub fn parse_port(text: &str) -> Result<u16, HostError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::InvalidPort);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::InvalidPort),
        Ok(port) => Ok(port),
    }
}

/// A request's `Host` header (or HTTP/2 `:authority`): a host and an
/// optional port, ASCII only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    pub host: Host<'a>,
    pub port: Option<u16>,
}

/// Parses a `Host` value. `user@` and anything but `host[:port]` is refused.
pub fn parse_authority(raw: &[u8]) -> Result<Authority<'_>, HostError> {
    let text = std::str::from_utf8(raw).map_err(|_| HostError::InvalidChar('\u{fffd}'))?;
    let (host, port) = split_port(text)?;
    let port = port.map(parse_port).transpose()?;
    let host = normalize(host, Unicode::Refuse)?;
    Ok(Authority { host, port })
}

/// `host:port` as configuration writes an address to connect to: a name,
/// an IPv4 address, or a bracketed IPv6 address, and a port that is
/// required.
pub fn parse_host_port(text: &str) -> Result<(Host<'_>, u16), HostError> {
    let (host, port) = split_port(text)?;
    let port = parse_port(port.ok_or(HostError::InvalidPort)?)?;
    Ok((normalize(host, Unicode::Refuse)?, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, HostKind, bool)] = &[
            ("example.com", "example.com", HostKind::Domain, false),
            ("Example.COM.", "example.com", HostKind::Domain, false),
            ("my_host.example", "my_host.example", HostKind::Domain, false),
            ("localhost", "localhost", HostKind::Domain, true),
            ("app.localhost", "app.localhost", HostKind::Domain, true),
            ("127.0.0.9", "127.0.0.9", HostKind::Ipv4, true),
            ("10.0.0.1", "10.0.0.1", HostKind::Ipv4, false),
            ("[::1]", "[::1]", HostKind::Ipv6, true),
            ("[0:0::1]", "[::1]", HostKind::Ipv6, true),
            ("[::FFFF:7f00:1]", "[::ffff:127.0.0.1]", HostKind::Ipv6, true),
        ];
        for &(input, text, kind, loopback) in cases {
            let h = normalize(input, Unicode::Refuse).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (h.as_str(), h.kind, h.loopback),
                (text, kind, loopback),
                "{input}"
            );
        }
        assert_eq!(
            normalize("bücher.example", Unicode::ToPunycode)
                .unwrap()
                .as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize("bücher.example", Unicode::Refuse),
            Err(HostError::InvalidChar('ü'))
        );
    }

    #[test]
    fn bad_hosts_say_why() {
        #[rustfmt::skip]
        let cases: &[(&str, HostError)] = &[
            ("", HostError::Empty),
            (".", HostError::Empty),
            (".wild.test", HostError::EmptyLabel),
            ("a..b", HostError::EmptyLabel),
            ("a*b.com", HostError::InvalidChar('*')),
            ("a b", HostError::InvalidChar(' ')),
            ("1.2.3.999", HostError::InvalidIpv4),
            ("127.1", HostError::InvalidIpv4),
            ("1.2.3.0x4", HostError::InvalidIpv4),
            ("[::1", HostError::InvalidIpv6),
            ("[fe80::1%25eth0]", HostError::InvalidIpv6),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize(input, Unicode::Refuse).err(),
                Some(*expected),
                "{input:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(
            normalize(&long_label, Unicode::Refuse).err(),
            Some(HostError::LabelTooLong)
        );
        let long = "abcdefghi.".repeat(26);
        assert_eq!(
            normalize(&long, Unicode::Refuse).err(),
            Some(HostError::TooLong)
        );
    }

    #[test]
    fn fast_path_borrows() {
        assert!(matches!(
            normalize("www.example.com", Unicode::Refuse).unwrap().text,
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalize("www.example.com.", Unicode::Refuse).unwrap().text,
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalize("Www.example.com", Unicode::Refuse).unwrap().text,
            Cow::Owned(_)
        ));
        assert!(matches!(
            normalize("[::1]", Unicode::Refuse).unwrap().text,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn authorities() {
        let a = parse_authority(b"Shop.Example.com:8443").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("shop.example.com", Some(8443)));
        let a = parse_authority(b"[::1]:8080").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("[::1]", Some(8080)));
        let a = parse_authority(b"example.com.").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("example.com", None));
        for bad in [
            &b""[..],
            b"evil.com/x",
            b"a b",
            b"a\r\nb",
            b"[::1",
            b"[zz]:80",
            b"host:",
            b"host:99999x",
            b"host:0",
            b"host:65536",
            b"@evil",
            b"u@host",
            b".wild.test",
            b"\xff",
            "bücher.example".as_bytes(),
        ] {
            assert!(
                parse_authority(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn host_ports() {
        let (h, p) = parse_host_port("App.Internal:8080").unwrap();
        assert_eq!(
            (h.as_str(), h.kind, p),
            ("app.internal", HostKind::Domain, 8080)
        );
        let (h, p) = parse_host_port("[2001:db8::1]:443").unwrap();
        assert_eq!((h.ip(), p), (Some("2001:db8::1".parse().unwrap()), 443));
        let (h, _) = parse_host_port("10.0.0.5:80").unwrap();
        assert_eq!(h.ip(), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(parse_host_port("app").err(), Some(HostError::InvalidPort));
        assert_eq!(parse_host_port("app:0").err(), Some(HostError::InvalidPort));
        assert_eq!(
            parse_host_port("2001:db8::1:80").err(),
            Some(HostError::InvalidPort)
        );
    }

    #[test]
    fn ports_and_splits() {
        assert_eq!(split_port("a.com:80"), Ok(("a.com", Some("80"))));
        assert_eq!(split_port("[::1]"), Ok(("[::1]", None)));
        assert_eq!(split_port("[::1]:_x"), Ok(("[::1]", Some("_x"))));
        assert_eq!(split_port("[::1]x"), Err(HostError::InvalidIpv6));
        assert_eq!(parse_port("08443"), Ok(8443));
        for bad in ["", "0", "65536", "123456", "1a", "-1"] {
            assert_eq!(parse_port(bad), Err(HostError::InvalidPort), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("localhost", true), ("LOCALHOST.", true), ("app.localhost", true),
            ("127.0.0.1", true), ("127.255.0.9", true), ("[::1]", true), ("::1", true),
            ("[::ffff:127.0.0.1]", true),
            ("localhost.example.com", false), ("notlocalhost", false), ("128.0.0.1", false),
            ("[::2]", false), ("0.0.0.0", false), ("bücher.localhost", true), ("ü", false),
        ];
        for &(host, expected) in cases {
            assert_eq!(is_loopback_host(host), expected, "{host}");
        }
    }
}
