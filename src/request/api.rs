//! The VisitorAPI endpoint (docs/design.md §3), and a site's same-origin mount of
//! it: a request's facts in, an `Answer` out, its verdict (project,
//! refusal and reason) set where each decision is made. Limits, `pid`, the
//! project's origin policy, CORS, then the visitor. No I/O and no Pingora
//! types.

use bytes::Bytes;
use http::header::{self, HeaderValue};

use crate::certs::signing::{SignError, Signing};
use crate::clock;
use crate::config::Project;
use crate::limits::Limiter;
use crate::observe::usage;
use crate::observe::verdict::Refused;
use crate::origin::{self, Decision, DenyReason};
use crate::request::answer::{self, Answer};
use crate::request::query;
use crate::request::route::{Method, RequestFacts};
use crate::snapshot::Snapshot;
use crate::visitor::claims::{claims, ClaimsHead};
use crate::visitor::{signed_body, success_body, VisitorData};

/// How long browsers may cache a preflight answer. Chromium caps it at 2 h.
pub const PREFLIGHT_MAX_AGE: &str = "7200";
/// `Allow` on a 405 from the API.
pub const API_ALLOW: &str = "GET, HEAD, OPTIONS";
/// `Allow` on a 405 from a site's same-origin API and the public keys.
pub const SAME_ORIGIN_ALLOW: &str = "GET, HEAD";

/// Answers an API request: limit, validate, authorise, look up, render.
/// Every request from a client counts against its limit, refused ones too;
/// only allowed ones count against their project's.
pub fn answer(snap: &Snapshot, req: &RequestFacts<'_>, limiter: &Limiter) -> Answer {
    if let Err(refused) = admit_client(snap, req, limiter) {
        return refused;
    }
    if req.method == Method::Other {
        return answer::method_not_allowed(API_ALLOW);
    }
    let pid = match query::project_id_from_query(req.query.unwrap_or("")) {
        Ok(pid) => pid,
        Err(e) => return answer::invalid_project_id(e.status(), &e.to_string()),
    };
    match snap.projects.find(&pid) {
        Some((index, project)) => {
            for_project(snap, req, limiter, index, project).for_project(Some(index))
        }
        // Unknown projects are refused like any refused origin (no project
        // enumeration), with the reason the origin gives if it gives one.
        None => {
            let reason = origin::caller_origin(req.origin, req.referer)
                .err()
                .unwrap_or(DenyReason::UnknownProject);
            answer::origin_refused(Refused::origin(reason))
        }
    }
}

/// A site's same-origin API (`[[site]] api_path`) for site `index`: the
/// site binding is the authorisation, so there is no `pid`, no origin
/// check and no CORS; the site's country rule applies.
pub fn same_origin(
    snap: &Snapshot,
    req: &RequestFacts<'_>,
    index: usize,
    limiter: &Limiter,
) -> Answer {
    if let Err(refused) = admit_client(snap, req, limiter) {
        return refused;
    }
    let Some(site) = snap.sites.get(index) else {
        return answer::not_found();
    };
    let visitor = snap.visitor(req.client.ip, req.user_agent);
    let data = visitor.data();
    if !site.config.countries.admits(data.country_code) {
        return answer::country_refused();
    }
    match req.method {
        Method::Get | Method::Head => Answer::new(200, Bytes::from(success_body(&data))),
        Method::Options | Method::Other => answer::method_not_allowed(SAME_ORIGIN_ALLOW),
    }
}

/// What every API request passes first: no body, and the client's rate
/// limit (counted for refused requests too).
fn admit_client(snap: &Snapshot, req: &RequestFacts<'_>, limiter: &Limiter) -> Result<(), Answer> {
    if req.declares_body {
        return Err(answer::body_not_allowed());
    }
    let limits = &snap.config.limits;
    limiter
        .client_request(
            limits.client_prefixes.key(req.client.ip),
            limits.requests_per_minute_per_ip,
        )
        .map_err(answer::too_many_requests)
}

/// The answer for a known project: its origin policy, its limit, then the
/// visitor (or the preflight), with CORS for exactly the allowed origin.
fn for_project(
    snap: &Snapshot,
    req: &RequestFacts<'_>,
    limiter: &Limiter,
    index: usize,
    project: &Project,
) -> Answer {
    let echo = match allowed_origin(snap, req, index, project) {
        Ok(echo) => echo,
        Err(refused) => return answer::origin_refused(refused),
    };
    if let Err(refusal) = limiter.project_request(project.id.as_str(), project.requests_per_minute)
    {
        return answer::too_many_requests(refusal);
    }
    let reply = match (req.method, project.signed, &snap.signing) {
        (Method::Options, ..) => preflight(req.cors_request_headers),
        (_, true, Some(signing)) => {
            let visitor = snap.visitor(req.client.ip, req.user_agent);
            signed_answer(signing, &visitor.data(), project, &echo)
        }
        _ => {
            let visitor = snap.visitor(req.client.ip, req.user_agent);
            Answer::new(200, Bytes::from(success_body(&visitor.data())))
        }
    };
    reply
        .with_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, echo)
        .with_header(header::VARY, HeaderValue::from_static("Origin"))
}

