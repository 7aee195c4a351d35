//! The Pingora layer: reads a request's facts off the `Session`, hands them
//! to the pure modules, and writes back the `Answer` they return. Deciding
//! happens elsewhere; this file only translates.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use pingora::{Error, ErrorType, Result};

use crate::api::{self, Answer, ApiRequest, Method, Route};
use crate::client_ip;
use crate::config::ListenerKind as Role;
use crate::metrics::METRICS;
use crate::snapshot::{Shared, Snapshot};

/// The request handler; one per listener role.
pub struct Visitord {
    shared: Shared,
    role: Role,
}

impl Visitord {
    pub fn new(shared: Shared, role: Role) -> Visitord {
        Visitord { shared, role }
    }
}

/// Per-request state: the snapshot the whole request uses, and what the
/// `logging` phase reports.
pub struct RequestCtx {
    snap: Arc<Snapshot>,
    started: Instant,
    route: &'static str,
    status: u16,
    project: Option<String>,
}

#[async_trait]
impl ProxyHttp for Visitord {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: self.shared.load_full(),
            started: Instant::now(),
            route: "unknown",
            status: 0,
            project: None,
        }
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = s.req_header();
        let route = api::route(req.uri.path(), &ctx.snap.config.api.path, self.role);
        ctx.route = route.label();
        let answer = match route {
            Route::Health => api::health(true),
            Route::Ready => api::health(true),
            Route::Redirect { https_port } => api::redirect(host(s), https_port, path_and_query(s)),
            Route::Api => {
                let facts = read_api_request(s, &ctx.snap);
                let answer = api::answer(&ctx.snap, &facts);
                if let Some(reason) = answer.rejection {
                    METRICS
                        .origin_rejections
                        .with_label_values(&[reason.as_label()])
                        .inc();
                }
                answer
            }
            Route::NotFound => api::not_found(),
        };
        respond(s, ctx, answer, self.role == Role::Tls).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every route above is answered in request_filter; nothing is proxied.
        Error::e_explain(ErrorType::InternalError, "no upstream for this request")
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
            ErrorType::InvalidHTTPHeader | ErrorType::H2Error | ErrorType::InvalidH2 => 400,
            _ => 500,
        };
        if code > 0 {
            let answer = api::error(code, reason_phrase(code));
            // Best effort: the client may already be gone.
            let _ = respond(s, ctx, answer, self.role == Role::Tls).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _s: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let project = ctx.project.as_deref().unwrap_or("");
        let status = status_label(ctx.status);
        METRICS
            .requests
            .with_label_values(&[ctx.route, status.as_ref(), project])
            .inc();
        METRICS
            .request_duration
            .with_label_values(&[ctx.route])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

/// Writes an answer with the headers every answer carries.
async fn respond(s: &mut Session, ctx: &mut RequestCtx, answer: Answer, tls: bool) -> Result<()> {
    let mut h = ResponseHeader::build(answer.status, Some(answer.headers.len() + 6))?;
    h.insert_header(header::CONTENT_TYPE, "application/json")?;
    h.insert_header(header::CACHE_CONTROL, "no-store")?;
    h.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
    if tls {
        if let Some(hsts) = ctx.snap.config.tls.as_ref().and_then(|t| t.hsts.as_deref()) {
            h.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
    }
    for (name, value) in answer.headers {
        h.append_header(name, value)?;
    }
    // RFC 9110 §8.6: no Content-Length on 204.
    if answer.status != 204 {
        h.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
    }
    ctx.status = answer.status;
    ctx.project = answer.project;
    let head = s.req_header().method == http::Method::HEAD;
    let no_body = answer.body.is_empty() || head;
    s.write_response_header(Box::new(h), no_body).await?;
    if !no_body {
        s.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

fn read_api_request<'a>(s: &'a Session, snap: &Snapshot) -> ApiRequest<'a> {
    let req = s.req_header();
    let headers = &req.headers;
    ApiRequest {
        method: Method::from_bytes(req.method.as_str().as_bytes()),
        query: req.uri.query(),
        origin: single_header(s, header::ORIGIN),
        referer: single_header(s, header::REFERER),
        user_agent: headers.get(header::USER_AGENT).map(HeaderValue::as_bytes),
        request_headers: headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .map(HeaderValue::as_bytes),
        client_ip: client_ip_of(s, snap),
    }
}

/// A header that must appear at most once: a repeated one reads as an empty
/// (hence malformed) value instead of picking one of the copies.
fn single_header(s: &Session, name: header::HeaderName) -> Option<&[u8]> {
    let mut values = s.req_header().headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        None => Some(first.as_bytes()),
        Some(_) => Some(b""),
    }
}

fn peer_ip(s: &Session) -> IpAddr {
    s.client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn client_ip_of(s: &Session, snap: &Snapshot) -> IpAddr {
    let trusted = &snap.config.client_ip.trusted_proxies;
    let peer = peer_ip(s);
    if trusted.is_empty() {
        return peer.to_canonical();
    }
    let headers = &s.req_header().headers;
    client_ip::client_ip_from_lines(
        peer,
        trusted,
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes),
        headers
            .get_all("forwarded")
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

fn host(s: &Session) -> Option<&[u8]> {
    let req = s.req_header();
    req.headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
}

fn path_and_query(s: &Session) -> &str {
    s.req_header()
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
}

fn status_label(status: u16) -> Cow<'static, str> {
    match status {
        0 => Cow::Borrowed("0"),
        200 => Cow::Borrowed("200"),
        204 => Cow::Borrowed("204"),
        403 => Cow::Borrowed("403"),
        other => Cow::Owned(other.to_string()),
    }
}

fn reason_phrase(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("error")
}

/// Chooses the certificate for each TLS handshake from the snapshot current
/// at that moment, by SNI (DESIGN §6: certificates reload live).
pub struct CertResolver {
    shared: Shared,
}

impl CertResolver {
    pub fn new(shared: Shared) -> CertResolver {
        CertResolver { shared }
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.shared.load().certificates.resolve(hello.server_name())
    }
}

/// The metrics listener: Prometheus text on `/metrics`, health on `/healthz`.
pub struct MetricsApp;

#[async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsApp {
    async fn response(
        &self,
        s: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = match s.req_header().uri.path() {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.render(),
            ),
            "/healthz" => (200, "application/json", api::health(true).body.to_vec()),
            _ => (404, "application/json", api::not_found().body.to_vec()),
        };
        let len = body.len();
        http::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, len)
            .header(header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}
