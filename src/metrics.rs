//! Prometheus metrics (DESIGN §7): one registry, handles created once.
//!
//! Labels take bounded values only: routes and reasons are fixed names,
//! project ids come from configuration (anything else is `""`), and no
//! metric ever carries an IP address or an origin.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};
use std::time::UNIX_EPOCH;

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
    pub reloads: IntCounterVec,
    pub snapshot_generation: IntGauge,
    pub geo_build: IntGaugeVec,
    pub cert_expiry: IntGaugeVec,
    pub build_info: IntGaugeVec,
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
        let reloads = counter(
            &registry,
            "visitord_reloads_total",
            "Snapshot rebuilds, by the kind of input that decided the result and the result.",
            &["kind", "result"],
        );
        let snapshot_generation = IntGauge::new(
            "visitord_snapshot_generation",
            "Generation of the snapshot serving requests (1 at start, +1 per successful reload).",
        )
        .unwrap_or_else(|e| unreachable!("gauge: {e}"));
        let _ = registry.register(Box::new(snapshot_generation.clone()));
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
            reloads,
            snapshot_generation,
            geo_build,
            cert_expiry,
            build_info,
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
    Unknown,
    AcmeChallenge,
}

impl RouteLabel {
    const COUNT: usize = 9;

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Api => "api",
            RouteLabel::Site => "site",
            RouteLabel::SiteApi => "site_api",
            RouteLabel::Healthz => "healthz",
            RouteLabel::Readyz => "readyz",
            RouteLabel::Redirect => "redirect",
            RouteLabel::NotFound => "not_found",
            RouteLabel::Unknown => "unknown",
            RouteLabel::AcmeChallenge => "acme_challenge",
        }
    }
}

/// Statuses whose handles are kept, by slot; any other is looked up per
/// request.
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
    /// `[route][status]`, requests without a project.
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
            plain: slots(RouteLabel::COUNT * STATUS_SLOTS),
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
        let slot = match (status_slot(status), project) {
            (Some(s), None) => self.plain.get(r * STATUS_SLOTS + s),
            (Some(s), Some((p, _))) if route == RouteLabel::Api => {
                self.api.get(p * STATUS_SLOTS + s)
            }
            _ => None,
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

/// Seconds since the epoch for a SystemTime, 0 before it.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cases: [Case<'_>; 6] = [
            (RouteLabel::Api, 200, Some((1, "handles-b")), "handles-b"),
            (RouteLabel::Api, 403, Some((0, "handles-a")), "handles-a"),
            (RouteLabel::Api, 418, Some((0, "handles-a")), "handles-a"),
            (RouteLabel::Site, 502, None, ""),
            (RouteLabel::Healthz, 200, None, ""),
            (RouteLabel::Unknown, 200, None, ""),
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
        ] {
            assert!(families.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(&format!(
            "visitord_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
