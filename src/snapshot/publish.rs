//! The gauges that describe a snapshot: its generation, databases,
//! certificates and upstream health.

use crate::observe::metrics::METRICS;
use crate::snapshot::Snapshot;

/// Publishes the gauges that describe this snapshot, once it serves.
pub fn publish_metrics(snap: &Snapshot) {
    let m = &*METRICS;
    m.snapshot_generation.set(snap.generation as i64);
    m.geo_build.reset();
    for db in snap.geo.databases() {
        m.geo_build
            .with_label_values(&[db.name.as_str()])
            .set(db.build_epoch as i64);
    }
    m.cert_expiry.reset();
    for cert in snap.certificates.iter() {
        let name = cert.names.first().map_or("", String::as_str);
        m.cert_expiry.with_label_values(&[name]).set(cert.not_after);
    }
    m.upstream_up.reset();
    publish_upstream_health(snap);
}

/// Sets `visitord_upstream_up` from the health state, which changes
/// between reloads: called at each scrape too (without the reset that
/// drops removed sites, so a scrape never sees the gauge half-filled).
/// An upstream as configured is up when every address it resolved to
/// is.
pub fn publish_upstream_health(snap: &Snapshot) {
    let gauge = &METRICS.upstream_up;
    for site in snap.sites.iter() {
        let mut specs: Vec<(&str, bool)> = Vec::new();
        for u in &site.upstreams {
            let up = u.health.is_up();
            match specs.iter_mut().find(|(spec, _)| *spec == u.spec) {
                Some((_, all_up)) => *all_up &= up,
                None => specs.push((&u.spec, up)),
            }
        }
        for (spec, up) in specs {
            gauge
                .with_label_values(&[site.label.as_str(), spec])
                .set(i64::from(up));
        }
    }
}
