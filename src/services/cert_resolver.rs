//! The certificate resolver every TLS handshake asks.

use std::sync::Arc;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use crate::snapshot::Shared;

/// Chooses the certificate for each TLS handshake from the snapshot current
/// at that moment, by SNI (docs/design.md §6: certificates reload live).
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
