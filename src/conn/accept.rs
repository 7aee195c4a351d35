//! What happens to a TLS connection between `accept` and the end of its
//! handshake, where Pingora has no limits of its own.
//!
//! Pingora hands the application a connection only once its TLS handshake
//! is done, and gives a handshake 60 seconds. Counting connections in the
//! application therefore misses every connection still handshaking: an
//! attacker that opens connections and sends nothing holds a file
//! descriptor each for a minute, uncounted, until the process runs out
//! (issue "[hardening-2]" item 1). So the [`AcceptGate`], Pingora's
//! pre-TLS hook, runs right after accept, before the PROXY protocol header
//! and the handshake:
//!
//! - it takes the connection's place in the counts (`limits.max_connections`
//!   in all, `limits.max_connections_per_ip` per client network), or closes
//!   it at once; on a PROXY protocol listener the TCP peer holds that place
//!   until the header names the client, whose place it then becomes;
//! - it parks that place in the accepted stream's `tracer` slot, the one
//!   per-connection value Pingora's L4 stream carries and drops when the
//!   socket closes, so the place is released however the connection ends:
//!   a failed or timed-out handshake, or the end of a served connection;
//! - it starts a watchdog that shuts the socket down if the handshake is
//!   not done within `limits.tls_handshake_timeout` of accept;
//! - it answers an ACME CA's TLS-ALPN-01 handshake itself
//!   (`acme_service::TlsAlpnResponder`), which Pingora's TLS settings cannot.
//!
//! The application wrapper (`connection::Guarded`) tells the gate when a
//! handshake is done ([`handshake_done`]), keyed by the socket's descriptor,
//! which is unique among open sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::upstreams::peer::{Tracer, Tracing};
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncReadExt;

use crate::conn::proxy_protocol::{self, Parsed, ProxyHeader};
use crate::conn::registry::{ConnectionPlace, Registry};
use crate::limits::{Refusal, CONNECTION_REFUSED};
use crate::observe::metrics::METRICS;
use crate::services::acme::TlsAlpnResponder;
use crate::snapshot::{Shared, Snapshot};

/// How long a connection on a PROXY protocol listener may take to send its
/// header. Balancers send it with the first packet.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The pre-TLS hook of every TLS listener.
pub struct AcceptGate {
    shared: Shared,
    registry: Arc<Registry>,
    /// The listener's connections start with a PROXY protocol header.
    proxy_protocol: bool,
    /// Answers an ACME CA's TLS-ALPN-01 handshake (nothing unless that
    /// challenge is configured).
    acme: TlsAlpnResponder,
}

impl AcceptGate {
    pub fn new(shared: Shared, registry: Arc<Registry>, proxy_protocol: bool) -> AcceptGate {
        AcceptGate {
            acme: TlsAlpnResponder::new(Arc::clone(&shared)),
            shared,
            registry,
            proxy_protocol,
        }
    }
}

#[async_trait]
impl PreTlsProcess for AcceptGate {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let snap = self.shared.load_full();
        let limits = &snap.config.limits;
        // The handshake deadline runs from accept, the PROXY header included.
        let deadline = tokio::time::Instant::now() + limits.tls_handshake_timeout;
        let fd = stream.as_raw_fd();
        // The TCP peer holds a place from accept: on a PROXY protocol
        // listener that is whoever connected, until its header names the
        // client (a trusted balancer is exempt from the per-client cap).
        let mut place = admit(&self.registry, &snap, peer_ip(stream))?;
        if self.proxy_protocol {
            read_proxy_header(stream, fd, deadline).await?;
            drop(place);
            place = admit(&self.registry, &snap, peer_ip(stream))?;
        }
        let held = Arc::new(Held {
            fd,
            state: Mutex::new(State::Handshaking),
            _place: place,
        });
        register(fd, &held);
        stream.tracer = Some(Tracer(Box::new(Holder(Some(Arc::clone(&held))))));
        let watched = Arc::downgrade(&held);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            expire(&watched);
        });
        self.acme.answer(stream).await
    }
}

/// Takes a place for a connection from `peer` (`None`: not known yet; only
/// the server cap applies), or says why not and counts the refusal.
pub fn admit(
    registry: &Registry,
    snap: &Snapshot,
    peer: Option<IpAddr>,
) -> Result<ConnectionPlace> {
    place_for(registry, snap, peer).or_else(|refusal: Refusal| {
        METRICS
            .rate_limited
            .with_label_values(&[refusal.exceeded.as_label()])
            .inc();
        Error::e_explain(ErrorType::ConnectRefused, CONNECTION_REFUSED)
    })
}

/// A place in the connection counts for `peer`, against the caps of
/// `snap`: a connection's, or an upstream connection's held for a client.
pub fn place_for(
    registry: &Registry,
    snap: &Snapshot,
    peer: Option<IpAddr>,
) -> std::result::Result<ConnectionPlace, Refusal> {
    let limits = &snap.config.limits;
    // A trusted proxy multiplexes many clients; only the server cap applies.
    let client = peer
        .filter(|&ip| !snap.config.client_ip.trusted_proxies.contains(ip))
        .map(|ip| limits.client_prefixes.key(ip));
    registry.open(
        client,
        limits.max_connections_per_ip,
        limits.max_connections,
    )
}

