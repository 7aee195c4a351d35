//! The framework's ceiling for proxying a site (`benches/proxy.sh`): a
//! Pingora reverse proxy on the same TLS, thread and keep-alive setup as
//! visitord whose only logic is `upstream_peer`, handing every request to
//! one fixed plain-HTTP upstream. No headers are added, nothing is looked
//! up. visitord ÷ this is what visitord's own per-request work on a
//! `[[site]]` costs (docs/design.md §9: CPU per request at most 1.15×).
//!
//! Besides `upstream_peer` it only does what visitord does to every
//! connection, so that both pay the same framework costs:
//! - keep-alive: HTTP/1 connections idle out after `KEEPALIVE_SECS` (set per
//!   request, as visitord does with `limits.keepalive_timeout`, default 60;
//!   0 keeps Pingora's default of no timeout), and a connection serves up
//!   to a million requests (`limits.keepalive_requests` in the benchmarks);
//! - the upstream peer has visitord's default `[[site]]` timeouts (connect
//!   5 s, read/write/idle 60 s); the idle timeout also bounds pooled
//!   upstream connections;
//! - work stealing on, h1 + h2 ALPN, Pingora's default upstream pool.
//! - the same global allocator as visitord (mimalloc), so the ratio
//!   measures visitord's own work, not a difference of allocators.
//!
//! With `BARE_HEADERS=1` in its environment it also adds visitord's eleven
//! `X-Visitor-*` headers with fixed values (no lookup), handed to Pingora as
//! visitord hands them: what the headers alone cost through Pingora's header
//! API, the floor for a site that takes them all.
//!
//! `cargo run --release --example bare_proxy -- CERT KEY ADDR THREADS UPSTREAM [KEEPALIVE_SECS]`
//! e.g. `... -- tls/localhost.crt tls/localhost.key 127.0.0.1:8443 2 127.0.0.1:8080`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::apps::HttpServerOptions;
use pingora::http::RequestHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::Result;
use visitord::visitor::VISITOR_HEADERS;

/// The allocator visitord runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests one downstream connection may carry: visitord's
/// `limits.keepalive_requests = 1000000` in the benchmarks (Pingora counts
/// reuses, one fewer).
const KEEPALIVE_REUSES: u32 = 999_999;

/// The values `BARE_HEADERS=1` sends under visitord's eleven header names
/// (`visitord::visitor::VISITOR_HEADERS`, same order), as visitord writes
/// them for a visitor from London on Chrome.
const VISITOR_VALUES: [&str; 11] = [
    "GB",
    "ENG",
    "London",
    "51.514200,-0.093100",
    "Europe/London",
    "EU",
    "GBP",
    "en-GB,cy-GB,gd",
    "Chrome",
    "Windows",
    "Other",
];

struct BareProxy {
    /// The one upstream, built once; every request gets a copy.
    peer: HttpPeer,
    keepalive_secs: u64,
    /// Headers added to every upstream request (`BARE_HEADERS=1`), values
    /// built once.
    headers: Vec<(&'static str, HeaderValue)>,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    /// The keep-alive bound visitord sets on every request; no other work.
    async fn request_filter(&self, s: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if self.keepalive_secs > 0 && s.get_keepalive().is_some() {
            s.set_keepalive(Some(self.keepalive_secs));
        }
        Ok(false)
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        up: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        for (name, value) in &self.headers {
            up.insert_header(*name, value.clone())?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn usage() -> ! {
    eprintln!("usage: bare_proxy CERT KEY ADDR THREADS UPSTREAM [KEEPALIVE_SECS]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, addr, threads, upstream, rest @ ..] = &args[..] else {
        usage()
    };
    let threads: usize = threads.parse().unwrap_or_else(|_| usage());
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|_| usage());
    let keepalive_secs: u64 = match rest {
        [] => 60,
        [secs] => secs.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    pingora::tls::install_default_crypto_provider();

    // Plain HTTP to the upstream; the SNI is unused without TLS.
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer.options.total_connection_timeout = Some(Duration::from_secs(5));
    peer.options.read_timeout = Some(Duration::from_secs(60));
    peer.options.write_timeout = Some(Duration::from_secs(60));
    peer.options.idle_timeout = Some(Duration::from_secs(60));

    // The settings visitord's server.rs uses for its HTTPS service.
    // Stop within a second on SIGTERM, like visitord with grace_period = "1s".
    let conf = ServerConf {
        threads,
        work_stealing: true,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = Arc::clone(&server.configuration);
    let headers = if std::env::var_os("BARE_HEADERS").is_some_and(|v| v == "1") {
        VISITOR_HEADERS
            .iter()
            .zip(VISITOR_VALUES)
            .map(|(name, value)| (name.as_str(), HeaderValue::from_static(value)))
            .collect()
    } else {
        Vec::new()
    };
    let proxy = BareProxy {
        peer,
        keepalive_secs,
        headers,
    };
    let mut service = http_proxy_service_with_name(&conf, proxy, "bare proxy");
    if let Some(app) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.keepalive_request_limit = Some(KEEPALIVE_REUSES);
        app.server_options = Some(options);
    }
    let mut tls = TlsSettings::intermediate(cert, key).unwrap_or_else(|e| {
        eprintln!("bare_proxy: TLS settings: {e}");
        std::process::exit(1);
    });
    tls.enable_h2();
    service.add_tls_with_settings(addr, None, tls);
    server.add_service(service);
    server.run_forever();
}
