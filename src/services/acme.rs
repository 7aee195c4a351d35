//! ACME in the Pingora layer: the background service that makes a pass
//! over the managed names of the serving snapshot every few seconds
//! (`acme::renew`), on its own runtime, so an order never occupies a
//! request thread; and the TLS-ALPN-01 responder that runs before each
//! TLS handshake. New certificates reach the listeners through the files
//! and the reload watcher, exactly as a replaced file pair does.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::acme::challenge::{self, Hello};
use crate::certs::acme::renew::{Managed, Renewer, Served};
use crate::certs::acme::schedule::Current;
use crate::certs::acme::{self, Plan};
use crate::certs::tls::CertSource;
use crate::config::{acme_name, Challenge};
use crate::observe::metrics::METRICS;
use crate::snapshot::{Shared, Snapshot};

/// How often the managed names are looked at: a renewal another node
/// recorded, or one asked for with `visitord certs --renew`, is noticed
/// within this. A look reads one small record per name.
const TICK: Duration = Duration::from_secs(5);

pub struct AcmeService {
    shared: Shared,
}

impl AcmeService {
    pub fn new(shared: Shared) -> AcmeService {
        AcmeService { shared }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut renewer = Renewer::new(owner());
        let mut waiting_logged: Option<Vec<String>> = None;
        let mut folder_error: Option<String> = None;
        loop {
            let snap = self.shared.load_full();
            let work = snap.config.acme.clone().zip(snap.acme.clone());
            let names = managed(&snap);
            note_waiting(&snap, &mut waiting_logged);
            drop(snap);
            let pass = async {
                let (config, plan) = work.as_ref()?;
                // Both results exist from the start, so a dashboard reads 0.
                for result in ["ok", "error"] {
                    METRICS.acme_orders.with_label_values(&[result]);
                }
                let prepared = plan.store.prepare().map_err(|e| e.to_string());
                if prepared.as_ref().err() != folder_error.as_ref() {
                    if let Err(e) = &prepared {
                        log::warn!("acme: {e}");
                    }
                    folder_error = prepared.err();
                }
                Some(renewer.pass(config, &plan.store, &names).await)
            };
            tokio::select! {
                pass = pass => {
                    if pass.is_some_and(|p| p.reload) {
                        // The reload thread's SIGHUP path rebuilds the
                        // snapshot, as `systemctl reload` would.
                        if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGHUP) {
                            log::warn!("acme: cannot ask for a reload: {e}");
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// The managed names of `snap` and the ACME certificate each is served
/// with.
fn managed(snap: &Snapshot) -> Vec<Managed> {
    let Some(plan) = &snap.acme else {
        return Vec::new();
    };
    plan.managed
        .iter()
        .map(|name| {
            let current = snap
                .certificates
                .for_name(name)
                .filter(|c| c.source == CertSource::Acme)
                .and_then(|c| {
                    Some(Served {
                        facts: Current {
                            serial: c.serial.clone(),
                            not_before: c.not_before,
                            not_after: c.not_after,
                        },
                        leaf: c.key.cert.first()?.clone().into_owned(),
                    })
                });
            Managed {
                name: name.clone(),
                current,
            }
        })
        .collect()
}

/// Says which names wait for their first certificate, when that changes.
fn note_waiting(snap: &Snapshot, logged: &mut Option<Vec<String>>) {
    let waiting: Vec<String> = snap.certificates.waiting().map(str::to_owned).collect();
    if logged.as_ref() == Some(&waiting) {
        return;
    }
    if !waiting.is_empty() {
        log::info!(
            "acme: waiting for certificates (handshakes for these names are refused until then): {}",
            waiting.join(", ")
        );
    }
    *logged = Some(waiting);
}

/// This node in lease files: host name and process id, for an operator
/// wondering who holds a lease.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host} pid {}", std::process::id())
}

/// Creates the state folders before the reload watcher looks for them;
/// an error names the folder.
pub fn prepare(shared: &Shared) -> Result<(), acme::store::StoreError> {
    let snap = shared.load();
    match &snap.acme {
        Some(Plan { store, .. }) => store.prepare(),
        None => Ok(()),
    }
}

/// How long a new TLS connection may take to send its first record while
/// TLS-ALPN-01 is in use; then Pingora's own handshake deadline applies.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers TLS-ALPN-01 challenges (RFC 8737) on the TLS listeners.
///
/// Pingora 0.9.1 gives a listener one fixed ALPN list (h2, http/1.1; see
/// `TlsSettings::set_alpn`) and rustls refuses a client whose protocols
/// are not in it, so the CA's `acme-tls/1` handshake cannot reach the
/// certificate resolver. It is recognised before Pingora's handshake
/// instead, in the pre-TLS hook: the first record is read, looked at and
/// put back. A CA's handshake is completed here with the challenge
/// certificate and the connection closed; every other connection goes on
/// to Pingora untouched. With `challenge = "http-01"` nothing is read.
/// A ClientHello split across TLS records is not recognised (CAs send it
/// in one; docs/certificates.md says so).
pub struct TlsAlpnResponder {
    shared: Shared,
}

impl TlsAlpnResponder {
    pub fn new(shared: Shared) -> TlsAlpnResponder {
        TlsAlpnResponder { shared }
    }

    /// `Ok` to go on with Pingora's handshake; `Err` once a challenge was
    /// answered (the connection is closed).
    pub async fn answer(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let store = {
            let snap = self.shared.load();
            match (&snap.config.acme, &snap.acme) {
                (Some(a), Some(plan)) if a.challenge == Challenge::TlsAlpn01 => plan.store.clone(),
                _ => return Ok(()),
            }
        };
        let (hello, first) = read_hello(stream).await;
        stream.rewind(&first);
        let Hello::Acme { server_name } = hello else {
            return Ok(());
        };
        // Only a name that could be ordered names a file.
        let Ok(name) = acme_name(&server_name) else {
            return Ok(());
        };
        let Ok(key_authorization) = tokio::fs::read(store.tls_alpn01_file(&name)).await else {
            // No challenge pending for it: Pingora's handshake refuses the
            // protocol.
            return Ok(());
        };
        let answered = match challenge_config(&name, &key_authorization) {
            Ok(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(&mut *stream)).await {
                    Ok(Ok(mut tls)) => {
                        let _ = tls.shutdown().await;
                        "answered"
                    }
                    _ => "cut short by the CA",
                }
            }
            Err(e) => {
                log::warn!("acme: {name}: cannot make the TLS-ALPN-01 certificate: {e}");
                "not answered"
            }
        };
        log::info!("acme: {name}: TLS-ALPN-01 challenge {answered}");
        Error::e_explain(
            ErrorType::new("AcmeTlsAlpn01"),
            format!("an ACME TLS-ALPN-01 check for {name}, {answered}; connection closed"),
        )
    }
}

/// Reads the first record of a connection (bounded in size and time) and
/// says what it is; returns the bytes read, to be put back.
async fn read_hello(stream: &mut L4Stream) -> (Hello, Vec<u8>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    loop {
        match challenge::inspect_hello(&buf) {
            Hello::NeedMore if buf.len() < challenge::MAX_HELLO => {}
            Hello::NeedMore => return (Hello::Other, buf),
            decided => return (decided, buf),
        }
        let want = chunk.len().min(challenge::MAX_HELLO - buf.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // Closed, failed or silent: Pingora's handshake deals with it.
            _ => return (Hello::Other, buf),
        }
    }
}

/// A rustls server configuration that offers only `acme-tls/1` and the
/// challenge certificate for `name`.
fn challenge_config(
    name: &str,
    key_authorization: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert, key) =
        challenge::tls_alpn01_certificate(name, key_authorization).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    // Not `with_single_cert`: it refuses the critical acmeIdentifier
    // extension that makes this certificate the answer.
    let certified = Arc::new(CertifiedKey::new(vec![cert], signing));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCertificate(certified)));
    config.alpn_protocols = vec![challenge::ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Offers one certificate whatever the handshake asks.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
