//! The small Pingora services beside the proxy: the certificate resolver
//! every TLS handshake asks, and the metrics listener with the dashboard.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use crate::answer;
use crate::dashboard::{self, Clock, Status};
use crate::metrics::METRICS;
use crate::metrics_access::{self, Access, AllowList};
use crate::reload_history::ReloadHistory;
use crate::snapshot::{Shared, Snapshot};

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

/// The metrics listener: Prometheus text on `/metrics`, the dashboard on
/// `/` and its facts on `/status.json`, for the peers and token
/// `metrics.allow` and `metrics.token_file` admit; `/healthz` for anyone
/// who can connect (it tells nothing but "alive").
pub struct MetricsApp {
    shared: Shared,
    history: Arc<ReloadHistory>,
    started: SystemTime,
    /// Where the listener is bound (restart to change): off loopback, it
    /// answers only when an allow list or a token is configured.
    bound: SocketAddr,
}

impl MetricsApp {
    pub fn new(
        shared: Shared,
        history: Arc<ReloadHistory>,
        started: SystemTime,
        bound: SocketAddr,
    ) -> MetricsApp {
        MetricsApp {
            shared,
            history,
            started,
            bound,
        }
    }

    fn access(&self, s: &ServerSession, snap: &Snapshot) -> Access {
        let peer = s
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let none = AllowList::default();
        let allow = snap.config.metrics.as_ref().map_or(&none, |m| &m.allow);
        let authorization = s
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        metrics_access::decide(
            self.bound.ip(),
            peer,
            allow,
            snap.metrics_token.as_ref(),
            authorization,
        )
    }

    fn status(&self, snap: &Snapshot) -> Status {
        let clock = Clock {
            now: SystemTime::now(),
            instant: Instant::now(),
            started: self.started,
        };
        Status::collect(snap, &self.history.recent(), clock)
    }
}

const JSON: &str = "application/json";

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = s.req_header().uri.path();
        if path == "/healthz" {
            return reply(200, JSON, answer::health().body.to_vec());
        }
        let snap = self.shared.load_full();
        match self.access(s, &snap) {
            Access::Granted => {}
            Access::AddressRefused => {
                log::debug!("metrics listener: a peer outside metrics.allow was refused");
                return reply(403, JSON, answer::error(403, "forbidden").body.to_vec());
            }
            Access::TokenRequired => {
                log::debug!("metrics listener: a request without the bearer token was refused");
                let mut r = reply(
                    401,
                    JSON,
                    answer::error(401, "bearer token required").body.to_vec(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"visitord metrics\""),
                );
                return r;
            }
        }
        match path {
            "/metrics" => {
                snap.publish_upstream_health();
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            "/" => {
                let mut r = reply(
                    200,
                    "text/html; charset=utf-8",
                    dashboard::render(&self.status(&snap)).into_bytes(),
                );
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
                );
                h.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                r
            }
            "/status.json" => reply(200, JSON, self.status(&snap).json()),
            _ => reply(404, JSON, answer::not_found().body.to_vec()),
        }
    }
}

/// A response with the headers every answer of the listener carries.
fn reply(status: u16, content_type: &'static str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let len = body.len();
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body)
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}
