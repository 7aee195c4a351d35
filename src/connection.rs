//! Per-connection defences that Pingora 0.9 does not have: a cap on
//! concurrent connections per peer address, and a deadline for a whole
//! HTTP/1 request head.
//!
//! Pingora times out each read, not the head as a whole, so a client that
//! trickles one byte just inside every read timeout can hold a connection
//! for as long as it likes (slowloris). And `connection_filter` sees a
//! connection arrive but not leave, so it cannot count open connections.
//! Both are done here by wrapping the accepted, TLS-decrypted stream before
//! the HTTP application sees it: the wrapper holds the connection's place in
//! the per-peer count until it is dropped, and watches the bytes read for
//! the blank line that ends a request head.
//!
//! The same wrapper keeps the count of open connections that lets a
//! graceful shutdown end as soon as the last one has closed
//! ([`open_connections`]) instead of always waiting out the grace period.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use pingora_limits::inflight::Guard;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::limits::Limiter;
use crate::metrics::METRICS;
use crate::snapshot::Shared;

/// Wraps an HTTP application (Pingora's `HttpProxy`) with the limits above.
pub struct Guarded<A> {
    inner: Arc<A>,
    shared: Shared,
    limiter: Arc<Limiter>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, shared: Shared, limiter: Arc<Limiter>) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            shared,
            limiter,
        }
    }
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
            let peer = peer_ip(&stream).map(|ip| ip.to_canonical());
            let trusted = &snap.config.client_ip.trusted_proxies;
            // A trusted proxy multiplexes many clients; it is not capped.
            let guard = match peer.filter(|&ip| !trusted.contains(ip)) {
                Some(ip) => match self
                    .limiter
                    .open_connection(ip, limits.max_connections_per_ip)
                {
                    Ok(guard) => guard,
                    Err(refusal) => {
                        METRICS
                            .rate_limited
                            .with_label_values(&[refusal.exceeded.as_label()])
                            .inc();
                        return None;
                    }
                },
                None => None,
            };
            // HTTP/2 frames its headers itself, with the h2 crate's bounds.
            let h1 = stream.selected_alpn_proto() != Some(ALPN::H2);
            let deadline = Some(limits.request_header_timeout).filter(|d| h1 && !d.is_zero());
            Limited::new(stream, guard, deadline)
        };
        self.inner.process_new(Box::new(limited), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

/// Connections accepted on the HTTP listeners and not yet closed.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How many connections are open on the HTTP listeners (TLS and redirect;
/// not the metrics listener), counted from when the application gets them
/// (after the TLS handshake) until they close.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Acquire)
}

/// One place in [`OPEN`], held for a connection's life.
#[derive(Debug)]
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        OPEN.fetch_add(1, Ordering::AcqRel);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The accepted stream with its connection guard and head clock.
#[derive(Debug)]
pub struct Limited {
    inner: Stream,
    _place: Option<GuardSlot>,
    _open: OpenConnection,
    head: Option<HeadClock>,
}

/// `Guard` is not `Debug`; this only holds it.
struct GuardSlot(#[allow(dead_code)] Guard);

impl std::fmt::Debug for GuardSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardSlot")
    }
}

impl Limited {
    fn new(inner: Stream, guard: Option<Guard>, deadline: Option<Duration>) -> Limited {
        Limited {
            inner,
            _place: guard.map(GuardSlot),
            _open: OpenConnection::new(),
            head: deadline.map(HeadClock::new),
        }
    }
}

/// Tracks where the connection is in the request/response cycle from the
/// bytes that pass: a head starts with the first byte read after a response
/// (or at connection start) and ends at the blank line.
#[derive(Debug)]
struct HeadClock {
    limit: Duration,
    phase: Phase,
    /// Taken at the head's first wait for bytes, not at its first byte: a
    /// head that arrives in one read (nearly all) never reads the clock, and
    /// the first wait follows the first partial read within microseconds.
    started: Option<Instant>,
    /// Armed lazily: most heads arrive in one read and never need a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    newlines: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: waiting is Pingora's keep-alive timeout's business.
    Idle,
    /// Inside a request head: it must be complete by `started + limit`.
    Head,
    /// Head complete; the body and the response are not ours to time.
    Done,
}

impl HeadClock {
    fn new(limit: Duration) -> HeadClock {
        HeadClock {
            limit,
            phase: Phase::Idle,
            started: None,
            sleep: None,
            armed: false,
            newlines: 0,
        }
    }

