//! The VisitorAPI endpoint (DESIGN §3): a request's facts in, an `Answer`
//! out. Limits, `pid`, the project's origin policy, CORS, then the visitor.
//! No I/O and no Pingora types.

use bytes::Bytes;
use http::header::{self, HeaderValue};

use crate::answer::{self, Answer};
use crate::limits::Limiter;
use crate::origin::{self, Decision, DenyReason, Origin};
use crate::query;
use crate::route::{Method, RequestFacts};
use crate::snapshot::Snapshot;
use crate::usage;
use crate::visitor::success_body;

/// How long browsers may cache a preflight answer. Chromium caps it at 2 h.
pub const PREFLIGHT_MAX_AGE: &str = "7200";
/// `Allow` on a 405 from the API.
pub const API_ALLOW: &str = "GET, HEAD, OPTIONS";

/// Answers an API request: limit, validate, authorise, look up, render.
/// Every request from a client counts against its limit, refused ones too;
/// only allowed ones count against their project's.
pub fn answer(snap: &Snapshot, req: &RequestFacts<'_>, limiter: &Limiter) -> Answer {
    if req.declares_body {
        return answer::body_not_allowed();
    }
    let limits = &snap.config.limits;
    if let Err(refusal) = limiter.client_request(
        limits.client_prefixes.key(req.client.ip),
        limits.requests_per_minute_per_ip,
    ) {
        return answer::too_many_requests(refusal);
    }
    if req.method == Method::Other {
        return answer::method_not_allowed(API_ALLOW);
    }
    let pid = match query::project_id_from_query(req.query.unwrap_or("")) {
        Ok(pid) => pid,
        Err(e) => return answer::error(e.status(), &e.to_string()),
    };
    // A project's pages send the same `Origin` every time: once allowed,
    // it is not parsed and matched again (`AllowedOrigins`).
    let known = snap.projects.find(&pid);
    let cached = known
        .zip(req.origin)
        .and_then(|((index, _), raw)| snap.allowed_origins.get(index, raw));
    let (index, project, echo) = match (known, cached) {
        (Some((index, project)), Some(echo)) => (index, project, Ok(echo)),
        _ => {
            let caller = match origin::caller_origin(req.origin, req.referer) {
                Ok(o) => o,
                Err(reason) => {
                    let mut a = answer::origin_refused(reason);
                    a.project = known.map(|(index, _)| index);
                    return a;
                }
            };
            let Some((index, project)) = known else {
                return answer::origin_refused(DenyReason::UnknownProject);
            };
            if let Decision::Deny(reason) = origin::decide(&project.domains, &caller) {
                let mut a = answer::origin_refused(reason);
                a.project = Some(index);
                a.refused_origin = Some(usage::origin_label(&caller));
                return a;
            }
            let echo = allow_origin_value(&caller);
            if let (Ok(echo), Some(raw)) = (&echo, req.origin) {
                snap.allowed_origins.insert(index, raw, echo.clone());
            }
            (index, project, echo)
        }
    };
    if let Err(refusal) = limiter.project_request(project.id.as_str(), project.requests_per_minute)
    {
        let mut a = answer::too_many_requests(refusal);
        a.project = Some(index);
        return a;
    }

    let mut reply = match req.method {
        Method::Options => preflight(req.cors_request_headers),
        _ => {
            let visitor = snap.visitor(req.client.ip, req.user_agent);
            Answer::new(200, Bytes::from(success_body(&visitor.data())))
        }
    };
    reply.project = Some(index);
    allow_origin(reply, echo)
}

/// The value of `Access-Control-Allow-Origin` for an allowed caller: the
/// exact origin, never `*`. A browser's origin is visible ASCII; a value
/// `HeaderValue` refuses cannot be echoed (`Err`), so refusing is the safe
/// answer.
fn allow_origin_value(caller: &Origin) -> Result<HeaderValue, ()> {
    HeaderValue::from_str(caller.as_str()).map_err(|_| ())
}

