//! The Pingora layer: the `ProxyHttp` phases, each a few lines. A request
//! is read once into `RequestFacts`, routed, and either answered here
//! (`respond` writes the `Answer` the pure modules return) or handed to the
//! proxy phases with what `request::site` decided. What was decided (the
//! verdict) is recorded once, in `logging`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::certs::acme;
use crate::config::ListenerKind;
use crate::conn::registry::{ConnectionPlace, Registry};
use crate::conn::{accept, connection};
use crate::limits::Limiter;
use crate::observe::metrics::{RouteLabel, METRICS};
use crate::observe::verdict::Verdict;
use crate::request::answer::{self, Answer};
use crate::request::api;
use crate::request::forward;
use crate::request::route::{self, Method, RequestFacts, Route};
use crate::request::site::{self, SiteDecision, SiteRequest};
use crate::snapshot::{Shared, Snapshot};

/// The request handler; one per listener role.
pub struct Visitord {
    shared: Shared,
    role: ListenerKind,
    limiter: Arc<Limiter>,
    /// The connection counts: a proxied request holds an upstream
    /// connection, counted against its client's caps like a connection.
    registry: Arc<Registry>,
}

impl Visitord {
    pub fn new(
        shared: Shared,
        role: ListenerKind,
        limiter: Arc<Limiter>,
        registry: Arc<Registry>,
    ) -> Visitord {
        Visitord {
            shared,
            role,
            limiter,
            registry,
        }
    }
}

/// Per-request state: the snapshot the whole request uses, where it was
/// routed, and what the `logging` phase counts.
pub struct RequestCtx {
    snap: Arc<Snapshot>,
    started: Instant,
    /// `None` until routed (a request Pingora failed before that).
    route: Option<Route>,
    /// The status sent (0: none), and what was decided.
    status: u16,
    verdict: Verdict,
    /// Set when the request is proxied to a site.
    site: Option<SiteCtx>,
}

/// A site request on its way to an upstream.
struct SiteCtx {
    request: Box<SiteRequest>,
    /// The upstream of the current attempt.
    upstream: Option<usize>,
    attempts: usize,
    /// The upstream connection's place in the client's counts: HTTP/2
    /// multiplexes up to 100 of them over one client connection.
    _place: ConnectionPlace,
}

#[async_trait]
impl ProxyHttp for Visitord {
    type CTX = RequestCtx;