    /// Watches the bytes read for the empty line that ends the head:
    /// "\r\n\r\n", or "\n\n" from lenient clients. `newlines` counts the
    /// line ends seen with nothing but `\r` between them, across reads.
    fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Done => return,
            Phase::Idle if !bytes.is_empty() => {
                self.phase = Phase::Head;
                self.started = None;
                self.armed = false;
                self.newlines = 0;
            }
            Phase::Idle | Phase::Head => {}
        }
        let mut rest = bytes;
        loop {
            if self.newlines > 0 {
                // Just after a line end: only `\r`s may come before the next.
                let Some(at) = rest.iter().position(|&b| b != b'\r') else {
                    return;
                };
                if rest[at] == b'\n' {
                    self.phase = Phase::Done;
                    return;
                }
                self.newlines = 0;
                rest = &rest[at..];
            }
            // Jumping from line end to line end is what keeps this cheap:
            // the head is read once by Pingora's parser already.
            match memchr::memchr(b'\n', rest) {
                Some(at) => {
                    self.newlines = 1;
                    rest = &rest[at + 1..];
                }
                None => return,
            }
        }
    }

    /// A response (not an interim `1xx`) went out: the next byte read
    /// starts a new head.
    fn on_write(&mut self, bytes: &[u8]) {
        let interim = bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1");
        if !bytes.is_empty() && !interim {
            self.phase = Phase::Idle;
        }
    }

    /// While a head is incomplete and the read is pending: has the deadline
    /// passed? Registers the timer with the task so that it wakes.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.phase != Phase::Head {
            return false;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let deadline = tokio::time::Instant::from_std(started + self.limit);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
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
        if let Some(clock) = &mut this.head {
            match &result {
                Poll::Ready(Ok(())) => clock.on_read(&buf.filled()[before..]),
                Poll::Pending if clock.expired(cx) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within limits.request_header_timeout",
                    )));
                }
                _ => {}
            }
        }
        result
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Some(clock), Poll::Ready(Ok(n))) = (&mut this.head, &result) {
            clock.on_write(&buf[..*n]);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Some(clock), Poll::Ready(Ok(n))) = (&mut this.head, &result) {
            if *n > 0 {
                if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                    clock.on_write(&first[..(*n).min(first.len())]);
                }
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Limited {
    async fn shutdown(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_at_the_blank_line() {
        let mut c = HeadClock::new(Duration::from_secs(1));
        assert_eq!(c.phase, Phase::Idle);
        c.on_read(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"\r");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"\n");
        assert_eq!(c.phase, Phase::Done);
        // Body bytes do not start a new head.
        c.on_read(b"\r\n\r\nabc");
        assert_eq!(c.phase, Phase::Done);
        // A response ends the cycle; the next byte starts a new head.
        c.on_write(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(c.phase, Phase::Idle);
        c.on_read(b"G");
        assert_eq!(c.phase, Phase::Head);
        c.on_read(b"ET / HTTP/1.1\n\n");
        assert_eq!(c.phase, Phase::Done);
    }

    #[test]
    fn interim_responses_do_not_end_the_cycle() {
        let mut c = HeadClock::new(Duration::from_secs(1));
        c.on_read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        c.on_write(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(c.phase, Phase::Done);
        c.on_read(b"body bytes without a blank line");
        assert_eq!(c.phase, Phase::Done);
    }

    #[test]
    fn a_line_of_text_does_not_end_the_head() {
        let mut c = HeadClock::new(Duration::from_secs(1));
        c.on_read(b"GET / HTTP/1.1\r\nX: 1\r\nY: 2\r\n");
        assert_eq!(c.phase, Phase::Head);
    }

    /// The byte-at-a-time rule `on_read` implements, as a reference.
    fn reference_done(chunks: &[&[u8]]) -> bool {
        let mut newlines = 0;
        for &b in chunks.iter().flat_map(|c| c.iter()) {
            match b {
                b'\n' => {
                    newlines += 1;
                    if newlines == 2 {
                        return true;
                    }
                }
                b'\r' => {}
                _ => newlines = 0,
            }
        }
        false
    }

    #[test]
    fn jumping_between_line_ends_agrees_with_the_byte_rule() {
        let alphabet = [b'\r', b'\n', b'a', b' ', b':'];
        let mut seed: u32 = 12345;
        let mut next = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            seed >> 16
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect();
            // The same bytes split into reads at random points.
            let mut cuts: Vec<usize> = (0..(next() % 4))
                .map(|_| next() as usize % (len + 1))
                .collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([len]) {
                chunks.push(&text[from..cut]);
                from = cut;
            }
            let mut c = HeadClock::new(Duration::from_secs(1));
            for chunk in &chunks {
                c.on_read(chunk);
            }
            let done = c.phase == Phase::Done;
            assert_eq!(
                done,
                reference_done(&chunks),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[tokio::test]
    async fn an_unfinished_head_expires() {
        let mut c = HeadClock::new(Duration::from_millis(30));
        c.on_read(b"GET / HTTP/1.1\r\n");
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!c.expired(&mut cx));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.expired(&mut cx));
        // Once complete, it never expires.
        c.on_read(b"\r\n");
        assert!(!c.expired(&mut cx));
    }

    fn futures_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
