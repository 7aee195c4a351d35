//! Origin parsing and the origin policy.
//!
//! Input: lines separated by `\n` (a header value can never hold one).
//! Line 0 is the `Origin` header, line 1 the `Referer` header, every line
//! after them a domain pattern of the project. A line that is exactly `-`
//! stands for an absent header. Every line is also parsed on its own as an
//! origin, a referer and a pattern.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visitord::net::host::is_loopback_host;
use visitord::origin::{
    caller_origin, decide, origin_of_referer, parse_origin, Decision, DenyReason, DomainPattern,
    Origin, Scheme,
};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let header = |i: usize| lines.get(i).copied().filter(|l| *l != b"-");
    let patterns: Vec<DomainPattern> = lines
        .iter()
        .skip(2)
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter_map(|s| check_pattern(s))
        .collect();

    for line in &lines {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        if let Ok(o) = parse_origin(text) {
            assert_eq!(o.as_str(), text, "an Origin echoes its input");
            check_origin(&o, &patterns);
        }
        if let Ok(o) = origin_of_referer(text) {
            assert!(
                text.starts_with(o.as_str()),
                "a Referer's origin is its prefix"
            );
            let again = parse_origin(o.as_str())
                .unwrap_or_else(|e| panic!("referer origin {:?} does not parse: {e}", o.as_str()));
            assert_eq!(again, o, "a Referer's origin re-parses as the same Origin");
            check_origin(&o, &patterns);
        }
        let _ = DomainPattern::parse(text);
    }

    // The combined entry point the API uses.
    let (origin_header, referer_header) = (header(0), header(1));
    match caller_origin(origin_header, referer_header) {
        Ok(o) => check_origin(&o, &patterns),
        Err(DenyReason::NoOrigin) => {
            assert!(origin_header.is_none() && referer_header.is_none())
        }
        Err(DenyReason::NullOrigin) => {
            let value = origin_header.map(<[u8]>::trim_ascii);
            assert!(value.is_some_and(|v| v.eq_ignore_ascii_case(b"null")));
        }
        Err(DenyReason::Malformed) => {}
        Err(other) => panic!("caller_origin cannot decide {other:?}"),
    }
});

/// Parses a pattern and checks that its normal form is a fixed point and
/// that it matches what it should, never its own apex.
fn check_pattern(text: &str) -> Option<DomainPattern> {
    let p = DomainPattern::parse(text).ok()?;
    let shown = p.to_string();
    let again = DomainPattern::parse(&shown)
        .unwrap_or_else(|e| panic!("pattern {text:?} shown as {shown:?} does not parse: {e}"));
    assert_eq!(
        again, p,
        "{text:?}: the normal form parses to the same pattern"
    );
    match &p {
        DomainPattern::Exact(host) => {
            assert!(
                p.matches_host(host),
                "{text:?}: an exact pattern matches its host"
            );
            assert_visible_ascii(host);
        }
        DomainPattern::Wildcard(domain) => {
            assert!(
                !p.matches_host(domain),
                "{text:?}: a wildcard matched its apex"
            );
            assert!(
                !p.matches_host(&format!(".{domain}")),
                "{text:?}: empty label"
            );
            assert!(
                p.matches_host(&format!("a.{domain}")),
                "{text:?}: one level below"
            );
            assert!(!domain.starts_with('['), "{text:?}: wildcard over IPv6");
            assert!(
                domain.parse::<std::net::Ipv4Addr>().is_err(),
                "{text:?}: wildcard over IPv4"
            );
            assert_visible_ascii(domain);
        }
    }
    Some(p)
}

fn check_origin(o: &Origin, patterns: &[DomainPattern]) {
    assert_visible_ascii(o.as_str());
    let host = o.host();
    assert!(!host.is_empty());
    assert_visible_ascii(host);
    assert!(!host.ends_with('.'), "{host:?}: trailing dot kept");
    assert_eq!(host, host.to_ascii_lowercase(), "host not lowercased");
    assert_eq!(
        o.is_loopback(),
        is_loopback_host(host),
        "{host:?}: loopback disagrees"
    );
    assert!(o.port() != Some(0));

    // The normalised form is itself an origin, equal in every part.
    let normal = match o.port() {
        Some(port) => format!("{}://{host}:{port}", o.scheme().as_str()),
        None => format!("{}://{host}", o.scheme().as_str()),
    };
    let n = parse_origin(&normal)
        .unwrap_or_else(|e| panic!("normal form {normal:?} of {:?} fails: {e}", o.as_str()));
    assert_eq!(
        (n.scheme(), n.host(), n.port(), n.is_loopback(), n.is_ip()),
        (o.scheme(), host, o.port(), o.is_loopback(), o.is_ip()),
        "{:?} vs its normal form {normal:?}",
        o.as_str()
    );

    // The policy, against the fuzzed project and against single patterns.
    let decision = decide(patterns, o);
    assert_eq!(
        decision,
        decide(patterns, &n),
        "normal form decided differently"
    );
    let listed = patterns.iter().any(|p| p.matches_host(host));
    let localhost = patterns.iter().any(DomainPattern::is_localhost);
    match decision {
        Decision::Allow => {
            assert!(listed || (o.is_loopback() && localhost));
            assert!(o.is_loopback() || o.scheme() == Scheme::Https);
        }
        Decision::Deny(DenyReason::NotListed) => assert!(!listed),
        Decision::Deny(DenyReason::InsecureScheme) => {
            assert!(listed && !o.is_loopback() && o.scheme() == Scheme::Http)
        }
        Decision::Deny(other) => panic!("decide cannot answer {other:?}"),
    }
    assert_eq!(decide(&[], o), Decision::Deny(DenyReason::NotListed));
    for p in patterns {
        if let DomainPattern::Wildcard(_) = p {
            assert!(
                !(o.is_ip() && p.matches_host(host)),
                "a wildcard matched an IP"
            );
        }
    }
    // Its own host, listed exactly, admits it (over https or on loopback).
    if let Ok(own) = DomainPattern::parse(host) {
        let expected = if o.is_loopback() || o.scheme() == Scheme::Https {
            Decision::Allow
        } else {
            Decision::Deny(DenyReason::InsecureScheme)
        };
        assert_eq!(decide(&[own], o), expected, "own host as the only pattern");
    }
}

/// What `Access-Control-Allow-Origin` can carry: `HeaderValue::from_str`.
fn assert_visible_ascii(s: &str) {
    assert!(
        s.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "{s:?} is not visible ASCII"
    );
}