/// The answer of a `signed` project: `data` with `token`, a JWS of the
/// facts for the allowed origin `aud` (docs/signing.md). Nothing about
/// the token is logged or kept.
fn signed_answer(
    signing: &Signing,
    data: &VisitorData<'_>,
    project: &Project,
    aud: &HeaderValue,
) -> Answer {
    let iat = clock::now();
    let head = ClaimsHead {
        iss: signing.issuer(),
        // Made from a `&str` in `allowed_origin`.
        aud: std::str::from_utf8(aud.as_bytes()).unwrap_or(""),
        iat,
        exp: iat.saturating_add(signing.ttl_secs()),
        pid: project.id.as_str(),
    };
    let claims = claims(data, &head);
    let signed = signing.signer().ok_or(SignError::NO_KEY).and_then(|key| {
        // base64url of the claims, the header and the signature.
        let extra = claims.len() * 4 / 3 + 256;
        signed_body(data, extra, |out| key.append_token(out, &claims))
    });
    match signed {
        Ok(body) => Answer::new(200, Bytes::from(body)),
        Err(e) => {
            log::error!("project {}: {e}", project.id);
            answer::error(500, "internal error")
        }
    }
}

/// The public signing keys (RFC 7517), for anyone: a backend verifying
/// tokens fetches them, from any origin. Cacheable for at most `ttl`.
pub fn jwks(snap: &Snapshot, req: &RequestFacts<'_>, limiter: &Limiter) -> Answer {
    if let Err(refused) = admit_client(snap, req, limiter) {
        return refused;
    }
    let Some(signing) = &snap.signing else {
        return answer::not_found();
    };
    match req.method {
        Method::Get | Method::Head => Answer::new(200, signing.jwks().clone())
            .with_header(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            )
            .with_cache_control(signing.jwks_cache_control().clone()),
        Method::Options | Method::Other => answer::method_not_allowed(SAME_ORIGIN_ALLOW),
    }
}

