//! The framework's ceiling for the load benchmark (`benches/load.sh`): a
//! Pingora service on the same TLS and thread setup as visitord that answers
//! every request with one fixed JSON body and the headers visitord sends,
//! doing no work of its own. visitord ÷ this is what visitord's own
//! per-request work costs. It runs with visitord's global allocator
//! (mimalloc), so the ratio does not measure a difference of allocators.
//!
//! `cargo run --release --example bare_responder -- CERT KEY ADDR [THREADS]`

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::{Error, ErrorType, Result};

/// The allocator visitord runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A visitord answer for a London visitor on Chrome, so the bytes on the
/// wire are about the same size as the real thing.
const BODY: &str = concat!(
    r#"{"status":200,"result":"success","data":{"ipAddress":"81.2.69.142","#,
    r#""countryCode":"GB","countryName":"United Kingdom","currencies":["GBP"],"#,
    r#""languages":["en-GB"],"region":"England","regionName":"England","city":"London","#,
    r#""cityLatLong":"51.514200,-0.093100","browser":"Chrome","browserVersion":"131.0.0","#,
    r#""os":"Windows","osVersion":"10","deviceBrand":"","deviceModel":"","#,
    r#""deviceFamily":"Other","continentCode":"EU","timezone":"Europe/London","#,
    r#""postalCode":"EC4N","isEU":false,"asn":0,"asOrganization":""}}"#
);

struct Bare;

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, s: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let origin = s.req_header().headers.get(header::ORIGIN).cloned();
        let mut h = pingora::http::ResponseHeader::build(200, Some(8))?;
        h.insert_header(header::CONTENT_TYPE, "application/json")?;
        h.insert_header(header::CACHE_CONTROL, "no-store")?;
        h.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
        h.insert_header(header::STRICT_TRANSPORT_SECURITY, "max-age=63072000")?;
        if let Some(origin) = origin {
            h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
            h.insert_header(header::VARY, "Origin")?;
        }
        h.insert_header(header::CONTENT_LENGTH, BODY.len())?;
        s.write_response_header(Box::new(h), false).await?;
        s.write_response_body(Some(Bytes::from_static(BODY.as_bytes())), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(ErrorType::InternalError, "nothing is proxied")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cert, key, addr) = match &args[..] {
        [cert, key, addr, ..] => (cert, key, addr),
        _ => {
            eprintln!("usage: bare_responder CERT KEY ADDR [THREADS]");
            std::process::exit(2);
        }
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    pingora::tls::install_default_crypto_provider();

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
    let mut service = http_proxy_service_with_name(&conf, Bare, "bare responder");
    let mut tls = TlsSettings::intermediate(cert, key).unwrap_or_else(|e| {
        eprintln!("bare_responder: TLS settings: {e}");
        std::process::exit(1);
    });
    tls.enable_h2();
    service.add_tls_with_settings(addr, None, tls);
    server.add_service(service);
    server.run_forever();
}
