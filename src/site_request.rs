//! A request for a site visitord stands in front of: proxied with the
//! visitor's facts, or answered here instead (the site's same-origin API,
//! a visitor its country rule refuses). Pure: facts in, a decision out;
//! `proxy` carries it out.

use bytes::Bytes;
use http::HeaderValue;

use crate::answer::{self, Answer};
use crate::client_ip;
use crate::header_buf::HeaderBuf;
use crate::limits::Limiter;
use crate::route::{Method, RequestFacts};
use crate::snapshot::Snapshot;
use crate::visitor::{self, VisitorData, VISITOR_HEADER_COUNT};

/// `Allow` on a 405 from a site's same-origin API.
pub const SAME_ORIGIN_ALLOW: &str = "GET, HEAD";

/// What the upstream of a site request receives, decided before it is
/// chosen: the headers visitord sets.
#[derive(Debug, Clone)]
pub struct SiteRequest {
    /// The site's index in the snapshot.
    pub index: usize,
    /// In `visitor::VISITOR_HEADERS` order; `None` for a header the site
    /// does not take (`visitor_headers`).
    pub visitor: [Option<HeaderValue>; VISITOR_HEADER_COUNT],
    pub forwarded_for: HeaderValue,
    /// Whether the peer's own `Forwarded` header may pass.
    pub peer_trusted: bool,
    pub forwarded_host: Option<HeaderValue>,
    /// `X-Real-IP`: the client address (nginx's convention).
    pub real_ip: HeaderValue,
    /// The site's `pass_underscore_headers`.
    pub pass_underscore_headers: bool,
}

#[derive(Debug)]
pub enum SiteDecision {
    Proxy(Box<SiteRequest>),
    Answer(Answer),
}

/// Decides a request routed to site `index` (its same-origin API when
/// `same_origin`).
pub fn decide(
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    index: usize,
    same_origin: bool,
    limiter: &Limiter,
) -> SiteDecision {
    let Some(site) = snap.sites.get(index) else {
        return SiteDecision::Answer(answer::not_found());
    };
    if same_origin {
        if facts.declares_body {
            return SiteDecision::Answer(answer::body_not_allowed());
        }
        let limits = &snap.config.limits;
        if let Err(refusal) = limiter.client_request(
            limits.client_prefixes.key(facts.client.ip),
            limits.requests_per_minute_per_ip,
        ) {
            return SiteDecision::Answer(answer::too_many_requests(refusal));
        }
    }
    // Only the lookups this site needs: its country rule and the headers it
    // takes (the same-origin API answers everything).
    let wanted = site.config.visitor_headers;
    let visitor = snap.visitor_in_part(
        facts.client.ip,
        facts.user_agent,
        same_origin || wanted.needs_location() || site.config.countries.needs_country(),
        same_origin || wanted.needs_agent(),
    );
    let data = visitor.data();
    let admitted = site.config.countries.admits(data.country_code);
    if same_origin {
        return SiteDecision::Answer(if admitted {
            same_origin_answer(facts.method, &data)
        } else {
            answer::country_refused()
        });
    }
    if !admitted {
        return SiteDecision::Answer(answer::refused_page());
    }
    // Every value in one buffer (see `header_buf`).
    let mut buf = HeaderBuf::with_capacity(256);
    let visitor = visitor::visitor_headers(&data, wanted, &mut buf);
    let forwarded_for = buf.push(|out| {
        client_ip::push_forwarded_for(
            out,
            facts.peer,
            facts.peer_trusted,
            facts.forwarded_for_lines(),
        );
    });
    let real_ip = buf.push(|out| out.extend_from_slice(data.ip_address.as_bytes()));
    let forwarded_host = facts
        .host_raw
        .map(|h| buf.push(|out| out.extend_from_slice(h)));
    let values = buf.freeze();
    SiteDecision::Proxy(Box::new(SiteRequest {
        index,
        visitor: visitor.map(|m| m.map(|m| values.get(&m))),
        forwarded_for: values.get(&forwarded_for),
        peer_trusted: facts.peer_trusted,
        forwarded_host: forwarded_host.map(|m| values.get(&m)),
        real_ip: values.get(&real_ip),
        pass_underscore_headers: site.config.pass_underscore_headers,
    }))
}

/// Headers visitord sets for the upstream itself: a client's copy, or a
/// look-alike (`X_Forwarded_For`), is dropped.
const SET_FOR_UPSTREAM: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

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
        return !name.starts_with(visitor::VISITOR_HEADER_PREFIX)
            && !SET_FOR_UPSTREAM.contains(&name)
            && (peer_trusted || !CLIENT_ADDRESS_HEADERS.contains(&name));
    }
    let prefix = visitor::VISITOR_HEADER_PREFIX;
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

