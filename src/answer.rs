//! Answers visitord writes itself, as plain values: a status, the headers
//! of that answer, a body. `proxy` writes them and adds the headers every
//! answer carries (`Content-Type`, `Cache-Control`, `nosniff`, HSTS).
//! Error answers are VisitorAPI's envelope (DESIGN §3); the pages a site's
//! visitors may see instead of the site are small HTML.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use serde::Serialize;

use crate::host::Host;
use crate::limits::{self, Exceeded, Refusal};
use crate::origin::DenyReason;

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// What the HTTP layer writes back: status, route-specific headers, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// `application/json` for everything but the pages visitors of a site
    /// may see (`page`).
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Which project the answer was for, when the request named a known one:
    /// its index in the snapshot's project list (for the metrics label;
    /// never taken from the request unchecked).
    pub project: Option<usize>,
    /// Why an origin was refused (a metrics label).
    pub rejection: Option<DenyReason>,
    /// Which rate limit refused the request (a metrics label).
    pub limited: Option<Exceeded>,
    /// The refused origin of a known project, as the dashboard shows it
    /// (`usage::origin_label`: normalised, IP literals replaced).
    pub refused_origin: Option<Box<str>>,
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
            project: None,
            rejection: None,
            limited: None,
            refused_origin: None,
            close: false,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
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

/// A small HTML page (sites' refusals and upstream failures).
pub fn page(status: u16, html: &'static str) -> Answer {
    let mut a = Answer::new(status, Bytes::from_static(html.as_bytes()));
    a.content_type = HTML;
    a
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Answer {
    error(405, "method not allowed").with_header(header::ALLOW, HeaderValue::from_static(allow))
}

pub fn not_found() -> Answer {
    error(404, "not found")
}

/// The same 403 for every refusal, so that callers cannot tell an unknown
/// project from a refused origin (no project enumeration).
pub fn origin_refused(reason: DenyReason) -> Answer {
    let mut a = error(403, "origin not allowed");
    a.rejection = Some(reason);
    a
}

/// 429 with `Retry-After`, for any limit.
pub fn too_many_requests(refusal: Refusal) -> Answer {
    let mut a = error(429, "too many requests").with_header(
        header::RETRY_AFTER,
        HeaderValue::from(limits::retry_after_secs(refusal.retry_after)),
    );
    a.limited = Some(refusal.exceeded);
    a
}

/// 413 for a request with a body where visitord takes none, answered
/// without reading the body; the connection is not reused, since the
/// unread body would be taken for the next request.
pub fn body_not_allowed() -> Answer {
    let mut a = error(413, "request body not allowed");
    a.close = true;
    a
}

/// 431 for a request head over `limits.max_request_head` that was read
/// whole (an HTTP/2 one; HTTP/1 connections are cut while reading); the
/// connection is not reused.
pub fn head_too_large() -> Answer {
    let mut a = error(431, "request header fields too large");
    a.close = true;
    a
}

/// The JSON refusal of a site's same-origin API for a visitor its country
/// rule refuses.
pub fn country_refused() -> Answer {
    error(403, "not available in your country or region")
}

/// `308` to the same host, path and query over HTTPS; the port is left out
/// when it is 443. The host comes from the request, so it is checked to be
/// a plain host name or address (`host::parse_authority`) before it goes
/// into `Location`.
pub fn redirect(host: Option<&Host<'_>>, https_port: u16, path_and_query: &str) -> Answer {
    let Some(name) = host.map(Host::as_str) else {
        return error(400, "missing or invalid Host header");
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
    page(403, REFUSED_HTML)
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
        crate::host::parse_authority(text.as_bytes())
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
}
