//! Assembles the Pingora server: one service per listener role, the
//! accept gate, the certificate resolver, the metrics listener and the
//! upstream health checks; then runs it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::{Config, ListenerKind};
use crate::conn::accept::AcceptGate;
use crate::conn::connection::{Guarded, KeepAliveBound};
use crate::conn::registry::{self, Registry};
use crate::limits::Limiter;
use crate::observe::reload_history::{ReloadHistory, ReloadRecord};
use crate::proxy::Visitord;
use crate::services::acme::AcmeService;
use crate::services::health_checks::HealthChecks;
use crate::services::store_sync::StoreSync;
use crate::services::upgrade::Signals;
use crate::services::{CertResolver, MetricsApp};
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
    #[error("{file}: server.upgrade_socket: cannot listen on {}: {source}", path.display())]
    UpgradeSocket {
        file: std::path::PathBuf,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: nothing to take over: no process listens on the configured addresses (start with `visitord run`)")]
    NothingToTakeOver { file: std::path::PathBuf },
    #[error(transparent)]
    Reload(#[from] crate::services::reload::ReloadError),
    #[error("TLS listener setup: {0}")]
    Tls(String),
    #[error("acme.state_dir: {0}")]
    AcmeState(#[from] crate::certs::acme::store::StoreError),
}

/// Every address we will listen on, with the config key that names it.
fn listen_addresses(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listen[{i}].addr"), l.addr))
        .collect();
    if let Some(m) = &config.metrics {
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

/// How a starting instance comes by its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// Binds every address itself (`visitord run`).
    Bind,
    /// Takes them over from the instance running on the same configuration
    /// (`visitord run --upgrade`); binds only the addresses it adds.
    TakeOver,
}

/// In an upgrade, everything that can fail is checked before the running
/// instance is asked for its sockets, since it stops accepting once it has
/// handed them over: the upgrade socket can be bound, something holds the
/// configured addresses (else there is nothing to take over), and every
/// address no process listens on yet (a listener added) can be bound.
fn check_take_over(config: &Config) -> Result<(), ServerError> {
    let socket = &config.server.upgrade_socket;
    crate::services::upgrade::check_upgrade_socket(socket).map_err(|source| {
        ServerError::UpgradeSocket {
            file: config.file.clone(),
            path: socket.clone(),
            source,
        }
    })?;
    let held = crate::services::systemd::listening_now();
    let addresses = listen_addresses(config);
    if !addresses.iter().any(|(_, a)| held.contains(a)) {
        return Err(ServerError::NothingToTakeOver {
            file: config.file.clone(),
        });
    }
    for (key, addr) in addresses.into_iter().filter(|(_, a)| !held.contains(a)) {
        TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            file: config.file.clone(),
            key,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// Builds every service over `snapshot` and runs until SIGTERM/SIGINT, or
/// until it has handed its sockets to a new instance (SIGQUIT, SIGUSR2).
pub fn run(snapshot: Snapshot, sockets: Sockets) -> Result<(), ServerError> {
    let config = snapshot.config.clone();
    match sockets {
        Sockets::Bind => check_listeners(&config)?,
        Sockets::TakeOver => check_take_over(&config)?,
    }
    crate::snapshot::publish::publish_metrics(&snapshot);
    let history = Arc::new(ReloadHistory::new());
    history.push(ReloadRecord {
        at: snapshot.loaded_at,
        trigger: if sockets == Sockets::TakeOver {
            "upgrade"
        } else {
            "start"
        },
        generation: snapshot.generation,
        refused: None,
    });
    let shared: Shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let opt = (sockets == Sockets::TakeOver).then(|| Opt {
        upgrade: true,
        ..Opt::default()
    });
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    let registry = add_services(&mut server, &shared, &history, &config)?;

    // The state folders exist before the watcher looks for them.
    crate::services::acme::prepare(&shared)?;
    crate::services::reload::spawn(config.file.clone(), shared.clone(), history)?;

    if sockets == Sockets::TakeOver {
        ask_to_hand_over(&config);
    }
    // Receives the sockets in an upgrade (Pingora exits 1, saying why, if
    // none come); nothing that can fail comes after this.
    server.bootstrap();
    announce(&config, &shared, sockets);
    exit_when_drained(server.watch_execution_phase(), registry);
    let signals = Signals::new(config.server.upgrade_socket.clone(), config.file.clone());
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    Ok(())
}

/// Tells the running instance (SIGQUIT) to hand its sockets over once this
/// one listens on the upgrade socket, which it does right after this.
fn ask_to_hand_over(config: &Config) {
    let addrs: Vec<SocketAddr> = listen_addresses(config)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let asked = crate::services::upgrade::ask_holders_to_hand_over(&addrs);
    let who = match asked.as_slice() {
        [] => "SIGQUIT it yourself: its process was not found".to_owned(),
        pids => format!("sent SIGQUIT to process {pids:?}"),
    };
    log::info!(
        "upgrade: waiting on {} for the running instance's listening sockets ({who})",
        config.server.upgrade_socket.display()
    );
}

/// Every listener, the metrics listener and the background services;
/// returns the connection registry the drain watches.
fn add_services(
    server: &mut Server,
    shared: &Shared,
    history: &Arc<ReloadHistory>,
    config: &Config,
) -> Result<Arc<Registry>, ServerError> {
    // One set of counters for every listener and every snapshot.
    let parts = Parts {
        shared: shared.clone(),
        limiter: Arc::new(Limiter::new()),
        registry: Arc::new(Registry::new(default_max_connections(config))),
        conf: server.configuration.clone(),
        config,
    };
    add_https_services(server, &parts)?;
    add_redirect_services(server, &parts);
    if let Some(m) = &config.metrics {
        let app = MetricsApp::new(shared.clone(), history.clone(), SystemTime::now(), m.addr);
        let app = HttpServer::new_app(KeepAliveBound::new(app, shared.clone()));
        // Capped and timed like every listener; peers outside
        // `metrics.allow` are closed before a byte is read.
        let guarded = Guarded::new(app, shared.clone(), parts.registry.clone(), false)
            .metrics_listener(m.addr);
        let mut service = Service::new("visitord metrics".to_owned(), guarded);
        service.threads = Some(1);
        service.add_tcp(&m.addr.to_string());
        server.add_service(service);
    }
    add_background_services(server, &parts);
    Ok(parts.registry)
}

/// The start line in the log, and readiness to systemd once every listener
/// is there (with `MAINPID=` after a take-over).
fn announce(config: &Config, shared: &Shared, sockets: Sockets) {
    let serving = format!(
        "serving generation {} on {} listener(s)",
        shared.load().generation,
        config.listeners.len()
    );
    let how = match sockets {
        Sockets::Bind => "",
        Sockets::TakeOver => " (took over the listening sockets)",
    };
    log::info!("visitord {} {serving}{how}", env!("CARGO_PKG_VERSION"));
    crate::services::systemd::notify_ready_when_listening(
        listen_addresses(config)
            .into_iter()
            .map(|(_, a)| a)
            .collect(),
        serving,
        sockets == Sockets::TakeOver,
    );
}

/// What the services share: the snapshot holder, the counters (one set for
/// every listener and snapshot), and the configuration they start with.
struct Parts<'a> {
    shared: Shared,
    limiter: Arc<Limiter>,
    registry: Arc<Registry>,
    conf: Arc<ServerConf>,
    config: &'a Config,
}

impl Parts<'_> {
    /// The HTTP application of a listener role: the proxy, behind the
    /// connection guard.
    fn handler(&self, role: ListenerKind) -> Guarded<HttpProxy<Visitord>> {
        let app = Visitord::new(
            self.shared.clone(),
            role,
            self.limiter.clone(),
            self.registry.clone(),
        );
        let mut proxy = http_proxy(&self.conf, app);
        proxy.server_options = Some(server_options(self.config));
        let tls = role == ListenerKind::Tls;
        Guarded::new(proxy, self.shared.clone(), self.registry.clone(), tls)
    }
}

/// Pingora's settings from `[server]`.
fn server_conf(config: &Config) -> ServerConf {
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
    conf.upgrade_sock = config.server.upgrade_socket.to_string_lossy().into_owned();
    conf
}

/// The server cap while `limits.max_connections` is not set, from the
/// open-file limit (raised first), and the log line that says which applies.
fn default_max_connections(config: &Config) -> u32 {
    let open_files = raise_open_file_limit();
    let default_max = registry::max_connections_for(open_files);
    log::info!(
        "open-file limit {open_files}: limits.max_connections {}",
        config
            .limits
            .max_connections
            .map_or(format!("{default_max} (default)"), |n| n.to_string())
    );
    default_max
}

/// The TLS listeners. Pingora's pre-TLS hook is per service (`Listeners`),
/// so listeners that take the PROXY protocol get a service of their own;
/// every TLS service has the accept gate (connection caps, handshake
/// deadline).
fn add_https_services(server: &mut Server, parts: &Parts<'_>) -> Result<(), ServerError> {
    for proxy_protocol in [false, true] {
        let tls_addrs: Vec<SocketAddr> = parts
            .config
            .listeners
            .iter()
            .filter(|l| l.kind == ListenerKind::Tls && l.proxy_protocol == proxy_protocol)
            .map(|l| l.addr)
            .collect();
        if tls_addrs.is_empty() {
            continue;
        }
        let name = if proxy_protocol {
            "visitord https (PROXY protocol)"
        } else {
            "visitord https"
        };
        let mut service = Service::new(name.to_owned(), parts.handler(ListenerKind::Tls));
        let gate = AcceptGate::new(parts.shared.clone(), parts.registry.clone(), proxy_protocol);
        service.endpoints().set_pre_tls_callback(Arc::new(gate));
        for addr in &tls_addrs {
            let mut tls =
                TlsSettings::intermediate("", "").map_err(|e| ServerError::Tls(e.to_string()))?;
            tls.set_cert_resolver(Arc::new(CertResolver::new(parts.shared.clone())));
            tls.enable_h2();
            service.add_tls_with_settings(&addr.to_string(), None, tls);
        }
        server.add_service(service);
    }
    Ok(())
}

/// The plain-HTTP listeners that redirect to HTTPS.
fn add_redirect_services(server: &mut Server, parts: &Parts<'_>) {
    for l in &parts.config.listeners {
        if let ListenerKind::Redirect { .. } = l.kind {
            let name = "visitord http redirect".to_owned();
            let mut service = Service::new(name, parts.handler(l.kind));
            service.threads = Some(1);
            service.add_tcp(&l.addr.to_string());
            server.add_service(service);
        }
    }
}

/// Health checks, the shared-store sync and ACME, beside the listeners.
fn add_background_services(server: &mut Server, parts: &Parts<'_>) {
    server.add_service(background_service(
        "visitord upstream health checks",
        HealthChecks::new(parts.shared.clone()),
    ));
    server.add_service(background_service(
        "visitord shared store",
        StoreSync::new(parts.shared.clone(), parts.limiter.clone()),
    ));
    // Always there: an [acme] section added by a reload starts working.
    server.add_service(background_service(
        "visitord acme",
        AcmeService::new(parts.shared.clone()),
    ));
}

/// How long no connection may be open, after SIGTERM, before the drain is
/// over: a connection accepted just before the signal is counted only once
/// its TLS handshake is done.
const DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// After SIGTERM, and after a hand-over to a new instance (SIGQUIT or
/// SIGUSR2: Pingora sends the sockets, keeps accepting for 5 s while the
/// new instance starts its listeners, then shuts down), Pingora stops
/// accepting, closes idle keep-alive connections and lets running requests
/// finish, then sleeps the whole grace period whether or not anything is
/// left. This ends the process as soon as every connection has closed (and
/// stayed so for [`DRAIN_SETTLE`]), as nginx does; the grace period stays
/// the upper bound.
fn exit_when_drained(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    registry: Arc<Registry>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let spawned = std::thread::Builder::new()
        .name("visitord-drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => {
                        break
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
            let mut drain = Drain::default();
            while !drain.done(registry.serving(), Instant::now()) {
                std::thread::sleep(Duration::from_millis(50));
            }
            log::info!("graceful shutdown: every connection has closed; exiting");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch the shutdown drain ({e}); SIGTERM waits out the grace period");
    }
}

/// Whether a drain is over, from the open-connection counts seen over time.
#[derive(Debug, Default)]
struct Drain {
    idle_since: Option<Instant>,
}

impl Drain {
    fn done(&mut self, open: usize, now: Instant) -> bool {
        if open > 0 {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        now.duration_since(since) >= DRAIN_SETTLE
    }
}

/// Keep-alive bounds (restart to change): Pingora's defaults are no limit on
/// requests per connection and no idle timeout for HTTP/2. HTTP/2 keeps
/// `default_h2_options()` (100 streams, 64 KiB of headers) by leaving
/// `h2_options` unset.
fn server_options(config: &Config) -> HttpServerOptions {
    let limits = &config.limits;
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = keepalive_reuses(limits.keepalive_requests);
    options.h2_idle_timeout = Some(limits.keepalive_timeout).filter(|d| !d.is_zero());
    options
}

/// Pingora's `keepalive_request_limit` counts reuses, so N of them serve
/// N + 1 requests; `limits.keepalive_requests` counts requests, as nginx's
/// `keepalive_requests` does. 0 means no limit.
fn keepalive_reuses(requests: u32) -> Option<u32> {
    requests.checked_sub(1)
}

/// Raises the soft open-file limit to the hard one, as nginx's
/// `worker_rlimit_nofile` would, and returns the limit now in force: every
/// connection, upstream connection and watched file takes a descriptor, and
/// distributions start services at a soft 1024.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}; assuming 1024");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_ends_after_a_settled_quiet() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Drain::default();
        assert!(!d.done(2, at(0)));
        assert!(!d.done(0, at(100)));
        // A connection that appears restarts the wait.
        assert!(!d.done(1, at(900)));
        assert!(!d.done(0, at(1000)));
        assert!(!d.done(0, at(1999)));
        assert!(d.done(0, at(2000)));
    }

    #[test]
    fn keepalive_requests_are_requests_not_reuses() {
        assert_eq!(keepalive_reuses(0), None);
        assert_eq!(keepalive_reuses(1), Some(0));
        assert_eq!(keepalive_reuses(1000), Some(999));
    }
}
