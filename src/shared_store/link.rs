//! The connection to the store, opened by visitord and read through a byte
//! budget.
//!
//! redis-rs reads every reply whole, whatever length it announces: a
//! hostile or intercepted store answering a `PING` with a 512 MB bulk
//! string took RSS from 58 MB to 1.6 GB, and a 32 MB array of `:1` cost
//! ~590 MB (issue "[hardening-3]"). visitord never needs more than a few
//! KiB back (one small integer per project), and redis-rs offers no limit
//! and no hook into the connection it opens. So visitord opens the stream
//! itself (TCP, TLS with rustls, or a Unix socket), lets redis-rs speak the
//! protocol over it (`AUTH`, `SELECT`, pipelines, replies), and wraps it in
//! [`Bounded`]: before each exchange the caller sets how many bytes the
//! answer may take; a store that sends more gets a read error, which ends
//! the connection and counts as the store being down (limits fail open,
//! as for any outage). Reading the protocol ourselves would mean a second
//! RESP parser to keep right; the budget leaves that to the library.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use redis::ConnectionAddr;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the store may still send: bytes, shared by the connection's reader
/// and the exchange that sets it.
#[derive(Clone, Default)]
pub(super) struct Budget(Arc<Left>);

#[derive(Default)]
struct Left {
    bytes: AtomicUsize,
    /// Set once the store sent more: the connection is done for.
    over: AtomicBool,
}

impl Budget {
    /// Allows `bytes` more bytes from now on (what was left is dropped).
    pub(super) fn allow(&self, bytes: usize) {
        self.0.bytes.store(bytes, Ordering::SeqCst);
    }

    /// Whether the store has sent more than it was allowed: the client
    /// library then reports only a broken connection.
    pub(super) fn exceeded(&self) -> bool {
        self.0.over.load(Ordering::SeqCst)
    }
}

/// A stream whose reads stop at its [`Budget`].
pub(super) struct Bounded<S> {
    inner: S,
    budget: Budget,
}

impl<S> Bounded<S> {
    pub(super) fn new(inner: S, budget: Budget) -> Bounded<S> {
        Bounded { inner, budget }
    }
}

/// The error a store that sends too much gets.
pub(super) const OVER_BUDGET: &str = "the store sent more than was asked for";

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.budget.0.bytes.load(Ordering::SeqCst);
        // One byte past the budget is read, so that a store over it is
        // caught at once instead of waiting forever with the budget at 0.
        let room = buf.remaining().min(left.saturating_add(1));
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            if n > left {
                self.budget.allow(0);
                self.budget.0.over.store(true, Ordering::SeqCst);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, OVER_BUDGET)));
            }
            self.budget.0.bytes.fetch_sub(n, Ordering::SeqCst);
            buf.advance(n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A byte stream to the store: TCP, TLS or a Unix socket.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens the stream to `addr`: TLS verified by the certificates in `ca`
/// (PEM) or else the system's roots.
pub(super) async fn open(addr: &ConnectionAddr, ca: Option<&[u8]>) -> io::Result<Box<dyn Stream>> {
    match addr {
        ConnectionAddr::Tcp(host, port) => Ok(Box::new(tcp(host, *port).await?)),
        ConnectionAddr::TcpTls { host, port, .. } => {
            let config = tls_config(ca)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = tcp(host, *port).await?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
        ConnectionAddr::Unix(path) => Ok(Box::new(unix(path).await?)),
        #[allow(unreachable_patterns)] // the enum is not exhaustive
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kind of address is not supported",
        )),
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    // Each exchange is one small write and one small read.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn unix(path: &Path) -> io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
}

fn tls_config(ca: Option<&[u8]>) -> io::Result<rustls::ClientConfig> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid(e.to_string()))?;
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_budget() {
        let (mut store, ours) = tokio::io::duplex(1 << 20);
        let budget = Budget::default();
        let mut bounded = Bounded::new(ours, budget.clone());
        budget.allow(10);
        store.write_all(b"+PONG\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = bounded.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"+PONG\r\n");
        // 3 bytes left: a 4-byte reply is over.
        store.write_all(b":12\r\n").await.unwrap();
        assert!(!budget.exceeded());
        let e = bounded.read(&mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), OVER_BUDGET);
        assert!(budget.exceeded());
        // A new exchange, a new budget.
        budget.allow(1000);
        store.write_all(&[b'x'; 2000]).await.unwrap();
        let mut total = 0;
        let over = loop {
            match bounded.read(&mut buf).await {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(over.to_string(), OVER_BUDGET);
        assert!(total <= 1000, "{total}");
    }

    #[tokio::test]
    async fn an_empty_budget_waits_rather_than_fails() {
        let (mut store, ours) = tokio::io::duplex(64);
        let budget = Budget::default();
        let mut bounded = Bounded::new(ours, budget.clone());
        let mut buf = [0u8; 8];
        let idle =
            tokio::time::timeout(std::time::Duration::from_millis(50), bounded.read(&mut buf))
                .await;
        assert!(idle.is_err(), "a read with nothing sent waits");
        store.write_all(b"x").await.unwrap();
        assert!(bounded.read(&mut buf).await.is_err());
    }
}
