//! The application side of a connection's defences: every accepted
//! stream is wrapped before Pingora's HTTP application sees it.
//!
//! - A connection the `accept::AcceptGate` admitted (TLS listeners) already
//!   holds its place in the connection counts; one from a plain listener
//!   takes it here, since it has no handshake to wait for.
//! - HTTP/1 request heads are held to a deadline and a size
//!   (`request_head::HeadWatch`): Pingora times each read, not the head as a
//!   whole, so a client trickling one byte just inside every read timeout
//!   could hold a connection for as long as it likes (slowloris), and it
//!   reads heads of up to 1 MiB. The first request (on HTTP/2, the client
//!   preface) is timed from the connection's start, so a client that sends
//!   nothing is closed at the same deadline.
//! - On the metrics listener, a peer outside `metrics.allow` is closed
//!   before a byte is read, and its connections count like any other.
//! - The wrapper keeps the count of open connections that lets a graceful
//!   shutdown end as soon as the last one has closed (`Registry::serving`)
//!   instead of always waiting out the grace period.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::accept;
use crate::conn::registry::{ConnectionPlace, Registry, Serving};
use crate::conn::request_head::{HeadLimits, HeadWatch, Phase};
use crate::observe::metrics::METRICS;
use crate::observe::metrics_access;
use crate::request::answer;
use crate::snapshot::{Shared, Snapshot};

/// Wraps an HTTP application (Pingora's `HttpProxy`) with the limits above.
pub struct Guarded<A> {
    inner: Arc<A>,
    shared: Shared,
    registry: Arc<Registry>,
    /// The listener terminates TLS (its answers carry HSTS).
    tls: bool,
    /// The metrics listener's bound address: its peers must be ones
    /// `metrics.allow` admits.
    metrics: Option<SocketAddr>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, shared: Shared, registry: Arc<Registry>, tls: bool) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            shared,
            registry,
            tls,
            metrics: None,
        }
    }

    /// The metrics listener, bound to `bound` (restart to change).
    pub fn metrics_listener(self, bound: SocketAddr) -> Guarded<A> {
        Guarded {
            metrics: Some(bound),
            ..self
        }
    }
}

/// Whether a peer may connect to the metrics listener at all.
fn metrics_peer_admitted(snap: &Snapshot, bound: SocketAddr, peer: Option<IpAddr>) -> bool {
    let Some(m) = &snap.config.metrics else {
        return false;
    };
    let peer = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    metrics_access::may_connect(bound.ip(), peer, &m.allow, snap.metrics_token.as_ref())
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back here for its next request,
        // already wrapped.
        let wrapped = (*stream).as_any().is::<Limited>();
        if wrapped {
            return self.inner.process_new(stream, shutdown).await;
        }
        let limited = {
            let snap = self.shared.load();
            let limits = &snap.config.limits;
            let place = self.admit(&snap, &stream)?;
            let deadline = Some(limits.request_header_timeout).filter(|d| !d.is_zero());
            // HTTP/2 frames its headers itself, with the h2 crate's bounds;
            // only its preface is watched.
            let head = match stream.selected_alpn_proto() {
                Some(ALPN::H2) => HeadWatch::h2_preface(deadline),
                _ => HeadWatch::first_request(HeadLimits {
                    deadline,
                    max_len: limits.max_request_head,
                }),
            };
            let hsts = self
                .tls
                .then(|| snap.config.tls.as_ref()?.hsts.clone())
                .flatten();
            // A drain waits for the HTTP listeners' connections, not for a
            // scraper's idle keep-alive.
            let serving = self.metrics.is_none().then(|| self.registry.serve());
            Limited {
                hsts,
                ..Limited::new(stream, place, serving, head)
            }
        };
        self.inner.process_new(Box::new(limited), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A> Guarded<A> {
    /// The connection's place in the counts (`Some(None)`: the accept gate
    /// holds it already), or `None` to close it now.
    fn admit(&self, snap: &Snapshot, stream: &Stream) -> Option<Option<ConnectionPlace>> {
        let peer = accept::peer_ip(&**stream);
        if let Some(bound) = self.metrics {
            if !metrics_peer_admitted(snap, bound, peer) {
                count_closed("not_allowed");
                return None;
            }
        }
        // Pingora's `UniqueID::id()` of a stream is its socket's raw
        // descriptor (pingora-core 0.9.1: `l4::stream`, and the TLS stream
        // asks its L4 stream), the key the accept gate registered the
        // handshake under; a descriptor is not reused while the gate's entry
        // for it lives, since the socket is open until then.
        if accept::handshake_done(stream.id()) {
            return Some(None);
        }
        accept::admit(&self.registry, snap, peer).ok().map(Some)
    }
}

/// A plain HTTP application (Pingora's `ServeHttp`: the metrics listener)
/// held to the same keep-alive bounds as the proxy: Pingora's own HTTP app
/// keeps an idle connection 60 s whatever the configuration says, and
/// never tells the head watch that a request is finished.
pub struct KeepAliveBound<A> {
    inner: A,
    shared: Shared,
}

impl<A> KeepAliveBound<A> {
    pub fn new(inner: A, shared: Shared) -> KeepAliveBound<A> {
        KeepAliveBound { inner, shared }
    }
}

#[async_trait]
impl<A: ServeHttp + Send + Sync> ServeHttp for KeepAliveBound<A> {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        if s.get_keepalive().is_some() {
            let secs = self.shared.load().config.limits.keepalive_timeout.as_secs();
            s.set_keepalive((secs > 0).then_some(secs));
        }
        let response = self.inner.response(s).await;
        finish_request(s);
        response
    }
}

/// The accepted stream with its connection place and head watch.
#[derive(Debug)]
pub struct Limited {
    inner: Stream,
    /// `None` when the accept gate holds the place.
    _place: Option<ConnectionPlace>,
    _serving: Option<Serving>,
    head: Option<HeadWatch>,
    /// `Strict-Transport-Security` for an answer written here (TLS
    /// listeners with `tls.hsts`).
    hsts: Option<HeaderValue>,
    /// Set by [`finish_request`] (the HTTP layer's side, which only has a
    /// shared reference); taken by the next read.
    request_finished: AtomicBool,
    /// Bytes of an answer written here that the stream has not taken yet;
    /// written before anything else.
    unwritten: Vec<u8>,
}

impl Limited {
    fn new(
        inner: Stream,
        place: Option<ConnectionPlace>,
        serving: Option<Serving>,
        head: HeadWatch,
    ) -> Limited {
        Limited {
            inner,
            _place: place,
            _serving: serving,
            head: Some(head),
            hsts: None,
            request_finished: AtomicBool::new(false),
            unwritten: Vec::new(),
        }
    }
}

/// Called when the HTTP layer is done with an HTTP/1 request (Pingora's
/// `logging` phase): the next byte read starts the next request's head.
/// Until then no byte read is taken for a head, even once the answer has
/// started while the body is still coming (an upstream that answers before
/// reading it). A connection that will not be kept is left alone, and so is
/// one whose body is unfinished: Pingora closes a connection it answered
/// before the body was read.
pub fn finish_request(s: &mut ServerSession) {
    let upgraded = s
        .response_written()
        .is_some_and(|r| r.status.as_u16() == 101);
    if s.get_keepalive().is_none() || upgraded || !s.is_body_done() {
        return;
    }
    let limited = s
        .stream()
        .and_then(|st| st.as_any().downcast_ref::<Limited>());
    if let Some(limited) = limited {
        limited.request_finished.store(true, Ordering::Release);
    }
}

/// Why a connection's read failed; client-caused, logged at debug.
pub const HEAD_TOO_LARGE: &str = "request head larger than limits.max_request_head";
pub const HEAD_TOO_SLOW: &str = "request head not complete within limits.request_header_timeout";

/// Bytes of a refused head read and dropped after the answer, at most.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Writes the 431 answer (`answer::head_too_large`, as nginx answers 400
/// "Request Header Or Cookie Too Large"; with HSTS on a TLS listener) if
/// the stream takes it at once (a stream that would block gets nothing;
/// the connection closes anyway), then reads and drops what the client has
/// already sent: closing a socket with unread bytes sends a reset, and a
/// reset can destroy the answer before the client reads it.
fn refuse_head(inner: &mut Stream, hsts: Option<&HeaderValue>, cx: &mut Context<'_>) {
    let refusal = answer::head_too_large().to_http1(hsts);
    let mut stream = Pin::new(inner);
    let written = matches!(
        stream.as_mut().poll_write(cx, &refusal),
        Poll::Ready(Ok(n)) if n == refusal.len()
    );
    if !written {
        return;
    }
    let _ = stream.as_mut().poll_flush(cx);
    let mut scratch = [0u8; 8192];
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        let mut buf = ReadBuf::new(&mut scratch);
        match stream.as_mut().poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => drained += buf.filled().len(),
            _ => break,
        }
    }
}