/// The CORS headers of an allowed request.
fn allow_origin(answer: Answer, echo: Result<HeaderValue, ()>) -> Answer {
    match echo {
        Ok(v) => answer
            .with_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, v)
            .with_header(header::VARY, HeaderValue::from_static("Origin")),
        Err(()) => answer::origin_refused(DenyReason::Malformed),
    }
}

fn preflight(request_headers: Option<&[u8]>) -> Answer {
    let mut a = Answer::new(204, Bytes::new())
        .with_header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        )
        .with_header(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
    if let Some(v) = request_headers.and_then(simple_request_headers) {
        a = a.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    a
}

/// Echoes `Access-Control-Request-Headers` only when every name in it is a
/// CORS-safelisted request header (Fetch standard §4.5); anything else
/// (credentials, custom headers) is not granted.
fn simple_request_headers(raw: &[u8]) -> Option<HeaderValue> {
    const SAFELISTED: [&str; 5] = [
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "range",
    ];
    let text = std::str::from_utf8(raw).ok()?;
    if text.len() > 256 {
        return None;
    }
    let names: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let all_simple = !names.is_empty()
        && names
            .iter()
            .all(|n| SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(n)));
    if !all_simple {
        return None;
    }
    HeaderValue::from_str(&names.join(", ").to_ascii_lowercase()).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::ListenerKind;
    use crate::route::tests::{request, snapshot};

    #[test]
    fn preflight_grants_only_safelisted_headers() {
        assert_eq!(
            simple_request_headers(b"Accept, Content-Type"),
            Some(HeaderValue::from_static("accept, content-type"))
        );
        assert_eq!(simple_request_headers(b"x-custom"), None);
        assert_eq!(simple_request_headers(b"accept, authorization"), None);
        assert_eq!(simple_request_headers(b""), None);
        assert_eq!(simple_request_headers(&[0xff, 0xfe]), None);
        let a = preflight(Some(b"accept"));
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
        let names: Vec<_> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "access-control-allow-methods",
                "access-control-max-age",
                "access-control-allow-headers"
            ]
        );
    }

    fn ask(limiter: &Limiter, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
        let snap = snapshot("");
        let req = request(method, target, headers);
        let facts = RequestFacts::read(
            &req,
            "203.0.113.9".parse().unwrap(),
            ListenerKind::Tls,
            &snap,
        );
        answer(&snap, &facts, limiter)
    }

    fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
        a.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn an_allowed_origin_gets_the_visitor_and_its_own_origin_back() {
        let limiter = Limiter::new();
        let origin = ("origin", "https://www.example.com");
        let a = ask(&limiter, "GET", "/api/?pid=demo", &[origin]);
        assert_eq!(a.status, 200);
        assert_eq!(a.project, Some(0));
        assert_eq!(
            header(&a, "access-control-allow-origin"),
            Some("https://www.example.com")
        );
        assert_eq!(header(&a, "vary"), Some("Origin"));
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["data"]["ipAddress"], "203.0.113.9");
        // The second time the origin comes from the cache: the same answer.
        let again = ask(&limiter, "GET", "/api/?pid=demo", &[origin]);
        assert_eq!((again.status, again.headers.len()), (200, 2));
        let pre = ask(
            &limiter,
            "OPTIONS",
            "/api/?pid=demo",
            &[origin, ("access-control-request-headers", "accept")],
        );
        assert_eq!(pre.status, 204);
        assert_eq!(
            header(&pre, "access-control-allow-origin"),
            Some("https://www.example.com")
        );
        assert_eq!(header(&pre, "access-control-allow-headers"), Some("accept"));
    }

    /// (method, target, headers, status, deny reason, project)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        Option<DenyReason>,
        Option<usize>,
    );

    #[test]
    fn refusals_say_why_without_cors() {
        let cases: &[Case<'_>] = &[
            (
                "GET",
                "/api/?pid=nope",
                &[("origin", "https://example.com")],
                403,
                Some(DenyReason::UnknownProject),
                None,
            ),
            (
                "GET",
                "/api/?pid=demo",
                &[("origin", "https://evil.test")],
                403,
                Some(DenyReason::NotListed),
                Some(0),
            ),
            (
                "GET",
                "/api/?pid=demo",
                &[("origin", "http://example.com")],
                403,
                Some(DenyReason::InsecureScheme),
                Some(0),
            ),
            (
                "GET",
                "/api/?pid=demo",
                &[],
                403,
                Some(DenyReason::NoOrigin),
                Some(0),
            ),
            (
                "GET",
                "/api/?pid=nope",
                &[],
                403,
                Some(DenyReason::NoOrigin),
                None,
            ),
            (
                "GET",
                "/api/",
                &[("origin", "https://example.com")],
                400,
                None,
                None,
            ),
            (
                "GET",
                "/api/?pid=a.b",
                &[("origin", "https://example.com")],
                400,
                None,
                None,
            ),
            (
                "DELETE",
                "/api/?pid=demo",
                &[("origin", "https://example.com")],
                405,
                None,
                None,
            ),
        ];
        for &(method, target, headers, status, reason, project) in cases {
            let a = ask(&Limiter::new(), method, target, headers);
            assert_eq!(
                (a.status, a.rejection, a.project),
                (status, reason, project),
                "{method} {target} {headers:?}"
            );
            assert_eq!(header(&a, "access-control-allow-origin"), None);
        }
        let a = ask(&Limiter::new(), "DELETE", "/api/?pid=demo", &[]);
        assert_eq!(header(&a, "allow"), Some(API_ALLOW));
        // The dashboard learns which site was refused, normalised; never
        // an address, and nothing for an unknown project.
        let refused = |origin: &str, pid: &str| {
            let a = ask(&Limiter::new(), "GET", pid, &[("origin", origin)]);
            a.refused_origin.map(String::from)
        };
        assert_eq!(
            refused("https://Evil.Test:443", "/api/?pid=demo").as_deref(),
            Some("https://evil.test")
        );
        assert_eq!(
            refused("http://example.com", "/api/?pid=demo").as_deref(),
            Some("http://example.com")
        );
        assert_eq!(
            refused("https://198.51.100.7", "/api/?pid=demo").as_deref(),
            Some(usage::IP_ORIGIN)
        );
        assert_eq!(refused("https://evil.test", "/api/?pid=nope"), None);
        assert_eq!(refused("https://www.example.com", "/api/?pid=demo"), None);
        let a = ask(
            &Limiter::new(),
            "GET",
            "/api/?pid=demo",
            &[("content-length", "2")],
        );
        assert_eq!(a.status, 413);
        assert!(
            a.close,
            "the unread body must not be taken for the next request"
        );
    }

    #[test]
    fn limits_answer_429_with_the_limit_that_was_hit() {
        use crate::limits::Exceeded;
        // The test snapshot allows 3 requests a minute for `demo` and 5 per
        // client. The clock stands still: no minute ends mid-test.
        let limiter = Limiter::with_clock(|| std::time::Duration::from_secs(1_740_000_000));
        let origin = [("origin", "https://example.com")];
        let statuses: Vec<u16> = (0..4)
            .map(|_| ask(&limiter, "GET", "/api/?pid=demo", &origin).status)
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429]);
        let a = ask(&limiter, "GET", "/api/?pid=demo", &origin);
        assert_eq!(
            (a.status, a.limited, a.project),
            (429, Some(Exceeded::ProjectRate), Some(0))
        );
        let a = ask(&limiter, "GET", "/api/?pid=demo", &origin);
        assert_eq!((a.status, a.limited), (429, Some(Exceeded::ClientRate)));
        assert!(header(&a, "retry-after").is_some());
    }
}
