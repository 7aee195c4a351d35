//! The Pingora layer: reads a request's facts off the `Session`, hands them
//! to the pure modules, and writes back the `Answer` they return. Deciding
//! happens elsewhere; this file only translates. Site requests go on
//! through Pingora's proxy phases (`upstream_peer`, `upstream_request_filter`,
//! `fail_to_connect`, `fail_to_proxy`) with what `sites.rs` decided.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::api::{self, Answer, ApiRequest, Method, Route};
use crate::client_ip;
use crate::config::ListenerKind as Role;
use crate::limits::Limiter;
use crate::metrics::METRICS;
use crate::sites::{self, Site, VISITOR_HEADERS, VISITOR_HEADER_PREFIX};
use crate::snapshot::{Shared, Snapshot};

/// The request handler; one per listener role.
pub struct Visitord {
    shared: Shared,
    role: Role,
    limiter: Arc<Limiter>,
}

impl Visitord {
    pub fn new(shared: Shared, role: Role, limiter: Arc<Limiter>) -> Visitord {
        Visitord {
            shared,
            role,
            limiter,
        }
    }
}

/// Per-request state: the snapshot the whole request uses, and what the
/// `logging` phase reports.
pub struct RequestCtx {
    snap: Arc<Snapshot>,
    started: Instant,
    route: &'static str,
    status: u16,
    /// Index in `snap`'s project list.
    project: Option<usize>,
    /// Set when the request is proxied to a site.
    site: Option<SiteRequest>,
}

