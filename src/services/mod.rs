//! The Pingora services beside the proxy, and the background work: the
//! certificate resolver, the metrics listener, file watching and reload,
//! upstream health checks, the shared-store sync, ACME, systemd's
//! notifications, and the hand-over of listening sockets to a new instance.

pub mod acme;
pub mod cert_resolver;
pub mod health_checks;
pub mod metrics_app;
pub mod reload;
pub mod store_sync;
pub mod systemd;
pub mod upgrade;

pub use cert_resolver::CertResolver;
pub use metrics_app::MetricsApp;
