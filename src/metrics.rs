//! Prometheus metrics (DESIGN §7): one registry, handles created once.
//!
//! Labels take bounded values only: routes and reasons are fixed names,
//! project ids come from configuration (anything else is `""`), and no
//! metric ever carries an IP address or an origin.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub origin_rejections: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub closed_connections: IntCounterVec,
    pub reloads: IntCounterVec,
    pub reload_ok: IntGauge,
    pub snapshot_generation: IntGauge,
    pub open_connections: IntGauge,
    pub geo_build: IntGaugeVec,
    pub cert_expiry: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub shared_store_errors: IntCounter,
    pub shared_store_syncs: IntCounter,
    pub shared_store_up: IntGauge,
    pub site_requests: IntCounterVec,
    pub upstream_up: IntGaugeVec,
    pub acme_orders: IntCounterVec,
    pub acme_next_renewal: IntGaugeVec,
}

/// The process-wide metrics. Creating them cannot fail for the fixed,
/// valid names below; if it ever did, the registry would simply lack them.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "visitord_requests_total",
            "Requests answered, by route, HTTP status and project.",
            &["route", "status", "project"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "visitord_request_duration_seconds",
                "Time from request head to the end of the answer, by route.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("histogram: {e}"));
        let _ = registry.register(Box::new(request_duration.clone()));
        let origin_rejections = counter(
            &registry,
            "visitord_origin_rejections_total",
            "API requests refused by the origin policy, by reason.",
            &["reason"],
        );
        let rate_limited = counter(
            &registry,
            "visitord_rate_limited_total",
            "Requests refused with 429, and connections closed over the per-address cap, by which limit was exceeded.",
            &["reason"],
        );
        let closed_connections = counter(
            &registry,
            "visitord_closed_connections_total",
            "Connections visitord closed for a limit before a request was read: TLS handshake or request head too slow, request head too large.",
            &["reason"],
        );
        let reloads = counter(
            &registry,
            "visitord_reloads_total",
            "Snapshot rebuilds, by the kind of input that decided the result and the result.",
            &["kind", "result"],
        );
        // The success series exists from the start, so that dashboards
        // show reloads as zero rather than as no data.
        reloads.with_label_values(&["snapshot", "ok"]);
        let reload_ok = IntGauge::new(
            "visitord_config_last_reload_successful",
            "1 when the files on disk are what serves; 0 while the last reload was refused.",
        )
        .unwrap_or_else(|e| unreachable!("gauge: {e}"));
        reload_ok.set(1);
        let _ = registry.register(Box::new(reload_ok.clone()));
        let snapshot_generation = IntGauge::new(
            "visitord_snapshot_generation",
            "Generation of the snapshot serving requests (1 at start, +1 per successful reload).",
        )
        .unwrap_or_else(|e| unreachable!("gauge: {e}"));
        let _ = registry.register(Box::new(snapshot_generation.clone()));
        let open_connections = IntGauge::new(
            "visitord_open_connections",
            "Connections holding a place in the connection limits now, from accept (before TLS) to close.",
        )
        .unwrap_or_else(|e| unreachable!("gauge: {e}"));
        let _ = registry.register(Box::new(open_connections.clone()));
        let geo_build = gauge_vec(
            &registry,
            "visitord_geo_database_build_timestamp_seconds",
            "Build time of each loaded geo database, from its metadata.",
            &["database"],
        );
        let cert_expiry = gauge_vec(
            &registry,
            "visitord_tls_certificate_expiry_timestamp_seconds",
            "notAfter of each loaded certificate, by its first name.",
            &["name"],
        );
        let build_info = gauge_vec(
            &registry,
            "visitord_build_info",
            "Always 1; the version label tells which build runs.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let shared_store_errors = plain_counter(
            &registry,
            "visitord_shared_store_errors_total",
            "Failed connections to and exchanges with the shared store (project limits then count on this node).",
        );
        let shared_store_syncs = plain_counter(
            &registry,
            "visitord_shared_store_syncs_total",
            "Exchanges of project counts with the shared store that succeeded.",
        );
        let shared_store_up = IntGauge::new(
            "visitord_shared_store_up",
            "1 while the last exchange with the shared store succeeded, else 0 (also without one).",
        )
        .unwrap_or_else(|e| unreachable!("gauge: {e}"));
        let _ = registry.register(Box::new(shared_store_up.clone()));
        let site_requests = counter(
            &registry,
            "visitord_site_requests_total",
            "Requests for sites visitord stands in front of, by site (its first host) and status class (`none`: the client left before an answer).",
            &["site", "status_class"],
        );
        let upstream_up = gauge_vec(
            &registry,
            "visitord_upstream_up",
            "1 when every address of a site's upstream passes its health checks, by site and upstream as configured.",
            &["site", "upstream"],
        );
        let acme_orders = counter(
            &registry,
            "visitord_acme_orders_total",
            "ACME certificate orders placed by this node, by result (ok, error).",
            &["result"],
        );
        let acme_next_renewal = gauge_vec(
            &registry,
            "visitord_acme_next_renewal_timestamp_seconds",
            "When the next ACME order for each managed name is due (now for a name waiting for its first certificate or retrying).",
            &["name"],
        );
        Metrics {
            registry,
            requests,
            request_duration,
            origin_rejections,
            rate_limited,
            closed_connections,
            reloads,
            reload_ok,
            snapshot_generation,
            open_connections,
            geo_build,
            cert_expiry,
            build_info,
            shared_store_errors,
            shared_store_syncs,
            shared_store_up,
            site_requests,
            upstream_up,
            acme_orders,
            acme_next_renewal,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec fails only on an invalid metric family, which
        // the fixed definitions above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The `route` label of request metrics: where a request went
/// (`route::Route::label`), or `unknown` when it failed before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Api,
    Site,
    SiteApi,
    Healthz,
    Readyz,
    Redirect,
    NotFound,
    BadRequest,
    Unknown,
    AcmeChallenge,
}

impl RouteLabel {
    /// Every label, in declaration order (`label as usize` is its index).
    pub const ALL: [RouteLabel; 10] = [
        RouteLabel::Api,
        RouteLabel::Site,
        RouteLabel::SiteApi,
        RouteLabel::Healthz,
        RouteLabel::Readyz,
        RouteLabel::Redirect,
        RouteLabel::NotFound,
        RouteLabel::BadRequest,
        RouteLabel::Unknown,
        RouteLabel::AcmeChallenge,
    ];
    const COUNT: usize = RouteLabel::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Api => "api",
            RouteLabel::Site => "site",
            RouteLabel::SiteApi => "site_api",
            RouteLabel::Healthz => "healthz",
            RouteLabel::Readyz => "readyz",
            RouteLabel::Redirect => "redirect",
            RouteLabel::NotFound => "not_found",
            RouteLabel::BadRequest => "bad_request",
            RouteLabel::Unknown => "unknown",
            RouteLabel::AcmeChallenge => "acme_challenge",
        }
    }
}

