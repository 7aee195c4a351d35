//! The caller's origin and the per-project origin policy (docs/design.md §3, "Origin
//! policy and CORS").
//!
//! Hosts are normalised once, at parse time, into the form a browser puts on
//! the wire: ASCII lowercase, IDNs in their punycode (`xn--`) form, no
//! trailing dot, IPv6 literals in brackets in RFC 5952 form. Config patterns
//! go through the same normalisation, so matching on the request path is a
//! byte comparison with no allocation and no case folding.
//!
//! Decisions recorded here (the brief left them open):
//! - Unicode hosts are accepted in patterns and converted with UTS #46 (the
//!   `idna` crate, as WHATWG URL does). In `Origin`, and in the origin part
//!   of `Referer`, they are refused: browsers always send punycode, header
//!   values are ASCII (RFC 9110 §5.5), and [`Origin::as_str`] is echoed in
//!   `Access-Control-Allow-Origin`, which must be visible ASCII. So an
//!   accepted origin's text is always a valid header value.
//! - `localhost` in a project's domains admits every loopback origin:
//!   `localhost`, `*.localhost`, `127.0.0.0/8` and `[::1]`, over http or
//!   https, on any port. A dev server is opened through any of these names
//!   (tools print both `localhost` and `127.0.0.1`), and only software
//!   already running on the visitor's machine can present such an origin.
//!   Listing a literal loopback address (`127.0.0.1`, `[::1]`) admits that
//!   address alone, also over http and on any port.
//! - Non-loopback origins must be https; their port is ignored for matching
//!   (a project lists hosts, and a site on `:8443` belongs to whoever owns the
//!   host). The listing is checked before the scheme, so `insecure_scheme`
//!   in metrics always means "a listed site reached us over plain http".
//! - Patterns may be exact IP literals (`127.0.0.1`, `::1`, `[::1]`); a
//!   wildcard can never cover an IP address.

mod allowed;
mod pattern;

use std::borrow::Cow;
use std::fmt;

use thiserror::Error;

use crate::net::host::{self, Host, HostError, HostKind, Unicode};

pub use self::allowed::AllowedOrigins;
pub use self::pattern::{DomainError, DomainPattern};

/// Longest `Origin` header value accepted. A serialised origin is at most
/// scheme + 253-byte host + port, so anything near this is not a browser.
pub const MAX_ORIGIN_LEN: usize = 2048;

/// Longest `Referer` header value accepted. Chrome and Firefox cut the
/// referrer down to its origin above 4096 bytes, so a longer one is not from
/// a browser.
pub const MAX_REFERER_LEN: usize = 4096;

/// Why an `Origin` or `Referer` value could not be read as an origin.
///
/// Messages never quote the value: an origin may carry an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OriginError {
    /// The opaque origin (sandboxed frames, `file:` pages, cross-origin
    /// redirects): there is no host to check.
    #[error("the origin is the opaque origin \"null\"")]
    Null,
    #[error("empty value")]
    Empty,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// Control characters, whitespace and DEL are never part of a
    /// serialised origin or URL.
    #[error("invalid character {0:?}")]
    InvalidChar(char),
    /// Browsers send internationalised hosts as punycode; a raw UTF-8 host
    /// could not be echoed in `Access-Control-Allow-Origin`.
    #[error("non-ASCII text in the origin (hosts must be sent as punycode, xn--)")]
    NonAscii,
    #[error("no scheme (expected http:// or https://)")]
    MissingScheme,
    #[error("the scheme is not http or https")]
    UnsupportedScheme,
    #[error("expected \"//\" after the scheme")]
    MissingSlashes,
    /// Browsers never put `user:password@` in an origin or a referrer; echoing
    /// one back in `Access-Control-Allow-Origin` would leak it.
    #[error("user information (\"user@\") is not allowed")]
    UserInfo,
    #[error("an origin has no path, query or fragment")]
    TrailingData,
    #[error("invalid port (expected 1 to 65535)")]
    InvalidPort,
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
}

/// The two schemes an allowed origin can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The lowercase scheme name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where the normalised host lives: in the common case it is already a
/// slice of the raw value and costs no second allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostText {
    InRaw { start: usize, end: usize },
    Owned(Box<str>),
}