/// The peer of an accepted stream.
pub fn peer_ip<S: GetSocketDigest + ?Sized>(stream: &S) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

/// A connection admitted by the gate: its place in the counts, and where
/// its handshake is.
#[derive(Debug)]
struct Held {
    fd: RawFd,
    state: Mutex<State>,
    _place: ConnectionPlace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Serving,
    /// The stream is being dropped: its descriptor is about to be closed
    /// and may then be reused by another connection.
    Closed,
}

impl Held {
    fn set(&self, state: State) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// What the stream's `tracer` slot holds: the connection's place, dropped
/// with the stream. Pingora calls `on_disconnected` first thing in the
/// stream's `Drop`, before the descriptor is closed.
#[derive(Debug)]
struct Holder(Option<Arc<Held>>);

impl Tracing for Holder {
    fn on_connected(&self) {}

    fn on_disconnected(&self) {
        if let Some(held) = &self.0 {
            held.set(State::Closed);
        }
    }

    /// A copy holds no place: the place belongs to the one stream.
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Holder(None))
    }
}

/// Handshakes under way, by socket descriptor.
static HANDSHAKING: LazyLock<Mutex<HashMap<RawFd, Weak<Held>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn handshaking() -> std::sync::MutexGuard<'static, HashMap<RawFd, Weak<Held>>> {
    HANDSHAKING.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(fd: RawFd, held: &Arc<Held>) {
    handshaking().insert(fd, Arc::downgrade(held));
}

/// Called once per connection when the application receives it: whether
/// the gate admitted it (its place is then already held) — the handshake
/// is done.
pub fn handshake_done(fd: RawFd) -> bool {
    let held = handshaking().remove(&fd).and_then(|weak| weak.upgrade());
    match held {
        Some(held) => {
            held.set(State::Serving);
            true
        }
        None => false,
    }
}

/// The handshake deadline passed: a connection still handshaking has its
/// socket shut down, which ends the handshake with an error.
fn expire(watched: &Weak<Held>) {
    let Some(held) = watched.upgrade() else {
        return;
    };
    {
        let mut registry = handshaking();
        if registry
            .get(&held.fd)
            .is_some_and(|w| Weak::ptr_eq(w, watched))
        {
            registry.remove(&held.fd);
        }
    }
    // The lock is held while the socket is shut down, so the stream cannot
    // close the descriptor (and another connection take it) in between.
    let state = held.state.lock().unwrap_or_else(PoisonError::into_inner);
    if *state == State::Handshaking {
        let _ = nix::sys::socket::shutdown(held.fd, nix::sys::socket::Shutdown::Both);
        METRICS
            .closed_connections
            .with_label_values(&["handshake_timeout"])
            .inc();
    }
}

/// Reads the PROXY protocol header and makes its source address the
/// connection's peer address, so `Session::client_addr` (hence the API,
/// `X-Forwarded-For` and the trusted-proxy rules) sees the client the
/// balancer accepted. A connection without a valid header, or whose header
/// has not arrived by `deadline` (the handshake's) or within
/// [`PROXY_HEADER_TIMEOUT`], is closed (the error ends the handshake).
async fn read_proxy_header(
    stream: &mut L4Stream,
    fd: RawFd,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let limit = deadline.min(tokio::time::Instant::now() + PROXY_HEADER_TIMEOUT);
    let header = tokio::time::timeout_at(limit, read_header(stream))
        .await
        .or_else(|_| {
            Error::e_explain(
                ErrorType::ReadTimedout,
                "waiting for the PROXY protocol header",
            )
        })??;
    if let Some(source) = header.source {
        // The digest made at accept has its peer address set once; a fresh
        // one over the same socket carries the client instead (the local
        // address is still read from the socket).
        let digest = SocketDigest::from_raw_fd(fd);
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
        stream.set_socket_digest(digest);
    }
    Ok(())
}

/// Reads exactly the header: bytes read past it (the ClientHello) are put
/// back for the TLS handshake.
async fn read_header(stream: &mut L4Stream) -> Result<ProxyHeader> {
    let mut buf = vec![0u8; proxy_protocol::V2_MAX_LEN];
    let mut filled = 0;
    loop {
        match proxy_protocol::parse(&buf[..filled]) {
            Ok(Parsed::Complete(header)) => {
                stream.rewind(&buf[header.len..filled]);
                return Ok(header);
            }
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Error::e_explain(ErrorType::new("ProxyProtocolError"), e.to_string()),
        }
        // `parse` refuses a header longer than the buffer before it fills.
        if filled == buf.len() {
            return Error::e_explain(ErrorType::new("ProxyProtocolError"), "header too long");
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .or_else(|e| Error::e_because(ErrorType::ReadError, "PROXY protocol header", e))?;
        if n == 0 {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "closed before the PROXY protocol header ended",
            );
        }
        filled += n;
    }
}