/// Every status a request without a project can end with has a slot (a
/// site answers with whatever its upstream sends): 0 for none, 1 to 500
/// for 100 to 599.
fn any_status_slot(status: u16) -> Option<usize> {
    match status {
        0 => Some(0),
        100..=599 => Some(usize::from(status - 99)),
        _ => None,
    }
}
const ANY_STATUS_SLOTS: usize = 501;

/// The statuses of the API's own answers for a project have slots; any
/// other is looked up per request.
fn status_slot(status: u16) -> Option<usize> {
    Some(match status {
        200 => 0,
        204 => 1,
        403 => 2,
        429 => 3,
        0 => 4,
        400 => 5,
        404 => 6,
        308 => 7,
        _ => return None,
    })
}
const STATUS_SLOTS: usize = 8;

/// Handles of `visitord_requests_total` and
/// `visitord_request_duration_seconds` for the label sets nearly every
/// request has, each resolved on first use. `with_label_values` hashes the
/// labels and takes the family's lock on every call, a lock both server
/// threads would contend for. One per snapshot: project slots are indexes
/// into its project list. A handle resolved twice (by a new snapshot) is the
/// same series.
pub struct RequestMetrics {
    /// `[route][any status]`, requests without a project.
    plain: Box<[OnceLock<IntCounter>]>,
    /// `[project][status]`, `api` requests for a project.
    api: Box<[OnceLock<IntCounter>]>,
    durations: [OnceLock<Histogram>; RouteLabel::COUNT],
}

