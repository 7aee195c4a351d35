//! Answers visitord writes itself, as plain values: a status, the headers
//! of that answer, a body. `proxy` writes them and adds the headers every
//! answer carries (`Content-Type`, `Cache-Control`, `nosniff`, HSTS).
//! Error answers are VisitorAPI's envelope (docs/design.md §3); the pages a site's
//! visitors may see instead of the site are small HTML.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use serde::Serialize;

use crate::limits::{self, Refusal};
use crate::net::host::Host;
use crate::observe::verdict::{Refused, Verdict};

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

/// What the HTTP layer writes back: status, route-specific headers, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// `application/json` for everything but the pages visitors of a site
    /// may see (`page`).
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// What was decided: the project, and the refusal with its reason. Set
    /// by the constructor of a refusal, recorded once by the proxy.
    pub verdict: Verdict,
    /// The connection must not be reused after this answer.
    pub close: bool,
}

impl Answer {
    pub fn new(status: u16, body: Bytes) -> Answer {
        Answer {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            verdict: Verdict::default(),
            close: false,
        }
    }

    /// An answer that caches may keep (the public keys), with this
    /// `Cache-Control` instead of `no-store`. Kept among the answer's own
    /// headers, so that an `Answer` stays small.
    pub fn with_cache_control(self, value: HeaderValue) -> Answer {
        self.with_header(header::CACHE_CONTROL, value)
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }

    /// The answer for the known project with index `project`.
    pub fn for_project(mut self, project: Option<usize>) -> Answer {
        self.verdict.project = project;
        self
    }

    fn refusing(mut self, refused: Refused) -> Answer {
        self.verdict.refused = Some(refused);
        self
    }

    /// Every header of the answer as written: its own, then those every
    /// answer visitord writes carries — `Content-Type`, `Cache-Control`
    /// (`no-store` unless the answer says otherwise), `X-Content-Type-Options: nosniff`, HSTS when `hsts` is
    /// given (TLS listeners with `tls.hsts`), and `Content-Length` (not on
    /// a 204, RFC 9110 §8.6). The one place these are added, whatever
    /// writes the answer.
    pub fn all_headers<'a>(
        &'a self,
        hsts: Option<&'a HeaderValue>,
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> + 'a {
        let common = [
            Some((
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )),
            (!self.headers.iter().any(|(n, _)| n == header::CACHE_CONTROL))
                .then(|| (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))),
            Some((
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )),
            hsts.map(|v| (header::STRICT_TRANSPORT_SECURITY, v.clone())),
            (self.status != 204)
                .then(|| (header::CONTENT_LENGTH, HeaderValue::from(self.body.len()))),
        ];
        common
            .into_iter()
            .flatten()
            .chain(self.headers.iter().cloned())
    }

    /// The answer as HTTP/1.1 bytes, for a connection closed below the
    /// HTTP layer (the request-head watch); it says `Connection: close`.
    pub fn to_http1(&self, hsts: Option<&HeaderValue>) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status).into_bytes();
        for (name, value) in self.all_headers(hsts) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The answer as an `http::Response`, for Pingora's plain HTTP apps
    /// (the metrics listener).
    pub fn into_response(self, hsts: Option<&HeaderValue>) -> http::Response<Vec<u8>> {
        let mut r = http::Response::new(Vec::new());
        *r.status_mut() = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK);
        let headers = r.headers_mut();
        for (name, value) in self.all_headers(hsts) {
            headers.append(name, value);
        }
        *r.body_mut() = self.body.to_vec();
        r
    }
}

/// `{"status":CODE,"result":REASON,"data":null}` with the same CODE as HTTP status.
pub fn error(status: u16, reason: &str) -> Answer {
    #[derive(Serialize)]
    struct Envelope<'a> {
        status: u16,
        result: &'a str,
        data: Option<()>,
    }
    let body = serde_json::to_vec(&Envelope {
        status,
        result: reason,
        data: None,
    })
    .unwrap_or_default();
    Answer::new(status, Bytes::from(body))
}

/// A body of another type than JSON (`content_type`).
pub fn typed(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut a = Answer::new(status, body.into());
    a.content_type = content_type;
    a
}

/// A small HTML page (sites' refusals and upstream failures).
pub fn page(status: u16, html: &'static str) -> Answer {
    typed(status, HTML, Bytes::from_static(html.as_bytes()))
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Answer {
    error(405, "method not allowed")
        .with_header(header::ALLOW, HeaderValue::from_static(allow))
        .refusing(Refused::Method)
}

/// 400 for a missing or invalid `pid`, with the reason.
pub fn invalid_project_id(status: u16, reason: &str) -> Answer {
    error(status, reason).refusing(Refused::ProjectId)
}

/// 400 for a request without a valid `Host`.
pub fn invalid_host(reason: &str) -> Answer {
    error(400, reason).refusing(Refused::Host)
}

pub fn not_found() -> Answer {
    error(404, "not found")
}

/// The same 403 for every refusal, so that callers cannot tell an unknown
/// project from a refused origin (no project enumeration).
pub fn origin_refused(refused: Refused) -> Answer {
    error(403, "origin not allowed").refusing(refused)
}

/// 429 with `Retry-After`, for any limit.
pub fn too_many_requests(refusal: Refusal) -> Answer {
    error(429, "too many requests")
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from(limits::retry_after_secs(refusal.retry_after)),
        )
        .refusing(Refused::Limit(refusal.exceeded))
}

