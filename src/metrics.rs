//! Prometheus metrics (DESIGN §7): one registry, handles created once.
//!
//! Labels take bounded values only: routes and reasons are fixed names,
//! project ids come from configuration (anything else is `unknown`), and no
//! metric ever carries an IP address or an origin.

use std::sync::LazyLock;
use std::time::UNIX_EPOCH;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::snapshot::Snapshot;

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
            "Requests refused with 429, by which limit was exceeded.",
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
        }
    }

    /// Publishes what describes the snapshot now serving.
    pub fn observe_snapshot(&self, snap: &Snapshot) {
        self.snapshot_generation.set(snap.generation as i64);
        self.geo_build.reset();
        for db in snap.geo.databases() {
            self.geo_build
                .with_label_values(&[db.name.as_str()])
                .set(db.build_epoch as i64);
        }
        self.cert_expiry.reset();
        for cert in snap.certificates.iter() {
            let name = cert.names.first().map_or("", String::as_str);
            self.cert_expiry
                .with_label_values(&[name])
                .set(cert.not_after);
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

/// Seconds since the epoch for a SystemTime, 0 before it.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