/// A parsed browser origin: `http` or `https`, a normalised host, an
/// optional non-default port, and the exact text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    raw: Box<str>,
    scheme: Scheme,
    host: HostText,
    kind: HostKind,
    port: Option<u16>,
    loopback: bool,
}

impl Origin {
    /// The origin exactly as received: the whole `Origin` header, or the
    /// `scheme://host[:port]` prefix of a `Referer`.
    /// `Access-Control-Allow-Origin` must echo this, not a normalised form,
    /// because the browser compares it byte for byte with what it sent.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The normalised host: lowercase ASCII, punycode, no trailing dot;
    /// IPv6 literals in brackets.
    pub fn host(&self) -> &str {
        match &self.host {
            // Ranges are taken from `raw` at parse time, on ASCII bytes, so
            // `get` cannot miss; an empty host would only ever be refused.
            HostText::InRaw { start, end } => self.raw.get(*start..*end).unwrap_or_default(),
            HostText::Owned(host) => host,
        }
    }

    /// The explicit port, or `None` when absent or the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether the host is `localhost`, `*.localhost`, `127.0.0.0/8` or
    /// `[::1]` (see [`host::is_loopback_host`]).
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// Whether the host is an IP literal rather than a domain name.
    pub fn is_ip(&self) -> bool {
        self.kind != HostKind::Domain
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Parses an `Origin` header value: `scheme://host[:port]` and nothing else.
/// `as_str()` returns the value unchanged; it is always visible ASCII.
pub fn parse_origin(value: &str) -> Result<Origin, OriginError> {
    if value.eq_ignore_ascii_case("null") {
        return Err(OriginError::Null);
    }
    let parts = parse_parts(value, MAX_ORIGIN_LEN)?;
    if parts.end != value.len() {
        return Err(OriginError::TrailingData);
    }
    Ok(parts.into_origin(value))
}

/// The origin of a full URL as sent in `Referer` (path, query and fragment
/// allowed and ignored). `as_str()` is the `scheme://host[:port]` prefix as
/// it appeared.
pub fn origin_of_referer(value: &str) -> Result<Origin, OriginError> {
    let parts = parse_parts(value, MAX_REFERER_LEN)?;
    let end = parts.end;
    Ok(parts.into_origin(&value[..end]))
}

struct Parts<'a> {
    scheme: Scheme,
    host: Host<'a>,
    host_start: usize,
    port: Option<u16>,
    /// Byte offset where the authority ends (path, query, fragment or end).
    end: usize,
}

impl Parts<'_> {
    /// `raw` is the prefix of the parsed value that the origin keeps; it
    /// always contains the host, so `host_start` stays valid in it.
    fn into_origin(self, raw: &str) -> Origin {
        let host = match self.host.text {
            Cow::Borrowed(text) => HostText::InRaw {
                start: self.host_start,
                end: self.host_start + text.len(),
            },
            Cow::Owned(text) => HostText::Owned(text.into_boxed_str()),
        };
        Origin {
            raw: raw.into(),
            scheme: self.scheme,
            host,
            kind: self.host.kind,
            port: self.port,
            loopback: self.host.loopback,
        }
    }
}

fn parse_parts(value: &str, max_len: usize) -> Result<Parts<'_>, OriginError> {
    if value.is_empty() {
        return Err(OriginError::Empty);
    }
    if value.len() > max_len {
        return Err(OriginError::TooLong(max_len));
    }
    if let Some(b) = value.bytes().find(|&b| b <= b' ' || b == 0x7f) {
        return Err(OriginError::InvalidChar(char::from(b)));
    }

    let colon = value.find(':').ok_or(OriginError::MissingScheme)?;
    let scheme_text = &value[..colon];
    if !is_scheme(scheme_text) {
        return Err(OriginError::MissingScheme);
    }
    let scheme = if scheme_text.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme_text.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        return Err(OriginError::UnsupportedScheme);
    };
    let authority_start = colon + 1 + "//".len();
    if !value[colon + 1..].starts_with("//") {
        return Err(OriginError::MissingSlashes);
    }

    let rest = &value[authority_start..];
    let authority_len = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // The scheme is ASCII already, so this keeps the echoed text ASCII.
    if !authority.is_ascii() {
        return Err(OriginError::NonAscii);
    }
    if authority.contains('@') {
        return Err(OriginError::UserInfo);
    }

    let (host_text, port_text) = host::split_port(authority)?;
    // Non-ASCII was refused above; punycode conversion never runs here.
    let host = host::normalize(host_text, Unicode::Refuse)?;
    let port = match port_text {
        None => None,
        Some(text) => parse_port(text, scheme)?,
    };
    Ok(Parts {
        scheme,
        host,
        host_start: authority_start,
        port,
        end: authority_start + authority_len,
    })
}

