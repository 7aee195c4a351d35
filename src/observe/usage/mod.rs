//! Per-project API usage for the dashboard (docs/design.md §7): requests per minute
//! over the last hour, answers by status, refusals by reason, rate-limit
//! refusals, and the origins most often refused.
//!
//! Recording an allowed request costs a few relaxed atomic adds: no lock
//! and no allocation. Only a refused origin takes a lock, on its project's
//! top-K of origins (bounded memory whatever a caller sends).
//!
//! Origins are sites, never visitors: what is kept is the normalised
//! `scheme://host[:port]` of a refused `Origin`/`Referer`, and an origin
//! whose host is an IP literal is kept as [`IP_ORIGIN`], so no address
//! reaches the dashboard. Nothing else about a request is kept.
//!
//! The counters of a project survive reloads: each snapshot's [`Usage`]
//! takes over its predecessor's counters by project id.

mod ring;
mod top;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::limits::Exceeded;
use crate::observe::verdict::Verdict;
use crate::origin::{DenyReason, Origin};

pub use ring::{MinuteRing, MINUTES};
pub use top::{Counted, TopK};

/// Refused origins remembered per project.
pub const TOP_ORIGINS: usize = 10;

/// What a refused origin whose host is an IP literal is recorded as.
pub const IP_ORIGIN: &str = "(an IP address)";

/// The limits a request (not a connection) can run into, as the dashboard
/// lists them.
const REQUEST_LIMITS: [Exceeded; 2] = [Exceeded::ClientRate, Exceeded::ProjectRate];

/// Statuses counted on their own; anything else is `other`.
const STATUSES: [(u16, &str); 4] = [(200, "200"), (204, "204"), (403, "403"), (429, "429")];
const OTHER: usize = STATUSES.len();

/// The text a refused origin is recorded as: `scheme://host[:port]` with
/// the host normalised (lowercase, punycode, no trailing dot), or
/// [`IP_ORIGIN`] when the host is an IP address.
pub fn origin_label(origin: &Origin) -> Box<str> {
    if origin.is_ip() {
        return IP_ORIGIN.into();
    }
    let scheme = origin.scheme().as_str();
    match origin.port() {
        Some(port) => format!("{scheme}://{}:{port}", origin.host()).into(),
        None => format!("{scheme}://{}", origin.host()).into(),
    }
}

/// The counters of one project (or of the requests that named none).
#[derive(Debug)]
pub struct ProjectUsage {
    requests: MinuteRing,
    /// Refused with 403 or 429.
    refused: MinuteRing,
    answers: [AtomicU64; STATUSES.len() + 1],
    refusals: [AtomicU64; DenyReason::COUNT],
    limited: [AtomicU64; Exceeded::COUNT],
    origins: Mutex<TopK>,
}

impl Default for ProjectUsage {
    fn default() -> Self {
        ProjectUsage {
            requests: MinuteRing::default(),
            refused: MinuteRing::default(),
            answers: Default::default(),
            refusals: Default::default(),
            limited: Default::default(),
            origins: Mutex::new(TopK::new(TOP_ORIGINS)),
        }
    }
}

impl ProjectUsage {
    fn record(&self, minute: u32, status: u16, verdict: &Verdict) {
        self.requests.add(minute);
        let slot = STATUSES
            .iter()
            .position(|(s, _)| *s == status)
            .unwrap_or(OTHER);
        self.answers[slot].fetch_add(1, Relaxed);
        if verdict.refused.is_none() {
            return;
        }
        self.refused.add(minute);
        if let Some(reason) = verdict.rejection() {
            self.refusals[reason.slot()].fetch_add(1, Relaxed);
        }
        if let Some(exceeded) = verdict.limited() {
            self.limited[exceeded.slot()].fetch_add(1, Relaxed);
        }
        if let Some(origin) = verdict.shown_origin() {
            // A poisoned lock only means another thread panicked mid-add;
            // the summary is still a valid one.
            let mut top = self.origins.lock().unwrap_or_else(|e| e.into_inner());
            top.add(origin);
        }
    }

    /// The figures as of `minute` (the running minute).
    pub fn report(&self, minute: u32) -> UsageReport {
        let requests = self.requests.last_hour(minute);
        let refused = self.refused.last_hour(minute);
        let count = |a: &AtomicU64| a.load(Relaxed);
        let mut answers: BTreeMap<&'static str, u64> = STATUSES
            .iter()
            .zip(&self.answers)
            .map(|((_, label), n)| (*label, count(n)))
            .collect();
        answers.insert("other", count(&self.answers[OTHER]));
        let top = self.origins.lock().unwrap_or_else(|e| e.into_inner()).top();
        UsageReport {
            requests_this_minute: requests[MINUTES - 1],
            requests_last_hour: requests.iter().sum(),
            refused_last_hour: refused.iter().sum(),
            requests_per_minute: requests.to_vec(),
            refused_per_minute: refused.to_vec(),
            answers,
            refusals: DenyReason::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(r, n)| (r.as_label(), count(n)))
                .collect(),
            rate_limited: REQUEST_LIMITS
                .iter()
                .map(|e| (e, &self.limited[e.slot()]))
                .map(|(e, n)| (e.as_label(), count(n)))
                .collect(),
            top_refused_origins: top
                .into_iter()
                .map(|c| RefusedOrigin {
                    origin: c.key.into(),
                    count: c.count,
                    error: c.error,
                })
                .collect(),
        }
    }
}

