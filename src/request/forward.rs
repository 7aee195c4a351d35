//! The upstream request's headers: what visitord sets (`X-Visitor-*`,
//! `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`),
//! which of the client's it strips, and which it forwards. The proxy layer
//! applies [`strips`] and [`set_headers`] and names no header itself.

use http::{HeaderName, HeaderValue};

use crate::request::site::SiteRequest;
use crate::visitor::{VISITOR_HEADERS, VISITOR_HEADER_PREFIX};

/// Headers visitord sets for the upstream itself, besides `X-Visitor-*`:
/// a client's copy, or a look-alike (`X_Forwarded_For`), is dropped.
const SET_FOR_UPSTREAM: [&str; 4] = [FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST, REAL_IP];

const FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED_PROTO: &str = "x-forwarded-proto";
const FORWARDED_HOST: &str = "x-forwarded-host";
const REAL_IP: &str = "x-real-ip";

static FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(FORWARDED_FOR);
static FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(FORWARDED_PROTO);
static FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static(FORWARDED_HOST);
static REAL_IP_NAME: HeaderName = HeaderName::from_static(REAL_IP);

/// `X-Forwarded-Proto`: visitord serves sites over TLS only (the plain
/// listener redirects).
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Headers that name the client's address or the original request, which
/// applications behind other proxies believe; only a trusted proxy may
/// send them on.
const CLIENT_ADDRESS_HEADERS: [&str; 12] = [
    "forwarded",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-original-url",
    "x-rewrite-url",
];

/// Whether a client's request header (a lower-case name) may reach the
/// upstream. Servers that turn header names into variables (CGI, WSGI,
/// Rack, PHP) read `_` as `-`, so `X_Visitor_Country` would arrive as
/// visitord's `X-Visitor-Country` (the class of Puma's CVE-2024-45614):
/// a name that equals one of visitord's headers with `_` read as `-` is
/// always dropped, and every other name with `_` unless the site passes
/// them (`pass_underscore_headers`, off by default, as in nginx).
pub fn passes_to_upstream(name: &str, peer_trusted: bool, pass_underscore: bool) -> bool {
    if !name.contains('_') {
        return !name.starts_with(VISITOR_HEADER_PREFIX)
            && !SET_FOR_UPSTREAM.contains(&name)
            && (peer_trusted || !CLIENT_ADDRESS_HEADERS.contains(&name));
    }
    let prefix = VISITOR_HEADER_PREFIX;
    let visitor_like = name.len() > prefix.len() && reads_as_prefix(name, prefix);
    let ours = SET_FOR_UPSTREAM
        .iter()
        .chain(&CLIENT_ADDRESS_HEADERS)
        .any(|h| name.len() == h.len() && reads_as_prefix(name, h));
    pass_underscore && !visitor_like && !ours
}

/// Whether `name` starts with `prefix` when `_` is read as `-`.
fn reads_as_prefix(name: &str, prefix: &str) -> bool {
    name.bytes()
        .zip(prefix.bytes())
        .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// Whether a client's header (a lower-case name) must be removed before a
/// site request goes upstream.
pub fn strips(name: &str, r: &SiteRequest) -> bool {
    !passes_to_upstream(name, r.peer_trusted, r.pass_underscore_headers)
}

/// Every header visitord sets on a site request, with its value: the
/// `X-Visitor-*` headers the site takes, then the forwarding headers. The
/// names are built once, from static text, so a copy of one is free.
pub fn set_headers(r: &SiteRequest) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
    let names: &'static [HeaderName] = &*VISITOR_HEADERS;
    let visitor = names
        .iter()
        .zip(&r.visitor)
        .filter_map(|(name, value)| Some((name, value.as_ref()?)));
    let forwarded = [
        Some((&FORWARDED_FOR_NAME, &r.forwarded_for)),
        Some((&REAL_IP_NAME, &r.real_ip)),
        Some((&FORWARDED_PROTO_NAME, &PROTO_HTTPS)),
        // A client's own X-Forwarded-Host went with the stripped headers.
        r.forwarded_host.as_ref().map(|h| (&FORWARDED_HOST_NAME, h)),
    ];
    visitor.chain(forwarded.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_headers_the_upstream_can_trust_pass() {
        let cases: &[(&str, bool, bool, bool)] = &[
            // name, from a trusted peer, pass_underscore_headers, passes
            ("accept", false, false, true),
            ("cookie", false, false, true),
            ("x-visitor-country", true, true, false),
            ("x-visitor-anything", true, true, false),
            ("x_visitor_country", true, true, false),
            ("x-visitor_city", true, true, false),
            ("x_forwarded_for", true, true, false),
            ("x_forwarded_host", true, true, false),
            ("x_forwarded_proto", true, true, false),
            ("x_real_ip", true, true, false),
            ("true_client_ip", true, true, false),
            ("x-real-ip", false, false, false),
            ("x-real-ip", true, false, false),
            ("x-forwarded-for", true, false, false),
            ("x-client-ip", false, false, false),
            ("true-client-ip", false, false, false),
            ("cf-connecting-ip", false, false, false),
            ("x-forwarded-port", false, false, false),
            ("x-original-url", false, false, false),
            ("x-rewrite-url", false, false, false),
            ("forwarded", false, false, false),
            ("cf-connecting-ip", true, false, true),
            ("forwarded", true, false, true),
            ("x-original-url", true, false, true),
            ("my_header", false, false, false),
            ("my_header", false, true, true),
            ("x-visitorcountry", false, false, true),
        ];
        for &(name, trusted, underscore, passes) in cases {
            assert_eq!(
                passes_to_upstream(name, trusted, underscore),
                passes,
                "{name} trusted={trusted} underscore={underscore}"
            );
        }
        // The client-address headers docs/sites.md lists: only from a
        // trusted peer.
        for name in [
            "Forwarded",
            "X-Client-IP",
            "True-Client-IP",
            "CF-Connecting-IP",
            "Fastly-Client-IP",
            "X-Cluster-Client-IP",
            "X-Original-Forwarded-For",
            "X-Forwarded-Port",
            "X-Forwarded-Server",
            "X-Forwarded-Scheme",
            "X-Original-URL",
            "X-Rewrite-URL",
        ] {
            let name = name.to_ascii_lowercase();
            assert!(!passes_to_upstream(&name, false, false), "{name} untrusted");
            assert!(passes_to_upstream(&name, true, false), "{name} trusted");
        }
    }
}