/// RFC 3986 `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A default port counts as no port, as in the origin serialisation.
fn parse_port(text: &str, scheme: Scheme) -> Result<Option<u16>, OriginError> {
    let port = host::parse_port(text).map_err(|_| OriginError::InvalidPort)?;
    Ok((port != scheme.default_port()).then_some(port))
}

/// The outcome of the origin policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

label_enum! {
    /// Why a request was refused with 403. Every variant gets the same
    /// answer body and status; the reason is for metrics and debugging only.
    pub enum DenyReason {
        /// Neither `Origin` nor `Referer` was sent.
        NoOrigin => "no_origin",
        /// `Origin: null`: a sandboxed frame, a `file:` page or a
        /// cross-origin redirect. Its own label because it is a common,
        /// fixable surprise for site owners and unlike `malformed` is not an
        /// attack signal.
        NullOrigin => "null_origin",
        /// The header was there but is not an http(s) origin.
        Malformed => "malformed",
        /// A listed non-loopback host over plain http.
        InsecureScheme => "insecure_scheme",
        /// The host is not in the project's domains.
        NotListed => "not_listed",
        /// The `pid` names no project. Decided by the caller; it answers the
        /// same 403 as `NotListed` so projects cannot be enumerated.
        UnknownProject => "unknown_project",
    }
}

/// Applies a project's domain list to a caller origin (rules in the module
/// docs): the host must be listed, and the scheme must be https unless the
/// host is loopback.
pub fn decide(domains: &[DomainPattern], origin: &Origin) -> Decision {
    let host = origin.host();
    let listed = domains.iter().any(|pattern| pattern.matches_host(host));
    if origin.is_loopback() {
        if listed || domains.iter().any(DomainPattern::is_localhost) {
            Decision::Allow
        } else {
            Decision::Deny(DenyReason::NotListed)
        }
    } else if !listed {
        Decision::Deny(DenyReason::NotListed)
    } else if origin.scheme() != Scheme::Https {
        Decision::Deny(DenyReason::InsecureScheme)
    } else {
        Decision::Allow
    }
}

