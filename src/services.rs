//! The small Pingora services beside the proxy: the certificate resolver
//! every TLS handshake asks, and the metrics listener.

use std::sync::Arc;

use async_trait::async_trait;
use http::header;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use crate::answer;
use crate::metrics::METRICS;
use crate::snapshot::Shared;

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
            "/healthz" => (200, "application/json", answer::health().body.to_vec()),
            _ => (404, "application/json", answer::not_found().body.to_vec()),
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