impl RequestMetrics {
    /// Slots for `projects` projects; nothing is resolved (so no series is
    /// created) until a request needs it.
    pub fn new(projects: usize) -> RequestMetrics {
        let slots = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        RequestMetrics {
            plain: slots(RouteLabel::COUNT * ANY_STATUS_SLOTS),
            api: slots(projects * STATUS_SLOTS),
            durations: Default::default(),
        }
    }

    /// Counts one answered request; `project` is the project's index in
    /// the snapshot and its id.
    pub fn observe(
        &self,
        route: RouteLabel,
        status: u16,
        project: Option<(usize, &str)>,
        seconds: f64,
    ) {
        let r = route as usize;
        let slot = match project {
            None => any_status_slot(status).and_then(|s| self.plain.get(r * ANY_STATUS_SLOTS + s)),
            Some((p, _)) if route == RouteLabel::Api => {
                status_slot(status).and_then(|s| self.api.get(p * STATUS_SLOTS + s))
            }
            Some(_) => None,
        };
        let count = || {
            let project = project.map_or("", |(_, id)| id);
            METRICS
                .requests
                .with_label_values(&[route.as_str(), &status_label(status), project])
        };
        match slot {
            Some(slot) => slot.get_or_init(count).inc(),
            None => count().inc(),
        }
        let duration = || {
            METRICS
                .request_duration
                .with_label_values(&[route.as_str()])
        };
        match self.durations.get(r) {
            Some(slot) => slot.get_or_init(duration).observe(seconds),
            None => duration().observe(seconds),
        }
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("projects", &(self.api.len() / STATUS_SLOTS))
            .finish_non_exhaustive()
    }
}

/// Status classes of `visitord_site_requests_total`, by slot.
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_slot(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// Handles of `visitord_site_requests_total` for one snapshot's sites,
/// each resolved on first use (see `RequestMetrics`).
pub struct SiteMetrics {
    labels: Box<[String]>,
    /// `[site][status class]`.
    handles: Box<[OnceLock<IntCounter>]>,
}

impl SiteMetrics {
    /// Slots for the sites named `labels`, in snapshot order.
    pub fn new(labels: Vec<String>) -> SiteMetrics {
        let handles = (0..labels.len() * STATUS_CLASSES.len())
            .map(|_| OnceLock::new())
            .collect();
        SiteMetrics {
            labels: labels.into(),
            handles,
        }
    }

    /// Counts one request for site `index` answered with `status` (0: none).
    pub fn observe(&self, index: usize, status: u16) {
        let class = status_class_slot(status);
        let (Some(label), Some(slot)) = (
            self.labels.get(index),
            self.handles.get(index * STATUS_CLASSES.len() + class),
        ) else {
            return;
        };
        slot.get_or_init(|| {
            METRICS
                .site_requests
                .with_label_values(&[label.as_str(), STATUS_CLASSES[class]])
        })
        .inc();
    }
}

impl std::fmt::Debug for SiteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteMetrics")
            .field("sites", &self.labels)
            .finish_non_exhaustive()
    }
}