fn count_closed(reason: &str) {
    METRICS
        .closed_connections
        .with_label_values(&[reason])
        .inc();
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(head) = &mut this.head {
            if *this.request_finished.get_mut() {
                *this.request_finished.get_mut() = false;
                head.next_request();
            }
            match &result {
                Poll::Ready(Ok(())) => {
                    head.on_read(&buf.filled()[before..]);
                    if head.phase() == Phase::TooLarge {
                        count_closed("head_too_large");
                        refuse_head(&mut this.inner, this.hsts.as_ref(), cx);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            HEAD_TOO_LARGE,
                        )));
                    }
                }
                Poll::Pending if head.expired(cx) => {
                    count_closed("head_timeout");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        HEAD_TOO_SLOW,
                    )));
                }
                _ => {}
            }
        }
        result
    }
}

/// The start of what Pingora 0.9.1 writes, in one write, for an HTTP/1
/// request its parser rejects: `HttpProxy::handle_new_request` calls
/// `respond_error(400)` (`gen_error_response`: `Server: Pingora`, `Date`,
/// `Content-Length: 0`, `Cache-Control: private, no-store`) before any
/// hook of the application runs, so these bytes are the one place left to
/// answer such a request as visitord answers every other refusal.
const PINGORA_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n";
const PINGORA_400_REST: &[u8] = b"\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\n";

fn is_pingoras_400(buf: &[u8]) -> bool {
    buf.starts_with(PINGORA_400)
        && buf.ends_with(b"\r\n\r\n")
        && buf
            .windows(PINGORA_400_REST.len())
            .any(|w| w == PINGORA_400_REST)
}

impl Limited {
    /// Writes what is left of an answer written here.
    fn poll_unwritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unwritten.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.unwritten) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => drop(self.unwritten.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_unwritten(cx))?;
        if this.head.is_some() && is_pingoras_400(buf) {
            // Pingora's bytes count as written; ours go out in their place.
            this.unwritten = answer::unparsable_request().to_http1(this.hsts.as_ref());
            return match this.poll_unwritten(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_unwritten(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unwritten(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_unwritten(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Limited {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_unwritten(cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for Limited {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Limited {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Limited {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Limited {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Limited {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Limited {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