/// 413 for a request with a body where visitord takes none, answered
/// without reading the body; the connection is not reused, since the
/// unread body would be taken for the next request.
pub fn body_not_allowed() -> Answer {
    let mut a = error(413, "request body not allowed").refusing(Refused::Body);
    a.close = true;
    a
}

/// 431 for a request head over `limits.max_request_head` that was read
/// whole (an HTTP/2 one; HTTP/1 connections are cut while reading); the
/// connection is not reused.
pub fn head_too_large() -> Answer {
    let mut a = error(431, "request header fields too large").refusing(Refused::HeadSize);
    a.close = true;
    a
}

/// The answer to an HTTP/1 request Pingora's parser rejected (a malformed
/// header line, a control byte in a value, a bad `Content-Length`),
/// written in place of Pingora's own empty `400` (see
/// `conn::connection`); the connection is closed.
pub fn unparsable_request() -> Answer {
    let mut a = error(400, "malformed request");
    a.close = true;
    a
}

/// The JSON refusal of a site's same-origin API for a visitor its country
/// rule refuses.
pub fn country_refused() -> Answer {
    error(403, "not available in your country or region").refusing(Refused::Country)
}

/// `308` to the same host, path and query over HTTPS; the port is left out
/// when it is 443. The host comes from the request, so it is checked to be
/// a plain host name or address (`host::parse_authority`) before it goes
/// into `Location`.
pub fn redirect(host: Option<&Host<'_>>, https_port: u16, path_and_query: &str) -> Answer {
    let Some(name) = host.map(Host::as_str) else {
        return invalid_host("missing or invalid Host header");
    };
    let mut location = if https_port == 443 {
        format!("https://{name}")
    } else {
        format!("https://{name}:{https_port}")
    };
    push_ascii_uri(&mut location, path_and_query);
    match HeaderValue::from_str(&location) {
        Ok(v) => error(308, "use https").with_header(header::LOCATION, v),
        Err(_) => error(400, "invalid request target"),
    }
}