/// A status as a label; no allocation for the usual ones.
pub fn status_label(status: u16) -> Cow<'static, str> {
    match status {
        0 => Cow::Borrowed("0"),
        200 => Cow::Borrowed("200"),
        204 => Cow::Borrowed("204"),
        403 => Cow::Borrowed("403"),
        other => Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_label_has_its_own_slot() {
        for (k, label) in RouteLabel::ALL.iter().enumerate() {
            assert_eq!(*label as usize, k, "{label:?}");
        }
        let m = RequestMetrics::new(0);
        assert!(m
            .plain
            .get((RouteLabel::COUNT - 1) * ANY_STATUS_SLOTS + 500)
            .is_some());
        assert_eq!(m.durations.len(), RouteLabel::ALL.len());
        assert_eq!(any_status_slot(599), Some(ANY_STATUS_SLOTS - 1));
        assert_eq!(any_status_slot(600), None);
    }

    #[test]
    fn request_handles_count_the_same_series_as_label_lookups() {
        let m = RequestMetrics::new(2);
        let count = |route: &str, status: &str, project: &str| {
            METRICS
                .requests
                .with_label_values(&[route, status, project])
                .get()
        };
        type Case<'a> = (RouteLabel, u16, Option<(usize, &'a str)>, &'a str);
        let cases: [Case<'_>; 9] = [
            (RouteLabel::Api, 200, Some((1, "handles-b")), "handles-b"),
            (RouteLabel::Api, 403, Some((0, "handles-a")), "handles-a"),
            (RouteLabel::Api, 418, Some((0, "handles-a")), "handles-a"),
            (RouteLabel::Site, 502, None, ""),
            (RouteLabel::Site, 100, None, ""),
            (RouteLabel::Site, 599, None, ""),
            (RouteLabel::Healthz, 200, None, ""),
            (RouteLabel::Unknown, 0, None, ""),
            (RouteLabel::AcmeChallenge, 404, None, ""),
        ];
        for (route, status, project, label) in cases {
            let status_text = status.to_string();
            let before = count(route.as_str(), &status_text, label);
            m.observe(route, status, project, 0.001);
            m.observe(route, status, project, 0.001);
            assert_eq!(
                count(route.as_str(), &status_text, label),
                before + 2,
                "{route:?} {status}"
            );
        }
        // Another snapshot's handles are the same series.
        let again = RequestMetrics::new(2);
        let before = count("api", "200", "handles-b");
        again.observe(RouteLabel::Api, 200, Some((1, "handles-b")), 0.001);
        assert_eq!(count("api", "200", "handles-b"), before + 1);
        let durations = METRICS
            .request_duration
            .with_label_values(&["healthz"])
            .get_sample_count();
        m.observe(RouteLabel::Healthz, 200, None, 0.5);
        assert_eq!(
            METRICS
                .request_duration
                .with_label_values(&["healthz"])
                .get_sample_count(),
            durations + 1
        );
    }

    #[test]
    fn site_requests_count_by_site_and_status_class() {
        let m = SiteMetrics::new(vec!["classes-a.example".into(), "classes-b.example".into()]);
        let count = |site: &str, class: &str| {
            METRICS
                .site_requests
                .with_label_values(&[site, class])
                .get()
        };
        for (status, class) in [
            (200, "2xx"),
            (304, "3xx"),
            (502, "5xx"),
            (0, "none"),
            (101, "1xx"),
        ] {
            let before = count("classes-b.example", class);
            m.observe(1, status);
            assert_eq!(count("classes-b.example", class), before + 1, "{status}");
        }
        assert_eq!(count("classes-a.example", "2xx"), 0);
        // An index no snapshot has is ignored, not a panic.
        m.observe(2, 200);
    }

    /// The exposition must be valid Prometheus text: checked with a small
    /// parser of the format here, and with `promtool` in the integration
    /// tests when it is installed.
    #[test]
    fn exposition_is_well_formed() {
        let m = &*METRICS;
        m.requests.with_label_values(&["api", "200", "demo"]).inc();
        m.request_duration
            .with_label_values(&["api"])
            .observe(0.001);
        m.origin_rejections.with_label_values(&["not_listed"]).inc();
        m.reloads.with_label_values(&["config", "error"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap();
                assert!(name.starts_with("visitord_"), "{line}");
                assert!(families.insert(name.to_owned()), "duplicate TYPE: {line}");
                assert!(
                    matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                families.iter().any(|f| name == f
                    || name
                        .strip_prefix(f.as_str())
                        .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count"))),
                "sample without TYPE: {line}"
            );
            if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
                assert!(labels.ends_with('}'), "{line}");
            }
        }
        for name in [
            "visitord_requests_total",
            "visitord_request_duration_seconds",
            "visitord_origin_rejections_total",
            "visitord_reloads_total",
            "visitord_snapshot_generation",
            "visitord_build_info",
            "visitord_shared_store_errors_total",
            "visitord_shared_store_syncs_total",
            "visitord_shared_store_up",
        ] {
            assert!(families.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(&format!(
            "visitord_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