/// The caller's origin from raw header values: `Origin` if present, else the
/// origin of `Referer`, else [`DenyReason::NoOrigin`]. Pass the first value
/// of each header. Surrounding whitespace is dropped (RFC 9110 §5.5);
/// bytes that are not UTF-8 or do not parse give `Malformed`, and
/// `Origin: null` gives `NullOrigin`.
///
/// A present `Origin` is final, even when unusable: the browser sets it and
/// nothing in the page can change it, whereas `Referer` is subject to
/// referrer policy and, for an opaque (`null`) origin, would name a document
/// the browser deliberately withheld. Falling back would let the weaker
/// header overrule the stronger one.
pub fn caller_origin(
    origin_header: Option<&[u8]>,
    referer_header: Option<&[u8]>,
) -> Result<Origin, DenyReason> {
    if let Some(value) = origin_header {
        let value = std::str::from_utf8(value.trim_ascii()).map_err(|_| DenyReason::Malformed)?;
        return parse_origin(value).map_err(|e| match e {
            OriginError::Null => DenyReason::NullOrigin,
            _ => DenyReason::Malformed,
        });
    }
    let value = referer_header.ok_or(DenyReason::NoOrigin)?;
    let value = std::str::from_utf8(value.trim_ascii()).map_err(|_| DenyReason::Malformed)?;
    origin_of_referer(value).map_err(|_| DenyReason::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    /// [`caller_origin`] then [`decide`], as the API does.
    fn allowed_origin(
        domains: &[DomainPattern],
        origin_header: Option<&[u8]>,
        referer_header: Option<&[u8]>,
    ) -> Result<Origin, DenyReason> {
        let origin = caller_origin(origin_header, referer_header)?;
        match decide(domains, &origin) {
            Decision::Allow => Ok(origin),
            Decision::Deny(reason) => Err(reason),
        }
    }

    fn patterns(list: &[&str]) -> Vec<DomainPattern> {
        list.iter()
            .map(|s| DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect()
    }

    const ALLOW: Result<(), DenyReason> = Ok(());
    const NOT_LISTED: Result<(), DenyReason> = Err(DenyReason::NotListed);
    const MALFORMED: Result<(), DenyReason> = Err(DenyReason::Malformed);
    const INSECURE: Result<(), DenyReason> = Err(DenyReason::InsecureScheme);

    /// (name, project domains, Origin, Referer, expected outcome)
    type PolicyCase<'a> = (
        &'a str,
        &'a [&'a str],
        Option<&'a str>,
        Option<&'a str>,
        Result<(), DenyReason>,
    );

    /// The whole request path: headers in, allow or the deny reason out.
    #[test]
    fn policy_table() {
        let site = ["example.com", "*.example.com"];
        let sub_only = ["*.example.com"];
        let dev = ["localhost", "example.com"];
        let long_label = format!("https://{}.example.com", "a".repeat(64));
        let long_value = format!("https://example.com{}", "a".repeat(MAX_ORIGIN_LEN));
        let long_host = format!("https://{}example.com", "abcdefghi.".repeat(25));
        #[rustfmt::skip]
        let cases: Vec<PolicyCase> = vec![
            // exact, wildcard, apex, depth
            ("exact apex", &site, Some("https://example.com"), None, ALLOW),
            ("exact only, not sub", &["example.com"], Some("https://www.example.com"), None, NOT_LISTED),
            ("wildcard one level", &sub_only, Some("https://www.example.com"), None, ALLOW),
            ("wildcard deep", &sub_only, Some("https://a.b.c.example.com"), None, ALLOW),
            ("wildcard not apex", &sub_only, Some("https://example.com"), None, NOT_LISTED),
            ("other domain", &site, Some("https://example.org"), None, NOT_LISTED),
            // suffix tricks
            ("suffix without dot", &site, Some("https://evilexample.com"), None, NOT_LISTED),
            ("suffix without dot, wildcard", &sub_only, Some("https://www.evilexample.com"), None, NOT_LISTED),
            ("listed domain as prefix", &site, Some("https://example.com.evil.net"), None, NOT_LISTED),
            ("wildcard domain as prefix", &sub_only, Some("https://www.example.com.evil.net"), None, NOT_LISTED),
            ("leading dot origin", &site, Some("https://.example.com"), None, MALFORMED),
            // ports
            ("https non-default port", &site, Some("https://example.com:8443"), None, ALLOW),
            ("https default port spelled", &site, Some("https://example.com:443"), None, ALLOW),
            ("port 0", &site, Some("https://example.com:0"), None, MALFORMED),
            ("port 65536", &site, Some("https://example.com:65536"), None, MALFORMED),
            ("empty port", &site, Some("https://example.com:"), None, MALFORMED),
            ("port not digits", &site, Some("https://example.com:8o"), None, MALFORMED),
            // case and trailing dots
            ("uppercase origin", &site, Some("HTTPS://WWW.EXAMPLE.COM"), None, ALLOW),
            ("uppercase pattern", &["EXAMPLE.COM"], Some("https://example.com"), None, ALLOW),
            ("trailing dot origin", &site, Some("https://example.com."), None, ALLOW),
            ("trailing dot pattern", &["example.com."], Some("https://example.com"), None, ALLOW),
            ("two trailing dots", &site, Some("https://example.com.."), None, MALFORMED),
            // IDN both ways
            ("unicode origin refused", &["xn--bcher-kva.example"], Some("https://bücher.example"), None, MALFORMED),
            ("unicode referer refused", &["xn--bcher-kva.example"], None, Some("https://bücher.example/"), MALFORMED),
            ("unicode in referer path is fine", &["xn--bcher-kva.example"], None, Some("https://xn--bcher-kva.example/bücher"), ALLOW),
            ("punycode origin, unicode pattern", &["bücher.example"], Some("https://xn--bcher-kva.example"), None, ALLOW),
            ("unicode wildcard", &["*.bücher.example"], Some("https://shop.xn--bcher-kva.example"), None, ALLOW),
            ("unicode lookalike not listed", &["bucher.example"], Some("https://xn--bcher-kva.example"), None, NOT_LISTED),
            // null and malformed
            ("null origin", &site, Some("null"), None, Err(DenyReason::NullOrigin)),
            ("null does not fall back to referer", &site, Some("null"), Some("https://example.com/"), Err(DenyReason::NullOrigin)),
            ("malformed origin does not fall back", &site, Some("example.com"), Some("https://example.com/"), MALFORMED),
            ("missing scheme", &site, Some("example.com"), None, MALFORMED),
            ("scheme only", &site, Some("https://"), None, MALFORMED),
            ("empty host with path", &site, Some("https:///x"), None, MALFORMED),
            ("single slash", &site, Some("https:/example.com"), None, MALFORMED),
            ("userinfo", &site, Some("https://a@example.com"), None, MALFORMED),
            ("userinfo hiding host", &site, Some("https://example.com@evil.net"), None, MALFORMED),
            ("path in origin", &site, Some("https://example.com/"), None, MALFORMED),
            ("query in origin", &site, Some("https://example.com?x"), None, MALFORMED),
            ("space inside", &site, Some("https://exa mple.com"), None, MALFORMED),
            ("NUL", &site, Some("https://example.com\0"), None, MALFORMED),
            ("tab inside", &site, Some("https://example.com\t.evil"), None, MALFORMED),
            ("too long", &site, Some(long_value.as_str()), None, MALFORMED),
            ("label over 63", &sub_only, Some(long_label.as_str()), None, MALFORMED),
            ("host over 253", &sub_only, Some(long_host.as_str()), None, MALFORMED),
            ("backslash", &site, Some("https://example.com\\@evil.net"), None, MALFORMED),
            ("percent in host", &site, Some("https://ex%61mple.com"), None, MALFORMED),
            ("empty origin header", &site, Some(""), Some("https://example.com/"), MALFORMED),
            ("surrounding whitespace trimmed", &site, Some(" https://example.com "), None, ALLOW),
            // schemes
            ("http refused for listed host", &site, Some("http://example.com"), None, INSECURE),
            ("http unlisted host is not_listed", &site, Some("http://evil.net"), None, NOT_LISTED),
            ("javascript scheme", &site, Some("javascript:alert(1)"), None, MALFORMED),
            ("file scheme", &site, Some("file:///etc/passwd"), None, MALFORMED),
            ("data scheme", &site, Some("data:text/html,hi"), None, MALFORMED),
            ("ftp scheme", &site, Some("ftp://example.com"), None, MALFORMED),
            // loopback
            ("localhost http any port", &dev, Some("http://localhost:5173"), None, ALLOW),
            ("localhost https", &dev, Some("https://localhost"), None, ALLOW),
            ("sub.localhost via localhost", &dev, Some("http://app.localhost:3000"), None, ALLOW),
            ("127.0.0.1 via localhost", &dev, Some("http://127.0.0.1:8080"), None, ALLOW),
            ("127.1.2.3 via localhost", &dev, Some("http://127.1.2.3"), None, ALLOW),
            ("[::1] via localhost", &dev, Some("http://[::1]:3000"), None, ALLOW),
            ("localhost not listed", &site, Some("http://localhost:3000"), None, NOT_LISTED),
            ("127.0.0.1 not listed", &site, Some("http://127.0.0.1"), None, NOT_LISTED),
            ("literal ip listed", &["127.0.0.1"], Some("http://127.0.0.1:9000"), None, ALLOW),
            ("other loopback ip not covered by literal", &["127.0.0.1"], Some("http://127.0.0.2"), None, NOT_LISTED),
            ("literal ::1 listed", &["::1"], Some("http://[::1]:9000"), None, ALLOW),
            ("localhost.example.com is not loopback", &["localhost", "*.example.com"], Some("http://localhost.example.com"), None, INSECURE),
            ("public ip origin needs https", &["203.0.113.7"], Some("http://203.0.113.7"), None, INSECURE),
            ("public ip origin https", &["203.0.113.7"], Some("https://203.0.113.7"), None, ALLOW),
            ("non-canonical ipv4 refused", &dev, Some("http://127.1"), None, MALFORMED),
            // Referer
            ("referer with path query fragment", &site, None, Some("https://www.example.com/a/b?c=d#e"), ALLOW),
            ("referer of other site", &site, None, Some("https://evil.net/?https://example.com"), NOT_LISTED),
            ("referer http refused", &site, None, Some("http://example.com/page"), INSECURE),
            ("referer with userinfo", &site, None, Some("https://u:p@example.com/"), MALFORMED),
            ("referer garbage", &site, None, Some("not a url"), MALFORMED),
            ("both absent", &site, None, None, Err(DenyReason::NoOrigin)),
            ("origin wins over referer", &site, Some("https://evil.net"), Some("https://example.com/"), NOT_LISTED),
        ];
        assert!(cases.len() >= 40);
        for (name, domains, origin, referer, expected) in cases {
            let domains = patterns(domains);
            let got = allowed_origin(
                &domains,
                origin.map(str::as_bytes),
                referer.map(str::as_bytes),
            )
            .map(|_| ());
            assert_eq!(
                got, expected,
                "{name}: origin={origin:?} referer={referer:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let domains = patterns(&["example.com"]);
        let bad: &[u8] = b"https://exa\xffmple.com";
        assert_eq!(caller_origin(Some(bad), None), Err(DenyReason::Malformed));
        assert_eq!(caller_origin(None, Some(bad)), Err(DenyReason::Malformed));
        assert!(allowed_origin(&domains, Some(b"https://example.com"), None).is_ok());
    }

    /// What the caller echoes and what matching sees.
    #[test]
    fn parsed_parts() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, Scheme, &str, Option<u16>)] = &[
            ("https://example.com", "https://example.com", Scheme::Https, "example.com", None),
            ("HTTPS://Example.COM.", "HTTPS://Example.COM.", Scheme::Https, "example.com", None),
            ("http://example.com:80", "http://example.com:80", Scheme::Http, "example.com", None),
            ("http://example.com:443", "http://example.com:443", Scheme::Http, "example.com", Some(443)),
            ("https://example.com:08443", "https://example.com:08443", Scheme::Https, "example.com", Some(8443)),
            ("https://XN--BCHER-KVA.example", "https://XN--BCHER-KVA.example", Scheme::Https, "xn--bcher-kva.example", None),
            ("http://[::1]:3000", "http://[::1]:3000", Scheme::Http, "[::1]", Some(3000)),
            ("http://[0:0::1]", "http://[0:0::1]", Scheme::Http, "[::1]", None),
            ("http://[::FFFF:7f00:1]", "http://[::FFFF:7f00:1]", Scheme::Http, "[::ffff:127.0.0.1]", None),
            ("https://my_host.example.com", "https://my_host.example.com", Scheme::Https, "my_host.example.com", None),
        ];
        for &(input, raw, scheme, host, port) in cases {
            let o = parse_origin(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (o.as_str(), o.scheme(), o.host(), o.port()),
                (raw, scheme, host, port),
                "{input}"
            );
            assert_eq!(o.to_string(), raw);
        }
    }

    #[test]
    fn referer_origin_is_the_prefix_as_sent() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("https://Example.com/path?q=1#frag", "https://Example.com", "example.com"),
            ("https://example.com:8443?q", "https://example.com:8443", "example.com"),
            ("http://localhost:5173#/route", "http://localhost:5173", "localhost"),
            ("https://example.com", "https://example.com", "example.com"),
            ("https://[::1]:8/x", "https://[::1]:8", "[::1]"),
        ];
        for &(input, raw, host) in cases {
            let o = origin_of_referer(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((o.as_str(), o.host()), (raw, host), "{input}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_REFERER_LEN));
        assert_eq!(
            origin_of_referer(&long),
            Err(OriginError::TooLong(MAX_REFERER_LEN))
        );
        // Long enough to be refused as an Origin, still fine as a Referer.
        let medium = format!("https://example.com/{}", "a".repeat(MAX_ORIGIN_LEN));
        assert!(origin_of_referer(&medium).is_ok());
    }

    #[test]
    fn origin_errors_are_specific() {
        #[rustfmt::skip]
        let cases: &[(&str, OriginError)] = &[
            ("null", OriginError::Null),
            ("", OriginError::Empty),
            ("example.com", OriginError::MissingScheme),
            ("://example.com", OriginError::MissingScheme),
            ("javascript:alert(1)", OriginError::UnsupportedScheme),
            ("https:example.com", OriginError::MissingSlashes),
            ("https://", OriginError::Host(HostError::Empty)),
            ("https:///x", OriginError::Host(HostError::Empty)),
            ("https://a@b.com", OriginError::UserInfo),
            ("https://b.com/", OriginError::TrailingData),
            ("https://b.com#", OriginError::TrailingData),
            ("https://exa mple.com", OriginError::InvalidChar(' ')),
            ("https://b.com\0", OriginError::InvalidChar('\0')),
            ("https://b.com\x7f", OriginError::InvalidChar('\x7f')),
            ("https://b.com:99999", OriginError::InvalidPort),
            ("https://b.com:123456", OriginError::InvalidPort),
            ("https://b.com:1:2", OriginError::InvalidPort),
            ("https://a..b.com", OriginError::Host(HostError::EmptyLabel)),
            ("https://a*b.com", OriginError::Host(HostError::InvalidChar('*'))),
            ("https://1.2.3.999", OriginError::Host(HostError::InvalidIpv4)),
            ("https://1.2.3.0x4", OriginError::Host(HostError::InvalidIpv4)),
            ("https://[::1", OriginError::Host(HostError::InvalidIpv6)),
            ("https://[::1]x", OriginError::Host(HostError::InvalidIpv6)),
            ("https://[fe80::1%25eth0]", OriginError::Host(HostError::InvalidIpv6)),
            ("https://xn--a.example\u{ad}x", OriginError::NonAscii),
            ("https://bücher.example", OriginError::NonAscii),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_origin(input).as_ref().err(),
                Some(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn origin_error_messages_never_quote_the_value() {
        for input in [
            "https://203.0.113.7/x",
            "https://203.0.113.7:0",
            "https://u@203.0.113.7",
        ] {
            let message = parse_origin(input).map(|_| ()).unwrap_err().to_string();
            assert!(!message.contains("203.0.113.7"), "{message}");
        }
    }

    #[test]
    fn fast_path_borrows_the_host() {
        let o = parse_origin("https://www.example.com:8443").unwrap();
        assert!(matches!(o.host, HostText::InRaw { .. }));
        assert_eq!(o.host(), "www.example.com");
        let o = parse_origin("https://Www.Example.com").unwrap();
        assert!(matches!(o.host, HostText::Owned(_)));
        let o = parse_origin("http://[::1]").unwrap();
        assert!(matches!(o.host, HostText::InRaw { .. }));
    }

    /// Found by `cargo fuzz run origin`: a Unicode host was accepted, so
    /// `as_str()` was not a valid `Access-Control-Allow-Origin` value.
    #[test]
    fn fuzz_regression_non_ascii_origin() {
        let domains = patterns(&["xn--bcher-kva.example", "localhost"]);
        for value in [
            "https://bücher.example",
            "https://BÜCHER.example:8443",
            "http://ü.localhost",
            "https://xn--bcher-kva.example\u{ad}",
        ] {
            assert_eq!(parse_origin(value), Err(OriginError::NonAscii), "{value}");
            let referer = format!("{value}/path");
            assert_eq!(origin_of_referer(&referer), Err(OriginError::NonAscii));
            let got = allowed_origin(&domains, Some(value.as_bytes()), None);
            assert_eq!(got, Err(DenyReason::Malformed), "{value}");
        }
        // Whatever is accepted can be echoed as a header value.
        for value in [
            "https://xn--bcher-kva.example",
            "https://xn--bcher-kva.example/bücher?q=ü",
        ] {
            let o = origin_of_referer(value).unwrap();
            assert!(http::HeaderValue::from_str(o.as_str()).is_ok(), "{value}");
            assert_eq!(
                allowed_origin(&domains, None, Some(value.as_bytes())),
                Ok(o)
            );
        }
    }

    #[test]
    fn deny_labels_are_distinct_and_bounded() {
        let labels: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_label()).collect();
        assert_eq!(
            labels,
            [
                "no_origin",
                "null_origin",
                "malformed",
                "insecure_scheme",
                "not_listed",
                "unknown_project"
            ]
        );
    }
}