/// What the dashboard shows of one project. Counts by status, reason and
/// limit are since the process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub requests_this_minute: u64,
    pub requests_last_hour: u64,
    pub refused_last_hour: u64,
    /// Requests in each minute of the last hour, oldest first; the last
    /// minute is still running.
    pub requests_per_minute: Vec<u64>,
    /// Of those, refused with 403 or 429.
    pub refused_per_minute: Vec<u64>,
    /// Answers by status: `200`, `204` (preflight), `403`, `429`, `other`.
    pub answers: BTreeMap<&'static str, u64>,
    /// 403s by reason (the labels of `visitord_origin_rejections_total`).
    pub refusals: BTreeMap<&'static str, u64>,
    /// 429s by limit (the labels of `visitord_rate_limited_total`).
    pub rate_limited: BTreeMap<&'static str, u64>,
    /// The most frequently refused origins, most frequent first.
    pub top_refused_origins: Vec<RefusedOrigin>,
}

/// A refused origin and how often it was refused: between `count - error`
/// and `count` times (see `top`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedOrigin {
    pub origin: String,
    pub count: u64,
    pub error: u64,
}

/// The counters of one snapshot's projects, by index in its project list,
/// and of the API requests that named no known project.
#[derive(Debug)]
pub struct Usage {
    /// Minute 0; shared by every snapshot of the process.
    epoch: Instant,
    ids: Vec<Box<str>>,
    projects: Vec<Arc<ProjectUsage>>,
    unattributed: Arc<ProjectUsage>,
}

