//! Assembles the Pingora server: one service per listener role, the
//! certificate resolver, the metrics listener; then runs it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::config::{Config, ListenerKind};
use crate::metrics::METRICS;
use crate::proxy::{CertResolver, MetricsApp, Visitord};
use crate::snapshot::{Shared, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{file}: {key}: cannot listen on {addr}: {source}")]
    Bind {
        file: std::path::PathBuf,
        key: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error("TLS listener setup: {0}")]
    Tls(String),
}

/// Every address we will listen on, with the config key that names it.
fn listen_addresses(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listen[{i}].addr"), l.addr))
        .collect();
    if let Some(m) = config.metrics {
        out.push(("metrics.addr".to_owned(), m.addr));
    }
    out
}

/// Binds each address once before Pingora does: Pingora binds inside its
/// service tasks and a failure there leaves a process running without that
/// listener. Checking first turns it into a start-up error that names the
/// key. (The abort-on-panic hook covers the race that remains.)
pub fn check_listeners(config: &Config) -> Result<(), ServerError> {
    for (key, addr) in listen_addresses(config) {
        TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            file: config.file.clone(),
            key,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// Builds every service over `snapshot` and runs until SIGTERM/SIGINT.
pub fn run(snapshot: Snapshot) -> Result<(), ServerError> {
    let config = snapshot.config.clone();
    check_listeners(&config)?;
    METRICS.observe_snapshot(&snapshot);
    let shared: Shared = Arc::new(ArcSwap::from_pointee(snapshot));

    let mut conf = ServerConf {
        threads: config.server.threads,
        work_stealing: true,
        ..ServerConf::default()
    };
    // Pingora sleeps the whole grace period after SIGTERM, then gives the
    // runtimes `graceful_shutdown_timeout` more; together they must fit in
    // `server.grace_period` (Pingora's own default is 300 s).
    let grace = config.server.grace_period.as_secs();
    conf.grace_period_seconds = Some(grace.saturating_sub(1));
    conf.graceful_shutdown_timeout_seconds = Some(grace.min(1));

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let tls_addrs: Vec<SocketAddr> = config
        .listeners
        .iter()
        .filter(|l| l.kind == ListenerKind::Tls)
        .map(|l| l.addr)
        .collect();
    if !tls_addrs.is_empty() {
        let mut service = http_proxy_service_with_name(
            &conf,
            Visitord::new(shared.clone(), ListenerKind::Tls),
            "visitord https",
        );
        for addr in &tls_addrs {
            let mut tls =
                TlsSettings::intermediate("", "").map_err(|e| ServerError::Tls(e.to_string()))?;
            tls.set_cert_resolver(Arc::new(CertResolver::new(shared.clone())));
            tls.enable_h2();
            service.add_tls_with_settings(&addr.to_string(), None, tls);
        }
        server.add_service(service);
    }

    for l in &config.listeners {
        if let ListenerKind::Redirect { .. } = l.kind {
            let mut service = http_proxy_service_with_name(
                &conf,
                Visitord::new(shared.clone(), l.kind),
                "visitord http redirect",
            );
            service.threads = Some(1);
            service.add_tcp(&l.addr.to_string());
            server.add_service(service);
        }
    }

    if let Some(m) = config.metrics {
        let mut service = Service::new("visitord metrics".to_owned(), MetricsApp);
        service.threads = Some(1);
        service.add_tcp(&m.addr.to_string());
        server.add_service(service);
    }

    crate::reload::spawn(config.file.clone(), shared.clone())?;

    log::info!(
        "visitord {} serving generation {} on {} listener(s)",
        env!("CARGO_PKG_VERSION"),
        shared.load().generation,
        config.listeners.len()
    );
    server.run(pingora::server::RunArgs::default());
    Ok(())
}
