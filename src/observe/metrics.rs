//! Prometheus metrics (docs/design.md §7): one registry, handles created once.
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

/// Declares the metric families once, as a table: each line is a field of
/// [`Metrics`], its type, and the constructor with name, help and labels.
macro_rules! metric_families {
    ($( $(#[$doc:meta])* $field:ident: $ty:ty = $make:ident($name:literal, $help:literal $(, [$($label:literal),*])?); )+) => {
        pub struct Metrics {
            registry: Registry,
            $( $(#[$doc])* pub $field: $ty, )+
        }

        impl Metrics {
            fn new() -> Metrics {
                let registry = Registry::new();
                let m = Metrics {
                    $( $field: $make(&registry, $name, $help, &[$($($label),*)?]), )+
                    registry,
                };
                m.initial_values();
                m
            }

            /// The name of every family, in table order (docs and tests
            /// check them).
            pub const FAMILIES: &'static [&'static str] = &[$($name),+];
        }
    };
}

metric_families! {
    requests: IntCounterVec = counter("visitord_requests_total",
        "Requests answered, by route, HTTP status and project.", ["route", "status", "project"]);
    request_duration: HistogramVec = histogram("visitord_request_duration_seconds",
        "Time from request head to the end of the answer, by route.", ["route"]);
    origin_rejections: IntCounterVec = counter("visitord_origin_rejections_total",
        "API requests refused by the origin policy, by reason.", ["reason"]);
    rate_limited: IntCounterVec = counter("visitord_rate_limited_total",
        "Requests refused with 429, and connections closed over the per-address cap, by which limit was exceeded.",
        ["reason"]);
    refusals: IntCounterVec = counter("visitord_refusals_total",
        "Requests visitord refused itself, by kind of refusal (origin, limit, country, body, method, project id, host, head size).",
        ["reason"]);
    closed_connections: IntCounterVec = counter("visitord_closed_connections_total",
        "Connections visitord closed for a limit: TLS handshake, request head or a site request's body too slow, request head too large, a metrics peer outside metrics.allow.",
        ["reason"]);
    reloads: IntCounterVec = counter("visitord_reloads_total",
        "Snapshot rebuilds, by the kind of input that decided the result and the result.", ["kind", "result"]);
    reload_ok: IntGauge = gauge("visitord_config_last_reload_successful",
        "1 when the files on disk are what serves; 0 while the last reload was refused.");
    snapshot_generation: IntGauge = gauge("visitord_snapshot_generation",
        "Generation of the snapshot serving requests (1 at start, +1 per successful reload).");
    open_connections: IntGauge = gauge("visitord_open_connections",
        "Connections holding a place in the connection limits now, from accept (before TLS) to close.");
    geo_build: IntGaugeVec = gauge_vec("visitord_geo_database_build_timestamp_seconds",
        "Build time of each loaded geo database, from its metadata.", ["database"]);
    cert_expiry: IntGaugeVec = gauge_vec("visitord_tls_certificate_expiry_timestamp_seconds",
        "notAfter of each loaded certificate, by its first name.", ["name"]);
    build_info: IntGaugeVec = gauge_vec("visitord_build_info",
        "Always 1; the version label tells which build runs.", ["version"]);
    shared_store_errors: IntCounter = plain_counter("visitord_shared_store_errors_total",
        "Failed connections to and exchanges with the shared store (project limits then count on this node).");
    shared_store_syncs: IntCounter = plain_counter("visitord_shared_store_syncs_total",
        "Exchanges of project counts with the shared store that succeeded.");
    shared_store_up: IntGauge = gauge("visitord_shared_store_up",
        "1 while the last exchange with the shared store succeeded, else 0 (also without one).");
    site_requests: IntCounterVec = counter("visitord_site_requests_total",
        "Requests for sites visitord stands in front of, by site (its first host) and status class (`none`: the client left before an answer).",
        ["site", "status_class"]);
    upstream_up: IntGaugeVec = gauge_vec("visitord_upstream_up",
        "1 when every address of a site's upstream passes its health checks, by site and upstream as configured.",
        ["site", "upstream"]);
    acme_orders: IntCounterVec = counter("visitord_acme_orders_total",
        "ACME certificate orders placed by this node, by result (ok, error).", ["result"]);
    acme_next_renewal: IntGaugeVec = gauge_vec("visitord_acme_next_renewal_timestamp_seconds",
        "When the next ACME order for each managed name is due (now for a name waiting for its first certificate or retrying).",
        ["name"]);
}

/// The process-wide metrics. Creating them cannot fail for the fixed,
/// valid names above; if it ever did, the registry would simply lack them.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Buckets of `visitord_request_duration_seconds`, 100 µs to 10 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, c)
}

fn plain_counter(registry: &Registry, name: &str, help: &str, _: &[&str]) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, c)
}

fn gauge(registry: &Registry, name: &str, help: &str, _: &[&str]) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, g)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, g)
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, h)
}

impl Metrics {
    /// Series that exist from the start, so that dashboards show zero
    /// rather than no data, and the fixed values.
    fn initial_values(&self) {
        self.reloads.with_label_values(&["snapshot", "ok"]);
        self.reload_ok.set(1);
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
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

label_enum! {
    /// The `route` label of request metrics: where a request went
    /// (`route::Route::label`), or `unknown` when it failed before routing.
    pub enum RouteLabel {
        Api => "api",
        Site => "site",
        SiteApi => "site_api",
        Healthz => "healthz",
        Readyz => "readyz",
        Redirect => "redirect",
        NotFound => "not_found",
        BadRequest => "bad_request",
        Unknown => "unknown",
        AcmeChallenge => "acme_challenge",
        Jwks => "jwks",
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
        let r = route.slot();
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
                .with_label_values(&[route.as_label(), &status_label(status), project])
        };
        match slot {
            Some(slot) => slot.get_or_init(count).inc(),
            None => count().inc(),
        }
        let duration = || {
            METRICS
                .request_duration
                .with_label_values(&[route.as_label()])
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
            let before = count(route.as_label(), &status_text, label);
            m.observe(route, status, project, 0.001);
            m.observe(route, status, project, 0.001);
            assert_eq!(
                count(route.as_label(), &status_text, label),
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