impl Usage {
    /// Counters for the projects `ids` (in snapshot order), taking over
    /// those of `previous` for ids it had.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>, previous: Option<&Usage>) -> Usage {
        let ids: Vec<Box<str>> = ids.into_iter().map(Box::from).collect();
        let projects = ids
            .iter()
            .map(|id| {
                previous
                    .and_then(|p| {
                        let i = p.ids.iter().position(|old| old == id)?;
                        p.projects.get(i)
                    })
                    .map_or_else(Arc::default, Arc::clone)
            })
            .collect();
        Usage {
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
            ids,
            projects,
            unattributed: previous.map_or_else(Arc::default, |p| p.unattributed.clone()),
        }
    }

    /// Minutes since the epoch, for `at`.
    pub fn minute(&self, at: Instant) -> u32 {
        let secs = at.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs / 60).unwrap_or(u32::MAX)
    }

    /// Counts an API request that started at `at` and was answered with
    /// `status` (0: none), under its verdict's project (none: it named no
    /// known project).
    pub fn record(&self, at: Instant, status: u16, verdict: &Verdict) {
        let slot = match verdict.project {
            Some(i) => self.projects.get(i).unwrap_or(&self.unattributed),
            None => &self.unattributed,
        };
        slot.record(self.minute(at), status, verdict);
    }

    /// Each project's figures as of `now`, by id in snapshot order.
    pub fn projects(&self, now: Instant) -> Vec<(&str, UsageReport)> {
        let minute = self.minute(now);
        self.ids
            .iter()
            .zip(&self.projects)
            .map(|(id, u)| (&**id, u.report(minute)))
            .collect()
    }

    /// The figures of API requests that named no known project.
    pub fn unattributed(&self, now: Instant) -> UsageReport {
        self.unattributed.report(self.minute(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::verdict::Refused;
    use crate::origin::{caller_origin, parse_origin};
    use std::time::Duration;

    fn refused(reason: DenyReason, origin: Option<&str>) -> Verdict {
        Verdict {
            project: Some(0),
            refused: Some(Refused::Origin {
                reason,
                shown: origin.map(Into::into),
            }),
        }
    }

    fn project(project: Option<usize>) -> Verdict {
        Verdict {
            project,
            refused: None,
        }
    }

    #[test]
    fn origins_are_recorded_normalised_and_ip_literals_never() {
        let label = |raw: &str| origin_label(&parse_origin(raw).unwrap());
        assert_eq!(&*label("https://Evil.Example."), "https://evil.example");
        assert_eq!(
            &*label("http://shop.example:8080"),
            "http://shop.example:8080"
        );
        assert_eq!(&*label("https://shop.example:443"), "https://shop.example");
        assert_eq!(&*label("https://203.0.113.9"), IP_ORIGIN);
        assert_eq!(&*label("https://[2001:db8::1]:8443"), IP_ORIGIN);
        assert_eq!(&*label("http://127.0.0.1:3000"), IP_ORIGIN);
        let referer = caller_origin(None, Some(b"https://Site.Example/page?q=1")).unwrap();
        assert_eq!(&*origin_label(&referer), "https://site.example");
    }

    #[test]
    fn a_project_counts_answers_refusals_limits_and_origins() {
        let t0 = Instant::now();
        let usage = Usage::new(["demo", "shop"], None);
        for _ in 0..3 {
            usage.record(t0, 200, &project(Some(0)));
        }
        usage.record(
            t0,
            403,
            &refused(DenyReason::NotListed, Some("https://a.example")),
        );
        usage.record(
            t0,
            403,
            &refused(DenyReason::NotListed, Some("https://b.example")),
        );
        usage.record(
            t0,
            403,
            &refused(DenyReason::NotListed, Some("https://b.example")),
        );
        usage.record(t0, 403, &refused(DenyReason::NoOrigin, None));
        usage.record(
            t0,
            429,
            &Verdict {
                project: Some(0),
                refused: Some(Refused::Limit(Exceeded::ProjectRate)),
            },
        );
        usage.record(t0, 400, &project(None));

        let projects = usage.projects(t0);
        let (id, demo) = &projects[0];
        assert_eq!(*id, "demo");
        assert_eq!(demo.requests_this_minute, 8);
        assert_eq!(demo.requests_last_hour, 8);
        assert_eq!(demo.refused_last_hour, 5);
        assert_eq!(demo.requests_per_minute.len(), MINUTES);
        assert_eq!(demo.answers["200"], 3);
        assert_eq!(demo.answers["403"], 4);
        assert_eq!(demo.answers["429"], 1);
        assert_eq!(demo.answers["other"], 0);
        assert_eq!(demo.refusals["not_listed"], 3);
        assert_eq!(demo.refusals["no_origin"], 1);
        assert_eq!(demo.refusals["unknown_project"], 0);
        assert_eq!(demo.rate_limited["project_rate"], 1);
        let origins: Vec<(&str, u64)> = demo
            .top_refused_origins
            .iter()
            .map(|o| (o.origin.as_str(), o.count))
            .collect();
        assert_eq!(
            origins,
            [("https://b.example", 2), ("https://a.example", 1)]
        );

        let (id, shop) = &projects[1];
        assert_eq!(*id, "shop");
        assert_eq!(shop.requests_last_hour, 0);
        let other = usage.unattributed(t0);
        assert_eq!(other.answers["other"], 1);
        assert_eq!(other.requests_last_hour, 1);
    }

    #[test]
    fn minutes_count_from_the_epoch_and_the_chart_moves() {
        let usage = Usage::new(["demo"], None);
        let t0 = usage.epoch;
        usage.record(t0, 200, &project(Some(0)));
        usage.record(t0 + Duration::from_secs(61), 200, &project(Some(0)));
        usage.record(t0 + Duration::from_secs(61), 200, &project(Some(0)));
        let report = &usage.projects(t0 + Duration::from_secs(125))[0].1;
        assert_eq!(&report.requests_per_minute[MINUTES - 3..], [1, 2, 0]);
        assert_eq!(report.requests_this_minute, 0);
        assert_eq!(report.requests_last_hour, 3);
    }

    #[test]
    fn counters_survive_a_reload_by_project_id() {
        let t0 = Instant::now();
        let first = Usage::new(["a", "b"], None);
        first.record(t0, 200, &project(Some(1)));
        first.record(t0, 200, &project(None));
        // "b" moved to index 0, "a" was removed, "c" is new.
        let second = Usage::new(["b", "c"], Some(&first));
        let projects = second.projects(t0);
        assert_eq!(projects[0].0, "b");
        assert_eq!(projects[0].1.requests_last_hour, 1);
        assert_eq!(projects[1].1.requests_last_hour, 0);
        assert_eq!(second.unattributed(t0).requests_last_hour, 1);
        // Both snapshots count into the same place while requests of the
        // old one finish.
        first.record(t0, 200, &project(Some(1)));
        assert_eq!(second.projects(t0)[0].1.requests_last_hour, 2);
        assert_eq!(second.epoch, first.epoch);
    }

    #[test]
    fn an_index_out_of_range_counts_as_no_project() {
        let t0 = Instant::now();
        let usage = Usage::new(["a"], None);
        usage.record(t0, 0, &project(Some(7)));
        assert_eq!(usage.unattributed(t0).requests_last_hour, 1);
    }
}