/// What the proxy phases of a site request need, decided in `request_filter`.
struct SiteRequest {
    index: usize,
    /// In `sites::VISITOR_HEADERS` order.
    visitor: [HeaderValue; 11],
    forwarded_for: HeaderValue,
    peer_trusted: bool,
    forwarded_host: Option<HeaderValue>,
    /// The upstream of the current attempt.
    upstream: Option<usize>,
    attempts: usize,
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
            site: None,
        }
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        keep_alive(s, &ctx.snap);
        let req = s.req_header();
        let route = api::route_request(
            &ctx.snap.sites,
            host(s),
            req.uri.path(),
            &ctx.snap.config.api.path,
            self.role,
        );
        ctx.route = route.label();
        let answer = match route {
            Route::Health => api::health(true),
            Route::Ready => api::health(true),
            Route::Redirect { https_port } => api::redirect(host(s), https_port, path_and_query(s)),
            Route::Api if declares_body(s) => refuse_body(s),
            Route::Api => {
                let facts = read_api_request(s, &ctx.snap);
                let answer = api::answer(&ctx.snap, &facts, &self.limiter);
                if let Some(reason) = answer.rejection {
                    METRICS
                        .origin_rejections
                        .with_label_values(&[reason.as_label()])
                        .inc();
                }
                answer
            }
            Route::SiteApi(_) if declares_body(s) => refuse_body(s),
            Route::NotFound => api::not_found(),
            Route::Site(i) | Route::SiteApi(i) => {
                let same_origin = matches!(route, Route::SiteApi(_));
                match site_request(s, &ctx.snap, i, same_origin, &self.limiter) {
                    Err(answer) => answer,
                    Ok(request) => {
                        ctx.site = Some(request);
                        return Ok(false);
                    }
                }
            }
        };
        if let Some(exceeded) = answer.limited {
            METRICS
                .rate_limited
                .with_label_values(&[exceeded.as_label()])
                .inc();
        }
        respond(s, ctx, answer, self.role == Role::Tls).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Only site requests get here; every other route is answered in
        // request_filter.
        let Some(r) = ctx.site.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this request");
        };
        let picked = ctx.snap.sites.get(r.index).and_then(Site::pick);
        let peer = picked.and_then(|u| ctx.snap.peers.get(r.index, u));
        match (picked, peer) {
            (Some(u), Some(peer)) => {
                r.upstream = Some(u);
                r.attempts += 1;
                Ok(Box::new(peer.clone()))
            }
            _ => Error::e_explain(ErrorType::InternalError, "site has no upstream"),
        }
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(r) = ctx.site.as_ref() else {
            return Ok(());
        };
        // Exactly one value of each X-Visitor-* reaches the upstream: ours.
        let spoofed: Vec<HeaderName> = up
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with(VISITOR_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in &spoofed {
            up.remove_header(name);
        }
        for (name, value) in VISITOR_HEADERS.iter().zip(&r.visitor) {
            up.insert_header(name, value.clone())?;
        }
        up.insert_header("x-forwarded-for", r.forwarded_for.clone())?;
        if !r.peer_trusted {
            up.remove_header("forwarded");
        }
        up.insert_header("x-forwarded-proto", HeaderValue::from_static("https"))?;
        if let Some(h) = &r.forwarded_host {
            up.insert_header("x-forwarded-host", h.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = upstream_response.status.as_u16();
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(r) = ctx.site.as_ref() else {
            return e;
        };
        let Some((site, u)) = ctx.snap.sites.get(r.index).zip(r.upstream) else {
            return e;
        };
        if let Some(upstream) = site.upstreams.get(u) {
            // Passive health: an upstream that refuses connections leaves
            // the rotation now, not at its next check, which brings it back.
            if is_unreachable(e.etype()) && upstream.health.set(false) {
                log::warn!(
                    "site {}: upstream {} ({}) marked down: {}",
                    site.label,
                    upstream.spec,
                    upstream.addr,
                    e.etype().as_str()
                );
            }
        }
        // Nothing reached the upstream yet, so trying another is safe for
        // any method.
        e.set_retry(r.attempts < site.upstreams.len() && site.another_is_up(u));
        e
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        if ctx.site.is_some() {
            return self.fail_site(s, e, ctx).await;
        }
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

    /// Site failures are logged once, by `fail_site`, without the request
    /// summary Pingora would add.
    fn suppress_error_log(&self, _s: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        ctx.site.is_some()
    }

    /// Retries of site requests are logged by `fail_to_connect`.
    fn suppress_proxy_warn_log(
        &self,
        _s: &Session,
        ctx: &RequestCtx,
        _e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        ctx.site.is_some()
    }

    async fn logging(&self, _s: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let snap = &ctx.snap;
        let project = ctx
            .project
            .and_then(|i| Some((i, snap.projects.at(i)?.id.as_str())));
        snap.request_metrics.observe(
            ctx.route,
            ctx.status,
            project,
            ctx.started.elapsed().as_secs_f64(),
        );
    }
}

impl Visitord {
    /// A site request failed: a small page instead of Pingora's, 502 or
    /// 504 for the upstream's failures, and one warning that names the
    /// site and upstream (never the client).
    async fn fail_site(&self, s: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = site_error_status(e);
        if *e.esource() == ErrorSource::Upstream {
            let upstream = ctx.site.as_ref().and_then(|r| {
                let site = ctx.snap.sites.get(r.index)?;
                Some((site, site.upstreams.get(r.upstream?)?))
            });
            if let Some((site, u)) = upstream {
                log::warn!(
                    "site {}: upstream {} ({}): answered {code}: {}",
                    site.label,
                    u.spec,
                    u.addr,
                    e.etype().as_str()
                );
            }
        }
        // Once the upstream's response head went out, the status is sent;
        // Pingora closes the connection and the client sees a cut response.
        if code > 0 && s.response_written().is_none() {
            // Best effort: the client may already be gone.
            let _ = respond(s, ctx, sites::error_page(code), self.role == Role::Tls).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// The status for a failed site request; 0 when the client went away.
fn site_error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (
            ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

/// The connect errors that say the upstream is not there.
fn is_unreachable(etype: &ErrorType) -> bool {
    matches!(
        etype,
        ErrorType::ConnectRefused
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
    )
}

/// Decides a site request: what goes to the upstream, or (`Err`) the
/// answer given here instead: the same-origin API, a country refusal.
fn site_request(
    s: &Session,
    snap: &Snapshot,
    index: usize,
    same_origin: bool,
    limiter: &Limiter,
) -> Result<SiteRequest, Answer> {
    let Some(site) = snap.sites.get(index) else {
        return Err(api::not_found());
    };
    let facts = read_api_request(s, snap);
    if same_origin {
        let per_minute = snap.config.limits.requests_per_minute_per_ip;
        if let Err(refusal) = limiter.client_request(facts.client_ip, per_minute) {
            return Err(api::too_many_requests(refusal));
        }
    }
    let user_agent = facts
        .user_agent
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let agent = snap.agents.parse(user_agent);
    let location = snap.geo.lookup(facts.client_ip);
    let data = api::visitor(facts.client_ip, &location, &agent);
    let admitted = site.config.countries.admits(data.country_code);
    if same_origin {
        return Err(if admitted {
            api::same_origin(facts.method, &data)
        } else {
            api::country_refused()
        });
    }
    if !admitted {
        return Err(sites::refused_page());
    }
    let trusted = &snap.config.client_ip.trusted_proxies;
    let peer = peer_ip(s);
    Ok(SiteRequest {
        index,
        visitor: sites::visitor_headers(&data),
        forwarded_for: sites::forwarded_for(
            peer,
            trusted,
            s.req_header()
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(HeaderValue::as_bytes),
        ),
        peer_trusted: sites::is_trusted(trusted, peer),
        forwarded_host: host(s).and_then(|h| HeaderValue::from_bytes(h).ok()),
        upstream: None,
        attempts: 0,
    })
}

/// Bounds how long an idle HTTP/1 connection is kept (Pingora keeps an
/// HTTP/1.1 connection forever unless told otherwise). A client that asked
/// to close still gets its connection closed. 0 turns keep-alive off.
fn keep_alive(s: &mut Session, snap: &Snapshot) {
    if s.get_keepalive().is_some() {
        let secs = snap.config.limits.keepalive_timeout.as_secs();
        s.set_keepalive((secs > 0).then_some(secs));
    }
}

/// Does the request announce a body? The API takes none.
fn declares_body(s: &Session) -> bool {
    let headers = &s.req_header().headers;
    api::declares_body(
        headers
            .get(header::CONTENT_LENGTH)
            .map(HeaderValue::as_bytes),
        headers.contains_key(header::TRANSFER_ENCODING),
    )
}

/// 413 without reading the body; the connection is not reused, since the
/// unread body would be taken for the next request.
fn refuse_body(s: &mut Session) -> Answer {
    s.set_keepalive(None);
    api::error(413, "request body not allowed")
}

/// Writes an answer with the headers every answer carries. Values are
/// `HeaderValue`s made once (static, or per snapshot for HSTS), and the
/// header has no case map: its names are the `http` crate's constants,
/// which Pingora writes in the same case either way.
async fn respond(s: &mut Session, ctx: &mut RequestCtx, answer: Answer, tls: bool) -> Result<()> {
    let mut h = ResponseHeader::build_no_case(answer.status, Some(answer.headers.len() + 6))?;
    h.insert_header(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    )?;
    h.insert_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    h.insert_header(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )?;
    if tls {
        if let Some(hsts) = &ctx.snap.hsts {
            h.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
    }
    for (name, value) in answer.headers {
        h.append_header(name, value)?;
    }
    // RFC 9110 §8.6: no Content-Length on 204.
    if answer.status != 204 {
        h.insert_header(header::CONTENT_LENGTH, HeaderValue::from(answer.body.len()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_failures_map_to_502_504_or_nothing() {
        use ErrorType::*;
        let up = |t: ErrorType| {
            let mut e = Error::new(t);
            e.as_up();
            site_error_status(&e)
        };
        let down = |t: ErrorType| {
            let mut e = Error::new(t);
            e.as_down();
            site_error_status(&e)
        };
        for t in [
            ConnectTimedout,
            TLSHandshakeTimedout,
            ReadTimedout,
            WriteTimedout,
        ] {
            assert_eq!(up(t.clone()), 504, "{t:?}");
        }
        for t in [
            ConnectRefused,
            ConnectNoRoute,
            InvalidCert,
            TLSHandshakeFailure,
            ReadError,
            ConnectionClosed,
            InvalidHTTPHeader,
        ] {
            assert_eq!(up(t.clone()), 502, "{t:?}");
        }
        for t in [ReadError, WriteError, ConnectionClosed] {
            assert_eq!(down(t.clone()), 0, "{t:?}");
        }
        assert_eq!(down(InvalidHTTPHeader), 400);
        assert_eq!(site_error_status(&Error::new(InternalError)), 500);
        assert_eq!(site_error_status(&Error::new(HTTPStatus(413))), 413);
        assert!(is_unreachable(&ConnectRefused));
        assert!(
            !is_unreachable(&InvalidCert),
            "a TLS mismatch is no reason to skip an upstream"
        );
    }
}