    /// No downstream modules: visitord compresses nothing, and Pingora's
    /// default sets up a (disabled) compression module for every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: self.shared.load_full(),
            started: Instant::now(),
            route: None,
            status: 0,
            verdict: Verdict::default(),
            site: None,
        }
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        keep_alive(s, &ctx.snap);
        // A client that stops taking the answer (an HTTP/2 window left at
        // zero) loses the stream, and the upstream connection is released.
        s.set_write_timeout(ctx.snap.config.limits.send_timeout);
        // RFC 9112 §9.3.2: pipelined requests are answered in order (Pingora
        // closes the connection and drops them otherwise). Not for an
        // upgrade: the bytes after it belong to the new protocol.
        if !s.is_upgrade_req() {
            s.set_pipelining_enabled(true);
        }
        let snap = &ctx.snap;
        let facts = RequestFacts::read(s.req_header(), peer_ip(s), self.role, snap);
        let route = route::route(snap, &facts);
        ctx.route = Some(route);
        let head = facts.method == Method::Head;
        let answer = match route {
            Route::Health | Route::Ready => answer::health(),
            Route::Redirect { https_port } => {
                answer::redirect(facts.valid_host(), https_port, facts.path_and_query)
            }
            Route::AcmeChallenge => acme_challenge(snap, facts.path).await,
            Route::Api => api::answer(snap, &facts, &self.limiter),
            Route::NotFound => answer::not_found(),
            Route::InvalidHost => answer::invalid_host("invalid Host header"),
            Route::HeadTooLarge => answer::head_too_large(),
            Route::SiteApi(i) => api::same_origin(snap, &facts, i, &self.limiter),
            Route::Jwks => api::jwks(snap, &facts, &self.limiter),
            Route::Site(i) => match site::decide(snap, &facts, i) {
                SiteDecision::Answer(answer) => answer,
                SiteDecision::Proxy(request) => match self.site_ctx(snap, peer_ip(s), request) {
                    Ok(site) => {
                        body_timeout(s, snap);
                        ctx.site = Some(site);
                        return Ok(false);
                    }
                    Err(refused) => refused,
                },
            },
        };
        respond(s, ctx, answer, head, self.role).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Only site requests get here; every other route is answered in
        // request_filter.
        let Some(r) = ctx.site.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for this request");
        };
        let index = r.request.index;
        let picked = ctx.snap.sites.get(index).and_then(|site| site.pick());
        let peer = picked.and_then(|u| ctx.snap.peers.get(index, u));
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
        match ctx.site.as_ref().map(|r| &r.request) {
            Some(r) if r.preserve_header_case => set_headers_keeping_case(up, r),
            Some(r) => set_headers(up, r),
            None => Ok(()),
        }
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
        let Some((site, u)) = ctx.snap.sites.get(r.request.index).zip(r.upstream) else {
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
        // Once an answer's head went out (a client that reset its HTTP/2
        // stream mid-answer), a second one cannot follow: Pingora would
        // only log a warning for each attempt.
        if code > 0 && s.response_written().is_none() {
            let head = s.req_header().method == http::Method::HEAD;
            // Best effort: the client may already be gone.
            let _ = respond(
                s,
                ctx,
                answer::error(code, reason_phrase(code)),
                head,
                self.role,
            )
            .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Site failures are logged once, by `fail_site`, without the request
    /// summary Pingora would add; a client that went away or broke the
    /// protocol is the client's doing, logged at debug.
    fn suppress_error_log(&self, _s: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        if is_client_caused(e) {
            log::debug!("request ended by the client: {}", e.etype().as_str());
            return true;
        }
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

    async fn logging(&self, s: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        record(ctx);
        connection::finish_request(&mut s.downstream_session);
    }
}

/// Records a finished request once: its verdict, its route and status, its
/// project's usage (API requests) or its site's count.
fn record(ctx: &RequestCtx) {
    let snap = &ctx.snap;
    let v = &ctx.verdict;
    v.count();
    let project = v
        .project
        .and_then(|i| Some((i, snap.projects.at(i)?.id.as_str())));
    let route = ctx.route.map_or(RouteLabel::Unknown, Route::label);
    let seconds = ctx.started.elapsed().as_secs_f64();
    snap.recorders
        .requests
        .observe(route, ctx.status, project, seconds);
    match ctx.route {
        Some(Route::Api) => snap.recorders.usage.record(ctx.started, ctx.status, v),
        Some(Route::Site(i)) => snap.recorders.sites.observe(i, ctx.status),
        _ => {}
    }
}

impl Visitord {
    /// A site request on its way: it holds its upstream connection's place
    /// in the client's counts, or is refused with 429 over a cap.
    fn site_ctx(
        &self,
        snap: &Snapshot,
        peer: IpAddr,
        request: Box<SiteRequest>,
    ) -> std::result::Result<SiteCtx, Answer> {
        let place = accept::place_for(&self.registry, snap, Some(peer))
            .map_err(answer::too_many_requests)?;
        Ok(SiteCtx {
            request,
            upstream: None,
            attempts: 0,
            _place: place,
        })
    }

    /// A site request failed: a small page instead of Pingora's, 502 or
    /// 504 for the upstream's failures, and one warning that names the
    /// site and upstream (never the client).
    async fn fail_site(&self, s: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = site_error_status(e);
        if code == 408 {
            // The client's doing, not the upstream's: Pingora dropped the
            // upstream connection with the request.
            METRICS
                .closed_connections
                .with_label_values(&["body_timeout"])
                .inc();
            log::debug!("site request closed: {BODY_TOO_SLOW}");
        } else if *e.esource() == ErrorSource::Upstream {
            let upstream = ctx.site.as_ref().and_then(|r| {
                let site = ctx.snap.sites.get(r.request.index)?;
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
            let head = s.req_header().method == http::Method::HEAD;
            // Best effort: the client may already be gone.
            let _ = respond(s, ctx, answer::error_page(code), head, self.role).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// Why a site request was closed when its body stopped arriving.
const BODY_TOO_SLOW: &str = "request body paused longer than limits.request_body_timeout";

/// A site request's body must keep arriving: each read of it within
/// `limits.request_body_timeout` (Pingora's default is 60 s, as long as an
/// upstream's default `read_timeout`, so a client that stopped sending its
/// body held an upstream connection a minute and was logged as the
/// upstream's timeout). HTTP/1 only: Pingora has no read timeout for an
/// HTTP/2 stream, whose body waits at most the site's `read_timeout`.
fn body_timeout(s: &mut Session, snap: &Snapshot) {
    let timeout = snap.config.limits.request_body_timeout;
    if !timeout.is_zero() && !s.is_body_done() {
        s.set_read_timeout(Some(timeout));
    }
}

/// The status for a failed site request; 0 when the client went away.
fn site_error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        // Only a request body is read with a timeout from the client.
        (ReadTimedout, ErrorSource::Downstream) => 408,
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

/// Failures on the client's side of the connection: it closed or reset
/// it, stopped reading, or sent what is not HTTP.
fn is_client_caused(e: &Error) -> bool {
    use ErrorType::*;
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ReadError
                | WriteError
                | ConnectionClosed
                | ReadTimedout
                | WriteTimedout
                | H2Error
                | InvalidH2
                | InvalidHTTPHeader
        )
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

/// Bounds how long an idle HTTP/1 connection is kept (Pingora keeps an
/// HTTP/1.1 connection forever unless told otherwise). A client that asked
/// to close still gets its connection closed. 0 turns keep-alive off.
fn keep_alive(s: &mut Session, snap: &Snapshot) {
    if s.get_keepalive().is_some() {
        let secs = snap.config.limits.keepalive_timeout.as_secs();
        s.set_keepalive((secs > 0).then_some(secs));
    }
}

/// Writes an answer with the headers every answer carries
/// (`Answer::all_headers`). Values are `HeaderValue`s made once (static, or
/// at config load for HSTS), and the header has no case map: its names are
/// the `http` crate's constants, which Pingora writes in the same case
/// either way.
async fn respond(
    s: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer,
    head: bool,
    role: ListenerKind,
) -> Result<()> {
    let hsts = match role {
        ListenerKind::Tls => ctx.snap.config.tls.as_ref().and_then(|t| t.hsts.as_ref()),
        ListenerKind::Redirect { .. } => None,
    };
    let mut h = ResponseHeader::build_no_case(answer.status, Some(answer.headers.len() + 6))?;
    for (name, value) in answer.all_headers(hsts) {
        h.append_header(name, value)?;
    }
    if answer.close {
        s.set_keepalive(None);
    }
    ctx.status = answer.status;
    ctx.verdict = answer.verdict;
    let no_body = answer.body.is_empty() || head;
    s.write_response_header(Box::new(h), no_body).await?;
    if !no_body {
        s.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

/// Reads the key authorization for an HTTP-01 token from `acme.state_dir`
/// (any node of a fleet answers for the one that ordered) off the worker
/// thread: the folder may be a network file system.
async fn acme_challenge(snap: &Snapshot, path: &str) -> Answer {
    let file = acme::challenge::http01_token(path)
        .zip(snap.acme.as_ref())
        .and_then(|(token, plan)| plan.store.http01_file(token));
    let body = match file {
        Some(file) => tokio::fs::read(file).await.ok(),
        None => None,
    };
    answer::acme_challenge(body)
}

/// A site request's upstream headers (`forward`): exactly one value of
/// each header visitord sets reaches the upstream, ours. The request is
/// rebuilt without Pingora's header-case map, so every name goes out
/// lower-case (well-known ones title-cased by Pingora) and each header is
/// one insert into one map, with a name made once; through Pingora's header
/// API each is a parse of the name, an allocation and two inserts
/// (docs/performance.md, "The third round").
fn set_headers(up: &mut RequestHeader, r: &SiteRequest) -> Result<()> {
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let old = std::mem::replace(up, empty);
    // The new request's target comes from its URI; an absolute-form one
    // (kept verbatim by Pingora) is set again.
    let verbatim = (old.raw_path() != uri_target(&old.uri)).then(|| old.raw_path().to_vec());
    let end_stream = old.send_end_stream();
    let mut parts = http::request::Parts::from(old);
    for name in stripped(&parts.headers, r) {
        parts.headers.remove(name);
    }
    // One growth of the map for all of ours, not one per doubling.
    parts.headers.reserve(forward::set_headers(r).count());
    for (name, value) in forward::set_headers(r) {
        parts.headers.insert(name.clone(), value.clone());
    }
    *up = RequestHeader::from(parts);
    if let Some(target) = verbatim {
        up.set_raw_path(&target)?;
    }
    if let Some(end_stream) = end_stream {
        up.set_send_end_stream(end_stream);
    }
    Ok(())
}

/// `set_headers` for a site with `preserve_header_case`: the client's
/// names keep their case through Pingora's header API.
fn set_headers_keeping_case(up: &mut RequestHeader, r: &SiteRequest) -> Result<()> {
    for name in stripped(&up.headers, r) {
        up.remove_header(&name);
    }
    for (name, value) in forward::set_headers(r) {
        up.insert_header(name.as_str(), value.clone())?;
    }
    Ok(())
}

/// The client's headers a site request must lose (`forward::strips`),
/// collected so the map can be changed while they are removed.
fn stripped(headers: &http::HeaderMap, r: &SiteRequest) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|n| forward::strips(n.as_str(), r))
        .cloned()
        .collect()
}

/// The target a request rebuilt from its URI alone would have (Pingora's
/// `raw_path` when it kept no verbatim copy).
fn uri_target(uri: &http::Uri) -> &[u8] {
    uri.path_and_query()
        .map(|p| p.as_str().as_bytes())
        .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default()
}

fn peer_ip(s: &Session) -> IpAddr {
    s.client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn reason_phrase(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("error")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use http::HeaderValue;

    fn site_request(preserve_header_case: bool) -> SiteRequest {
        let mut visitor: [Option<HeaderValue>; crate::config::VisitorHeader::COUNT] =
            Default::default();
        visitor[0] = Some(HeaderValue::from_static("GB"));
        SiteRequest {
            index: 0,
            visitor,
            forwarded_for: HeaderValue::from_static("81.2.69.142, 127.0.0.1"),
            peer_trusted: true,
            forwarded_host: Some(HeaderValue::from_static("shop.example.com")),
            real_ip: HeaderValue::from_static("81.2.69.142"),
            pass_underscore_headers: false,
            preserve_header_case,
        }
    }

    /// What Pingora would write to the upstream for `target`, after the
    /// site's headers are set.
    fn upstream_head(target: &[u8], preserve_header_case: bool) -> String {
        let mut up = RequestHeader::build("GET", target, None).unwrap();
        up.insert_header("Host", "shop.example.com").unwrap();
        up.insert_header("X-Custom-Thing", "1").unwrap();
        up.insert_header("X-Forwarded-For", "6.6.6.6").unwrap();
        up.insert_header("X-Visitor-Country", "ZZ").unwrap();
        let r = site_request(preserve_header_case);
        if preserve_header_case {
            set_headers_keeping_case(&mut up, &r).unwrap();
        } else {
            set_headers(&mut up, &r).unwrap();
        }
        let mut wire = format!("{}\r\n", String::from_utf8_lossy(up.raw_path()));
        let mut buf = bytes::BytesMut::new();
        up.header_to_h1_wire(&mut buf);
        wire.push_str(&String::from_utf8_lossy(&buf));
        wire
    }

    #[test]
    fn upstream_headers_are_set_once_with_or_without_case() {
        for keep in [false, true] {
            let head = upstream_head(b"/a?b=1", keep);
            assert!(head.starts_with("/a?b=1\r\n"), "{head}");
            for line in [
                "Host: shop.example.com",
                "x-visitor-country: GB",
                "x-forwarded-for: 81.2.69.142, 127.0.0.1",
                "x-real-ip: 81.2.69.142",
                "x-forwarded-proto: https",
                "x-forwarded-host: shop.example.com",
            ] {
                assert_eq!(head.matches(line).count(), 1, "{line} in {head}");
            }
            assert!(!head.contains("6.6.6.6") && !head.contains("ZZ"), "{head}");
            let custom = if keep {
                "X-Custom-Thing: 1"
            } else {
                "x-custom-thing: 1"
            };
            assert!(head.contains(custom), "{head}");
        }
    }

    #[test]
    fn a_verbatim_target_survives_the_rebuild() {
        let head = upstream_head(b"http://shop.example.com/a?b=1", false);
        assert!(
            head.starts_with("http://shop.example.com/a?b=1\r\n"),
            "{head}"
        );
    }

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
        let client = |t: ErrorType| {
            let mut e = Error::new(t);
            e.as_down();
            is_client_caused(&e)
        };
        assert!(client(WriteError) && client(ConnectionClosed) && client(H2Error));
        assert!(!client(InternalError));
        let mut upstream = Error::new(ReadError);
        upstream.as_up();
        assert!(
            !is_client_caused(&upstream),
            "an upstream's failure is ours to report"
        );
        assert!(
            !is_unreachable(&InvalidCert),
            "a TLS mismatch is no reason to skip an upstream"
        );
    }
}
