//! An in-process upstream for the site tests: a small hyper server on its
//! own tokio runtime, plain or TLS, that answers with the request it
//! received as JSON (`Echo`), and a few special paths:
//!
//! - `/sse`: `text/event-stream`, chunked; sends `data: one`, then waits
//!   for `release()` (at most 10 s) before `data: two` and the end.
//! - `/ws`: a WebSocket echo (RFC 6455 handshake, text/binary frames
//!   echoed unmasked, close answered).
//! - `/slow`: answers after 3 s.
//!
//! `stop()` drops the runtime: the listener and every open connection
//! close, as when the process dies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an upstream received, as it reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    pub path: String,
    /// Every header line, names lower case, in order received.
    pub headers: Vec<(String, String)>,
}

impl Echo {
    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of `name`; panics when absent or repeated.
    pub fn one(&self, name: &str) -> &str {
        let all = self.all(name);
        assert_eq!(all.len(), 1, "{name}: {all:?} in {:?}", self.headers);
        all[0]
    }
}

#[derive(Default)]
struct State {
    requests: AtomicUsize,
    released: AtomicBool,
    release: tokio::sync::Notify,
}

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<State>,
}

impl Upstream {
    /// A plain HTTP/1.1 upstream on a free loopback port.
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap(), None)
    }

    /// A TLS upstream presenting `cert`/`key` (PEM files).
    pub fn start_tls(name: &str, cert: &Path, key: &Path) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        super::install_crypto();
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Upstream::start_on(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    /// Listens on `addr` (port 0: any free port).
    pub fn start_on(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (name_owned, st) = (name.to_owned(), state.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (name, st, tls) = (name_owned.clone(), st.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, name, st).await;
                            }
                        }
                        None => serve(tcp, name, st).await,
                    }
                });
            }
        });
        Upstream {
            name: name.to_owned(),
            addr,
            runtime: Some(runtime),
            state,
        }
    }

    /// Requests answered so far (WebSocket and SSE included).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Lets `/sse` send its second event.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
        self.state.release.notify_waiters();
        self.state.release.notify_one();
    }

    pub fn released(&self) -> bool {
        self.state.released.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve<S>(stream: S, name: String, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (name, state) = (name.clone(), state.clone());
        async move { Ok::<_, Infallible>(answer(req, &name, &state).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn answer(req: Request<Incoming>, name: &str, state: &Arc<State>) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    match req.uri().path() {
        "/sse" => sse(state.clone()),
        "/ws" => websocket(req),
        // Answers only once the whole request body has arrived.
        "/body" => {
            let len = req
                .into_body()
                .collect()
                .await
                .map_or(0, |b| b.to_bytes().len());
            Response::new(full(len.to_string()))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            echo(&req, name)
        }
        _ => echo(&req, name),
    }
}

fn echo(req: &Request<Incoming>, name: &str) -> Response<Body> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(full(body.to_string()))
        .unwrap()
}

fn sse(state: Arc<State>) -> Response<Body> {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        let _ = tx.send_data(Bytes::from_static(b"data: one\n\n")).await;
        if !state.released.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(Duration::from_secs(10), state.release.notified()).await;
        }
        let _ = tx.send_data(Bytes::from_static(b"data: two\n\n")).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body.boxed())
        .unwrap()
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let upgrading = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrading || key.is_empty() {
        return Response::builder().status(400).body(full("")).unwrap();
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            // The server speaks first (see `WEBSOCKET_GREETING`).
            if io
                .write_all(&frame(1, WEBSOCKET_GREETING, None))
                .await
                .is_ok()
            {
                let _ = echo_frames(io).await;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", websocket_accept(&key))
        .body(full(""))
        .unwrap()
}

/// The text frame the WebSocket upstream sends as soon as the connection
/// is upgraded. A client that waits for it before sending its first frame
/// never meets Pingora 0.9.1's upgrade race (docs/sites.md, "Known
/// issues"): by then the proxy has passed an upstream frame down, which
/// resets its downstream state.
pub const WEBSOCKET_GREETING: &[u8] = b"hello from upstream";

/// Echoes client frames (masked) back unmasked until a close frame.
async fn echo_frames<S>(mut io: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                io.read_exact(&mut b).await?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                io.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap()];
        io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        io.write_all(&frame(opcode, &payload, None)).await?;
        io.flush().await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

/// One final WebSocket frame; masked when `mask` is given (client frames).
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}