/// The value of `Access-Control-Allow-Origin` for the caller when the
/// project allows it: the exact origin, never `*`. A project's pages send
/// the same `Origin` every time: once allowed, it is not parsed and
/// matched again (`AllowedOrigins`).
fn allowed_origin(
    snap: &Snapshot,
    req: &RequestFacts<'_>,
    index: usize,
    project: &Project,
) -> Result<HeaderValue, Refused> {
    if let Some(echo) = req.origin.and_then(|raw| snap.origin_cache.get(index, raw)) {
        return Ok(echo);
    }
    let caller = origin::caller_origin(req.origin, req.referer).map_err(Refused::origin)?;
    if let Decision::Deny(reason) = origin::decide(&project.domains, &caller) {
        return Err(Refused::Origin {
            reason,
            shown: Some(usage::origin_label(&caller)),
        });
    }
    // A browser's origin is visible ASCII; a value `HeaderValue` refuses
    // cannot be echoed, so refusing is the safe answer.
    let echo = HeaderValue::from_str(caller.as_str())
        .map_err(|_| Refused::origin(DenyReason::Malformed))?;
    if let Some(raw) = req.origin {
        snap.origin_cache.insert(index, raw, echo.clone());
    }
    Ok(echo)
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
    use crate::request::route::tests::{request, signed_snapshot, snapshot};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

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
        assert_eq!(a.verdict.project, Some(0));
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
                (a.status, a.verdict.rejection(), a.verdict.project),
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
            a.verdict.shown_origin().map(String::from)
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
            (a.status, a.verdict.limited(), a.verdict.project),
            (429, Some(Exceeded::ProjectRate), Some(0))
        );
        let a = ask(&limiter, "GET", "/api/?pid=demo", &origin);
        assert_eq!(
            (a.status, a.verdict.limited()),
            (429, Some(Exceeded::ClientRate))
        );
        assert!(header(&a, "retry-after").is_some());
    }

    /// A signed project's answer is the unsigned answer plus `token`,
    /// whose claims are its facts for the echoed origin, signed by the
    /// first key as published; an unsigned project of the same snapshot
    /// gets no token.
    #[test]
    fn a_signed_project_gets_a_token_of_its_facts() {
        let snap = signed_snapshot("");
        let limiter = Limiter::new();
        let ask = |pid: &str, origin: &str| {
            let req = request("GET", &format!("/api/?pid={pid}"), &[("origin", origin)]);
            let facts =
                RequestFacts::read(&req, "8.8.8.8".parse().unwrap(), ListenerKind::Tls, &snap);
            answer(&snap, &facts, &limiter)
        };
        let a = ask("signed", "https://Example.com:443");
        assert_eq!(a.status, 200);
        let echo = header(&a, "access-control-allow-origin")
            .unwrap()
            .to_owned();
        let mut v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let data = v["data"].as_object_mut().unwrap();
        let token = data.remove("token").unwrap();
        let unsigned = ask("demo", "https://example.com");
        let plain: serde_json::Value = serde_json::from_slice(&unsigned.body).unwrap();
        assert!(plain["data"].get("token").is_none());
        assert_eq!(v, plain, "nothing else changes");
        let token = token.as_str().unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let (header_b64, claims_b64) = input.split_once('.').unwrap();
        let signer = snap.signing.as_ref().unwrap().signer().unwrap();
        let jws_header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
        assert_eq!(
            jws_header,
            serde_json::json!({"alg": "EdDSA", "kid": signer.kid(), "typ": "JWT"})
        );
        let jwk = signer.public_jwk();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
            .verify(
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .unwrap();
        let c: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).unwrap()).unwrap();
        assert_eq!(c["aud"], echo.as_str());
        assert_eq!(c["iss"], "https://visitor.example");
        assert_eq!(c["pid"], "signed");
        assert_eq!(c["ip"], "8.8.8.8");
        assert_eq!(c["countryCode"], "US");
        assert_eq!(c["currencies"], plain["data"]["currencies"]);
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
        // A preflight is not signed.
        let req = request(
            "OPTIONS",
            "/api/?pid=signed",
            &[("origin", "https://example.com")],
        );
        let facts = RequestFacts::read(&req, "8.8.8.8".parse().unwrap(), ListenerKind::Tls, &snap);
        assert!(answer(&snap, &facts, &limiter).body.is_empty());
    }

    #[test]
    fn the_public_keys_are_for_anyone_and_cacheable() {
        let ask = |snap: &Snapshot, method: &str| {
            let req = request(method, "/.well-known/jwks.json", &[]);
            let facts =
                RequestFacts::read(&req, "8.8.8.8".parse().unwrap(), ListenerKind::Tls, snap);
            jwks(snap, &facts, &Limiter::new())
        };
        let snap = signed_snapshot("");
        let a = ask(&snap, "GET");
        assert_eq!(a.status, 200);
        assert_eq!(header(&a, "access-control-allow-origin"), Some("*"));
        let names: Vec<String> = a
            .all_headers(None)
            .filter(|(n, _)| n == header::CACHE_CONTROL)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["public, max-age=600"]);
        let set: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let kid = snap.signing.as_ref().unwrap().signer().unwrap().kid();
        assert_eq!(set["keys"][0]["kid"], kid);
        assert_eq!(ask(&snap, "HEAD").status, 200);
        assert_eq!(ask(&snap, "POST").status, 405);
        assert_eq!(ask(&snapshot(""), "GET").status, 404);
    }

    const SITES: &str = "[[site]]\nhosts = [\"shop.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"\n\
        [[site]]\nhosts = [\"us.example.com\"]\nupstreams = [\"127.0.0.1:2\"]\nallow_countries = [\"US\"]\napi_path = \"/v/\"\n";

    /// A site's same-origin API asked from behind a trusted proxy that says
    /// the client is `xff`.
    fn same_origin_for(method: &str, index: usize, xff: &str) -> Answer {
        let snap = snapshot(SITES);
        let req = request(
            method,
            "/visitor-api/",
            &[("host", "shop.example.com"), ("x-forwarded-for", xff)],
        );
        let facts =
            RequestFacts::read(&req, "127.0.0.1".parse().unwrap(), ListenerKind::Tls, &snap);
        same_origin(&snap, &facts, index, &Limiter::new())
    }

    #[test]
    fn same_origin_answer_has_no_cors_and_only_get() {
        let same = |method: &str, xff: &str| same_origin_for(method, 0, xff);
        let a = same("GET", "8.8.8.8");
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/json");
        assert!(a.headers.is_empty(), "{:?}", a.headers);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["data"]["countryCode"], "US");
        for (method, status) in [("HEAD", 200), ("OPTIONS", 405), ("POST", 405)] {
            let a = same(method, "8.8.8.8");
            assert_eq!(a.status, status, "{method}");
            if status == 405 {
                assert_eq!(
                    a.headers,
                    vec![(header::ALLOW, HeaderValue::from_static("GET, HEAD"))]
                );
            }
        }
    }

    #[test]
    fn a_site_country_rule_refuses_its_same_origin_api_with_json() {
        let a = same_origin_for("GET", 1, "81.2.69.142");
        assert_eq!((a.status, a.content_type), (403, "application/json"));
        assert_eq!(a.verdict.refused, Some(Refused::Country));
        assert_eq!(same_origin_for("GET", 1, "8.8.8.8").status, 200);
    }
}
