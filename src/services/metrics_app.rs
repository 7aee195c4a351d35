//! The metrics listener: Prometheus text, the dashboard and its JSON.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use http::header::{self, HeaderValue};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::dashboard::{self, Clock, Status};
use crate::observe::metrics::METRICS;
use crate::observe::metrics_access::{self, Access, AllowList};
use crate::observe::reload_history::ReloadHistory;
use crate::request::answer;
use crate::snapshot::{Shared, Snapshot};

/// The metrics listener: Prometheus text on `/metrics`, the dashboard on
/// `/` and its facts on `/status.json`, for the peers and token
/// `metrics.allow` and `metrics.token_file` admit; `/healthz` and
/// `/readyz` for anyone who can connect (they tell nothing but "alive").
/// Peers outside `metrics.allow` cannot connect at all (the connection
/// guard closes them at accept). Without a token, only loopback and listed
/// `Host` names are answered (`metrics.hosts`; DNS rebinding).
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

    /// DNS rebinding: see `metrics_access::host_allowed`.
    fn host_allowed(&self, s: &ServerSession, snap: &Snapshot) -> bool {
        let header = s.req_header();
        let host = header
            .headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| header.uri.authority().map(|a| a.as_str().as_bytes()));
        let local = s.server_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let listener: Vec<IpAddr> = [Some(self.bound.ip()), local]
            .into_iter()
            .flatten()
            .collect();
        let names = snap
            .config
            .metrics
            .as_ref()
            .map_or(&[][..], |m| &m.hosts[..]);
        metrics_access::host_allowed(host, &listener, names, snap.metrics_token.is_some())
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

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = s.req_header().uri.path();
        if path == "/healthz" || path == "/readyz" {
            return answer::health().into_response(None);
        }
        let snap = self.shared.load_full();
        if !self.host_allowed(s, &snap) {
            log::debug!("metrics listener: a request for another Host was refused");
            return answer::error(421, "this listener does not answer for that Host")
                .into_response(None);
        }
        match self.access(s, &snap) {
            Access::Granted => {}
            Access::AddressRefused => {
                log::debug!("metrics listener: a peer outside metrics.allow was refused");
                return answer::error(403, "forbidden").into_response(None);
            }
            Access::TokenRequired => {
                log::debug!("metrics listener: a request without the bearer token was refused");
                return answer::error(401, "bearer token required")
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"visitord metrics\""),
                    )
                    .into_response(None);
            }
        }
        match path {
            "/metrics" => {
                crate::snapshot::publish::publish_upstream_health(&snap);
                answer::typed(200, PROMETHEUS_TEXT, METRICS.render()).into_response(None)
            }
            "/" => {
                let html = dashboard::render(&self.status(&snap));
                answer::typed(200, answer::HTML, html)
                    .with_header(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
                    )
                    .with_header(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    )
                    .with_header(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"))
                    .into_response(None)
            }
            "/status.json" => {
                answer::typed(200, answer::JSON, self.status(&snap).json()).into_response(None)
            }
            _ => answer::not_found().into_response(None),
        }
    }
}