/// Appends `text` with every non-ASCII byte percent-encoded. The `http`
/// crate lets raw UTF-8 through in a request target, but `Location` is a URI
/// reference, which is ASCII (and `HeaderValue::from_str` would pass the raw
/// bytes on as obs-text).
fn push_ascii_uri(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The answer to an ACME HTTP-01 challenge (RFC 8555 §8.3): the key
/// authorization stored for its token, or 404 for a token not held.
pub fn acme_challenge(key_authorization: Option<Vec<u8>>) -> Answer {
    match key_authorization {
        Some(body) => {
            let mut a = Answer::new(200, Bytes::from(body));
            a.content_type = "application/octet-stream";
            a
        }
        None => not_found(),
    }
}

/// `/healthz` and `/readyz`: a process that answers has a snapshot, so it
/// is both alive and ready (it does not listen before the first one loads).
pub fn health() -> Answer {
    Answer::new(
        200,
        Bytes::from_static(br#"{"status":200,"result":"ok","data":null}"#),
    )
}

const REFUSED_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>403 Forbidden</title></head>\n<body><h1>403 Forbidden</h1><p>This site is not available in your country or region.</p></body></html>\n";
const BAD_GATEWAY_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1><p>The site cannot be reached right now. Please try again in a moment.</p></body></html>\n";
const GATEWAY_TIMEOUT_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>504 Gateway Timeout</title></head>\n<body><h1>504 Gateway Timeout</h1><p>The site took too long to answer. Please try again in a moment.</p></body></html>\n";
const ERROR_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head>\n<body><h1>Error</h1><p>The request could not be completed.</p></body></html>\n";

/// 403 for a visitor the site's country rule refuses.
pub fn refused_page() -> Answer {
    page(403, REFUSED_HTML).refusing(Refused::Country)
}

/// The page for a request that failed on its way to or from the upstream.
pub fn error_page(status: u16) -> Answer {
    let body = match status {
        502 => BAD_GATEWAY_HTML,
        504 => GATEWAY_TIMEOUT_HTML,
        _ => ERROR_HTML,
    };
    page(status, body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    fn host(text: &str) -> Host<'static> {
        crate::net::host::parse_authority(text.as_bytes())
            .unwrap()
            .host
            .into_owned()
    }

    #[test]
    fn fuzz_regression_redirect_non_ascii() {
        let a = redirect(Some(&host("example.com")), 443, "/bücher?q=é");
        assert_eq!(a.status, 308);
        let location = a
            .headers
            .iter()
            .find(|(n, _)| n == header::LOCATION)
            .map(|(_, v)| v.to_str().unwrap());
        assert_eq!(location, Some("https://example.com/b%C3%BCcher?q=%C3%A9"));
        let a = redirect(Some(&host("example.com")), 8443, "/%C3%A9");
        let location = a.headers.iter().find(|(n, _)| n == header::LOCATION);
        assert_eq!(
            location.map(|(_, v)| v.to_str().unwrap()),
            Some("https://example.com:8443/%C3%A9")
        );
    }

    #[test]
    fn error_envelope_shape() {
        let a = error(400, "missing pid parameter");
        assert_eq!(a.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":400,"result":"missing pid parameter","data":null})
        );
    }

    #[test]
    fn reason_is_json_escaped() {
        let a = error(400, "a \"quoted\" \\ reason");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["result"], "a \"quoted\" \\ reason");
    }

    #[test]
    fn method_not_allowed_has_allow() {
        let a = method_not_allowed("GET, HEAD, OPTIONS");
        assert_eq!(a.status, 405);
        assert_eq!(
            a.headers,
            vec![(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS")
            )]
        );
    }

    #[test]
    fn redirects() {
        let location = |text: &str, port: u16, pq: &str| {
            let a = redirect(Some(&host(text)), port, pq);
            assert_eq!(a.status, 308, "{text}");
            a.headers
                .iter()
                .find(|(n, _)| n == header::LOCATION)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(
            location("example.com:8080", 8443, "/api/?pid=demo"),
            "https://example.com:8443/api/?pid=demo"
        );
        assert_eq!(
            location("example.com", 443, "/x?y=1"),
            "https://example.com/x?y=1"
        );
        assert_eq!(location("[::1]:8080", 8443, "/"), "https://[::1]:8443/");
        assert_eq!(location("127.0.0.1", 8443, "/"), "https://127.0.0.1:8443/");
        assert_eq!(
            location("Example.COM.:80", 443, "/"),
            "https://example.com/"
        );
        // A missing or invalid `Host` (refused by `host::parse_authority`).
        assert_eq!(redirect(None, 443, "/").status, 400);
    }

    #[test]
    fn acme_challenges_answer_the_stored_key_authorization_or_404() {
        let a = acme_challenge(Some(b"token.thumbprint".to_vec()));
        assert_eq!(
            (a.status, a.content_type),
            (200, "application/octet-stream")
        );
        assert_eq!(&a.body[..], b"token.thumbprint");
        assert_eq!(acme_challenge(None).status, 404);
    }

    #[test]
    fn pages_are_small_html_without_details() {
        for (a, status) in [
            (refused_page(), 403),
            (error_page(502), 502),
            (error_page(504), 504),
            (error_page(500), 500),
        ] {
            assert_eq!(a.status, status);
            assert_eq!(a.content_type, "text/html; charset=utf-8");
            let body = std::str::from_utf8(&a.body).unwrap();
            assert!(body.starts_with("<!doctype html>"), "{body}");
            assert!(body.len() < 512);
            assert!(
                body.contains(&status.to_string()) || status == 500,
                "{body}"
            );
        }
    }

    #[test]
    fn every_answer_carries_the_common_headers_once() {
        let hsts = HeaderValue::from_static("max-age=63072000");
        let names = |a: &Answer, hsts| -> Vec<String> {
            a.all_headers(hsts).map(|(n, _)| n.to_string()).collect()
        };
        assert_eq!(
            names(&method_not_allowed("GET"), Some(&hsts)),
            [
                "content-type",
                "cache-control",
                "x-content-type-options",
                "strict-transport-security",
                "content-length",
                "allow"
            ]
        );
        let no_content = Answer::new(204, Bytes::new());
        assert!(!names(&no_content, None).contains(&"content-length".to_owned()));
        let cache_control = |a: &Answer| -> Vec<HeaderValue> {
            a.all_headers(None)
                .filter(|(n, _)| n == header::CACHE_CONTROL)
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(cache_control(&not_found()), ["no-store"]);
        let cached = health().with_cache_control(HeaderValue::from_static("max-age=60"));
        assert_eq!(cache_control(&cached), ["max-age=60"], "its own, once");
    }

    #[test]
    fn raw_answers_count_their_length_and_close() {
        let hsts = HeaderValue::from_static("max-age=1");
        let a = head_too_large();
        let bytes = String::from_utf8(a.to_http1(Some(&hsts))).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nstrict-transport-security: max-age=1\r\n"));
        assert!(head.contains("\r\nx-content-type-options: nosniff\r\n"));
        assert!(head.ends_with("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        let r = not_found().into_response(None);
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.headers()["content-length"],
            r.body().len().to_string().as_str()
        );
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
}