/// A site's same-origin API (`[[site]] api_path`): the site binding is the
/// authorisation, so there is no `pid`, no origin check and no CORS.
fn same_origin_answer(method: Method, data: &VisitorData<'_>) -> Answer {
    match method {
        Method::Get | Method::Head => Answer::new(200, Bytes::from(visitor::success_body(data))),
        Method::Options | Method::Other => answer::method_not_allowed(SAME_ORIGIN_ALLOW),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::ListenerKind;
    use crate::route::tests::{request, snapshot};
    use http::header;

    const SITES: &str = "[[site]]\nhosts = [\"shop.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"\n\
        [[site]]\nhosts = [\"us.example.com\"]\nupstreams = [\"127.0.0.1:2\"]\nallow_countries = [\"US\"]\napi_path = \"/v/\"\n\
        [[site]]\nhosts = [\"slim.example.com\"]\nupstreams = [\"127.0.0.1:3\"]\nvisitor_headers = [\"country\", \"os\"]\n";

    fn decide_for(
        method: &str,
        index: usize,
        same_origin: bool,
        peer: &str,
        xff: &str,
    ) -> SiteDecision {
        let snap = snapshot(SITES);
        let req = request(
            method,
            "/",
            &[("host", "Shop.example.com"), ("x-forwarded-for", xff)],
        );
        let facts = RequestFacts::read(&req, peer.parse().unwrap(), ListenerKind::Tls, &snap);
        decide(&snap, &facts, index, same_origin, &Limiter::new())
    }

    #[test]
    fn proxied_requests_carry_the_visitor_and_the_forwarding_chain() {
        let SiteDecision::Proxy(r) = decide_for("GET", 0, false, "127.0.0.1", "8.8.8.8") else {
            panic!("proxied")
        };
        assert_eq!(r.index, 0);
        assert_eq!(
            r.visitor[0].as_ref().unwrap(),
            "US",
            "X-Visitor-Country from the trusted hop"
        );
        assert_eq!(r.forwarded_for, "8.8.8.8, 127.0.0.1");
        assert!(r.peer_trusted);
        assert_eq!(
            r.forwarded_host.as_ref().map(|h| h.to_str().unwrap()),
            Some("Shop.example.com")
        );
        let SiteDecision::Proxy(r) = decide_for("GET", 0, false, "198.51.100.7", "8.8.8.8") else {
            panic!("proxied")
        };
        assert_eq!(
            r.forwarded_for, "198.51.100.7",
            "an untrusted chain is dropped"
        );
        assert!(!r.peer_trusted);
    }

    #[test]
    fn a_site_gets_only_the_visitor_headers_it_takes() {
        let SiteDecision::Proxy(r) = decide_for("GET", 2, false, "127.0.0.1", "8.8.8.8") else {
            panic!("proxied")
        };
        let sent: Vec<usize> = (0..VISITOR_HEADER_COUNT)
            .filter(|&i| r.visitor[i].is_some())
            .collect();
        assert_eq!(sent, [0, 9], "country and os");
        assert_eq!(r.visitor[0].as_ref().unwrap(), "US");
    }

    #[test]
    fn country_rules_refuse_with_a_page_or_json() {
        let SiteDecision::Answer(a) = decide_for("GET", 1, false, "127.0.0.1", "81.2.69.142")
        else {
            panic!("refused")
        };
        assert_eq!(
            (a.status, a.content_type),
            (403, "text/html; charset=utf-8")
        );
        let SiteDecision::Answer(a) = decide_for("GET", 1, true, "127.0.0.1", "81.2.69.142") else {
            panic!("refused")
        };
        assert_eq!((a.status, a.content_type), (403, "application/json"));
        assert!(matches!(
            decide_for("GET", 1, false, "127.0.0.1", "8.8.8.8"),
            SiteDecision::Proxy(_)
        ));
    }

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

    #[test]
    fn same_origin_answer_has_no_cors_and_only_get() {
        let SiteDecision::Answer(a) = decide_for("GET", 0, true, "127.0.0.1", "8.8.8.8") else {
            panic!("answered")
        };
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/json");
        assert!(a.headers.is_empty(), "{:?}", a.headers);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["data"]["countryCode"], "US");
        for (method, status) in [("HEAD", 200), ("OPTIONS", 405), ("POST", 405)] {
            let SiteDecision::Answer(a) = decide_for(method, 0, true, "127.0.0.1", "8.8.8.8")
            else {
                panic!("answered")
            };
            assert_eq!(a.status, status, "{method}");
            if status == 405 {
                assert_eq!(
                    a.headers,
                    vec![(header::ALLOW, HeaderValue::from_static("GET, HEAD"))]
                );
            }
        }
    }
}
