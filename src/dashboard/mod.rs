//! The dashboard of the metrics listener (docs/design.md §7): what the operator
//! looks at — per-project usage, refusals and the most refused origins,
//! databases, certificates, sites and upstream health, recent reloads.
//!
//! [`Status::collect`] gathers the facts from a snapshot into plain data;
//! `page` renders them as a self-contained HTML page (no script, no
//! external asset, a strict CSP) and [`Status::json`] as `/status.json`.
//! No address of any visitor is in here: usage keeps origins (sites), with
//! IP-literal origins replaced (`usage::IP_ORIGIN`).

mod chart;
mod page;

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::certs::tls::LoadedCertificate;
use crate::clock;
use crate::lookup::geo::DatabaseInfo;
use crate::observe::reload_history::ReloadRecord;
use crate::observe::usage::UsageReport;
use crate::sites::Site;
use crate::snapshot::Snapshot;

pub use page::{render, CONTENT_SECURITY_POLICY};

const DAY: i64 = 86_400;

/// Everything the dashboard shows, as of one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// The generation of the snapshot serving requests.
    pub generation: u64,
    pub now: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub snapshot_loaded_at: String,
    pub projects: Vec<ProjectStatus>,
    /// API requests that named no known project (bad or unknown `pid`,
    /// and those refused before the `pid` was read).
    pub no_project: UsageReport,
    pub databases: Vec<DatabaseStatus>,
    pub certificates: Vec<CertificateStatus>,
    pub sites: Vec<SiteStatus>,
    /// Newest first.
    pub reloads: Vec<ReloadStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectStatus {
    pub id: String,
    #[serde(flatten)]
    pub usage: UsageReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatus {
    pub file: String,
    /// The metadata's `database_type`.
    #[serde(rename = "type")]
    pub database_type: String,
    /// How visitord reads its records: `city`, `asn` or `flat`.
    pub shape: &'static str,
    pub built_at: String,
    pub age_days: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub names: Vec<String>,
    /// Where it comes from: `file` (`tls.certificates`).
    pub source: &'static str,
    pub file: String,
    pub expires_at: String,
    pub days_left: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteStatus {
    /// The site's first host, as in `visitord_site_requests_total`.
    pub site: String,
    pub hosts: Vec<String>,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    /// As configured.
    pub upstream: String,
    /// The address it resolved to.
    pub address: String,
    pub up: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub at: String,
    pub trigger: &'static str,
    /// The generation serving after it.
    pub generation: u64,
    /// `ok`, or `refused` (the previous snapshot kept serving).
    pub result: &'static str,
    pub reason: Option<String>,
}

/// The clocks a status is taken at: wall time for what is shown, the
/// monotonic instant for the usage ring.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: SystemTime,
    pub instant: Instant,
    pub started: SystemTime,
}

impl Status {
    pub fn collect(snap: &Snapshot, reloads: &[ReloadRecord], clock: Clock) -> Status {
        let now = clock::unix_seconds(clock.now);
        let usage = &snap.recorders.usage;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            generation: snap.generation,
            now: timestamp(clock.now),
            started_at: timestamp(clock.started),
            uptime_seconds: clock
                .now
                .duration_since(clock.started)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
            snapshot_loaded_at: timestamp(snap.loaded_at),
            projects: usage
                .projects(clock.instant)
                .into_iter()
                .map(|(id, usage)| ProjectStatus {
                    id: id.to_owned(),
                    usage,
                })
                .collect(),
            no_project: usage.unattributed(clock.instant),
            databases: snap
                .geo
                .databases()
                .iter()
                .map(|db| DatabaseStatus::of(db, now))
                .collect(),
            certificates: snap
                .certificates
                .iter()
                .map(|c| CertificateStatus::of(c, now))
                .collect(),
            sites: snap.sites.iter().map(SiteStatus::of).collect(),
            reloads: reloads.iter().map(ReloadStatus::of).collect(),
        }
    }

    /// `/status.json`.
    pub fn json(&self) -> Vec<u8> {
        // Plain structs of strings and numbers always serialize.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

impl DatabaseStatus {
    fn of(db: &DatabaseInfo, now: i64) -> DatabaseStatus {
        let built = i64::try_from(db.build_epoch).unwrap_or(i64::MAX);
        DatabaseStatus {
            file: db.path.display().to_string(),
            database_type: db.database_type.clone(),
            shape: db.shape.as_str(),
            built_at: clock::rfc3339(built),
            age_days: (now - built).div_euclid(DAY),
        }
    }
}

impl CertificateStatus {
    fn of(c: &LoadedCertificate, now: i64) -> CertificateStatus {
        CertificateStatus {
            names: c.names.clone(),
            source: c.source.as_label(),
            file: c.files.cert.display().to_string(),
            expires_at: clock::rfc3339(c.not_after),
            days_left: (c.not_after - now).div_euclid(DAY),
        }
    }
}

impl SiteStatus {
    fn of(s: &Site) -> SiteStatus {
        SiteStatus {
            site: s.label.clone(),
            hosts: s.config.hosts.iter().map(ToString::to_string).collect(),
            upstreams: s
                .upstreams
                .iter()
                .map(|u| UpstreamStatus {
                    upstream: u.spec.clone(),
                    address: u.addr.to_string(),
                    up: u.health.is_up(),
                })
                .collect(),
        }
    }
}

impl ReloadStatus {
    fn of(r: &ReloadRecord) -> ReloadStatus {
        ReloadStatus {
            at: timestamp(r.at),
            trigger: r.trigger,
            generation: r.generation,
            result: if r.refused.is_none() { "ok" } else { "refused" },
            reason: r.refused.clone(),
        }
    }
}

/// RFC 3339 in UTC, to the second.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::reload_history::ReloadRecord;
    use crate::observe::verdict::{Refused, Verdict};
    use crate::request::route::tests::snapshot;

    pub(super) fn status() -> Status {
        let snap = snapshot(
            "[[site]]\nhosts = [\"shop.example.com\", \"*.shop.example.com\"]\nupstreams = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
        );
        let at = Instant::now();
        let demo = |refused| Verdict {
            project: Some(0),
            refused,
        };
        snap.recorders.usage.record(at, 200, &demo(None));
        snap.recorders.usage.record(
            at,
            403,
            &demo(Some(Refused::Origin {
                reason: crate::origin::DenyReason::NotListed,
                shown: Some("https://<b>evil</b>.example".into()),
            })),
        );
        snap.sites.get(0).unwrap().upstreams[1].health.set(false);
        // Five days after the shipped database was built.
        let built = snap.geo.databases()[0].build_epoch;
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(built + 5 * 86_400);
        let reloads = [
            ReloadRecord {
                at: started + Duration::from_secs(90),
                trigger: "SIGHUP",
                generation: 1,
                refused: Some("projects.toml: project[0].id: \"<x>\": invalid".into()),
            },
            ReloadRecord {
                at: started,
                trigger: "start",
                generation: 1,
                refused: None,
            },
        ];
        Status::collect(
            &snap,
            &reloads,
            Clock {
                now: started + Duration::from_secs(3 * 3600 + 120),
                instant: at,
                started,
            },
        )
    }

    #[test]
    fn collects_what_the_snapshot_knows() {
        let s = status();
        assert_eq!(s.uptime_seconds, 3 * 3600 + 120);
        assert!(
            s.started_at.ends_with('Z') && s.started_at.len() == 20,
            "{}",
            s.started_at
        );
        let demo = &s.projects[0];
        assert_eq!(demo.id, "demo");
        assert_eq!(demo.usage.answers["200"], 1);
        assert_eq!(
            demo.usage.top_refused_origins[0].origin,
            "https://<b>evil</b>.example"
        );
        assert_eq!(s.databases.len(), 1);
        assert_eq!(s.databases[0].age_days, 5, "{:?}", s.databases[0]);
        assert_eq!(s.databases[0].shape, "flat");
        let site = &s.sites[0];
        assert_eq!(site.site, "shop.example.com");
        assert_eq!(site.hosts, ["shop.example.com", "*.shop.example.com"]);
        let up: Vec<bool> = site.upstreams.iter().map(|u| u.up).collect();
        assert_eq!(up, [true, false]);
        assert_eq!(s.reloads[0].result, "refused");
        assert_eq!(s.reloads[1].result, "ok");
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_slice(&status().json()).unwrap();
        for key in [
            "version",
            "generation",
            "uptime_seconds",
            "projects",
            "no_project",
            "databases",
            "certificates",
            "sites",
            "reloads",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        let demo = &v["projects"][0];
        assert_eq!(demo["id"], "demo");
        assert_eq!(demo["answers"]["403"], 1);
        assert_eq!(demo["refusals"]["not_listed"], 1);
        assert_eq!(demo["requests_per_minute"].as_array().unwrap().len(), 60);
        assert_eq!(demo["top_refused_origins"][0]["count"], 1);
        assert_eq!(v["databases"][0]["type"], "country ipvAll");
        assert_eq!(v["sites"][0]["upstreams"][1]["up"], false);
        assert_eq!(v["reloads"][1]["reason"], serde_json::Value::Null);
    }
}
