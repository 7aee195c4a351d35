//! Fleet-wide project limits (docs/fleet.md): one background service that,
//! every [`SYNC_INTERVAL`], sends the shared store what this node admitted
//! per project since the last sync and reads each project's fleet total
//! back. Requests never wait for it: they compare their project's count
//! with the last total read (`project_counts`).
//!
//! The store failing never fails a request. While it is unreachable or
//! slow, each node counts on its own (plus the fleet total it last read for
//! the current minute); the first failure is logged once at warn, every
//! failed attempt counts in `visitord_shared_store_errors_total`, attempts
//! back off up to [`BACKOFF_MAX`], and the first success says so at info.
//! Counts admitted during an outage are sent once the store is back.
//!
//! The setting is read from the serving snapshot at every tick: adding,
//! changing or removing `[limits] shared_store` takes effect without a
//! restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::limits::project_counts::{Pending, ProjectCounts};
use crate::limits::Limiter;
use crate::observe::metrics::METRICS;
use crate::shared_store::{StoreConnection, StoreError, StoreSettings};
use crate::snapshot::{Shared, Snapshot};

/// How often counts are exchanged with the store: the accuracy bound of
/// docs/fleet.md is about two of these plus a round trip.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How often to look for a store when none is configured.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);
/// The wait after the first failure; it doubles with each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exchanges counts with the serving snapshot's shared store. One service
/// for all snapshots: Pingora registers background services once, at start.
pub struct StoreSync {
    shared: Shared,
    limiter: Arc<Limiter>,
}

impl StoreSync {
    pub fn new(shared: Shared, limiter: Arc<Limiter>) -> StoreSync {
        StoreSync { shared, limiter }
    }
}

#[async_trait]
impl BackgroundService for StoreSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let counts = self.limiter.projects();
        let mut link = Link::default();
        let mut generation = 0;
        loop {
            let snap = self.shared.load_full();
            if snap.generation != generation {
                generation = snap.generation;
                counts.retain(|id| snap.projects.get(id).is_some());
            }
            let wanted = snap.shared_store.clone();
            let batch = match wanted {
                Some(_) => counts.pending(limited_projects(&snap), self.limiter.project_window()),
                None => Vec::new(),
            };
            drop(snap);
            let wait = link.tick(wanted, &batch, counts).await;
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The projects whose counts are shared: those with a limit.
fn limited_projects(snap: &Snapshot) -> impl Iterator<Item = &str> {
    snap.projects
        .iter()
        .filter(|p| p.requests_per_minute > 0)
        .map(|p| p.id.as_str())
}

/// The connection to the store in use, and how it has been doing.
#[derive(Default)]
struct Link {
    settings: Option<Arc<StoreSettings>>,
    conn: Option<StoreConnection>,
    outage: Outage,
    retry_at: Option<Instant>,
}

impl Link {
    /// Connects if needed and exchanges `batch`; returns how long to wait
    /// before the next tick.
    async fn tick(
        &mut self,
        wanted: Option<Arc<StoreSettings>>,
        batch: &[Pending],
        counts: &ProjectCounts,
    ) -> Duration {
        let Some(settings) = self.follow(wanted) else {
            return IDLE_INTERVAL;
        };
        if let Some(wait) = self
            .retry_at
            .and_then(|at| at.checked_duration_since(Instant::now()))
        {
            return wait;
        }
        if self.conn.is_none() {
            match settings.connect().await {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => return self.failed(&settings, &e),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return SYNC_INTERVAL;
        };
        match conn.sync(batch).await {
            Ok(totals) => {
                for (pending, total) in batch.iter().zip(totals) {
                    counts.record(pending, total);
                }
                self.succeeded(&settings);
                SYNC_INTERVAL
            }
            Err(e) => {
                self.conn = None;
                self.failed(&settings, &e)
            }
        }
    }

    /// Follows the configuration: drops the connection when the store is
    /// removed or changed. Returns the settings to use, if any.
    fn follow(&mut self, wanted: Option<Arc<StoreSettings>>) -> Option<Arc<StoreSettings>> {
        let same = match (&self.settings, &wanted) {
            (Some(current), Some(wanted)) => **current == **wanted,
            (None, None) => true,
            _ => false,
        };
        if !same {
            match (&self.settings, &wanted) {
                (_, Some(w)) => log::info!(
                    "shared store {}: connecting; project limits count across the fleet once it answers",
                    w.url()
                ),
                (Some(old), None) => log::info!(
                    "shared store {}: removed from the configuration; project limits count on this node only",
                    old.url()
                ),
                (None, None) => {}
            }
            *self = Link {
                settings: wanted,
                ..Link::default()
            };
            METRICS.shared_store_up.set(0);
        }
        self.settings.clone()
    }

    fn failed(&mut self, settings: &StoreSettings, e: &StoreError) -> Duration {
        METRICS.shared_store_errors.inc();
        METRICS.shared_store_up.set(0);
        let (first, wait) = self.outage.failed();
        if first {
            log::warn!(
                "shared store {}: {e}; project limits count on this node only until it is back \
                 (retrying, at most every {} s)",
                settings.url(),
                BACKOFF_MAX.as_secs()
            );
        } else {
            log::debug!("shared store {}: still failing: {e}", settings.url());
        }
        self.retry_at = Some(Instant::now() + wait);
        wait
    }

    fn succeeded(&mut self, settings: &StoreSettings) {
        METRICS.shared_store_syncs.inc();
        METRICS.shared_store_up.set(1);
        self.retry_at = None;
        match self.outage.succeeded() {
            Some(Recovery::First) => log::info!(
                "shared store {}: connected; project limits count across the fleet",
                settings.url()
            ),
            Some(Recovery::Back) => log::info!(
                "shared store {}: reachable again; project limits count across the fleet",
                settings.url()
            ),
            None => {}
        }
    }
}

/// What a success ends: the wait for the first one, or an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    First,
    Back,
}

/// Failures in a row, for the backoff and for logging each outage once.
#[derive(Debug, Default)]
struct Outage {
    failures: u32,
    ever_succeeded: bool,
}

impl Outage {
    /// One more failure: whether it is the first of an outage (warn), and
    /// how long to wait before trying again.
    fn failed(&mut self) -> (bool, Duration) {
        self.failures = self.failures.saturating_add(1);
        (self.failures == 1, backoff(self.failures))
    }

    /// A success: what it ends, if anything worth a line.
    fn succeeded(&mut self) -> Option<Recovery> {
        let ended = match (self.ever_succeeded, self.failures) {
            (false, _) => Some(Recovery::First),
            (true, 0) => None,
            (true, _) => Some(Recovery::Back),
        };
        self.failures = 0;
        self.ever_succeeded = true;
        ended
    }
}

/// The wait after `failures` failures in a row: doubling from
/// [`BACKOFF_FIRST`], at most [`BACKOFF_MAX`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let mut o = Outage::default();
        // Unreachable from the start: one warning, then quiet.
        assert!(o.failed().0);
        assert!(!o.failed().0);
        assert_eq!(o.succeeded(), Some(Recovery::First));
        assert_eq!(o.succeeded(), None);
        assert_eq!(o.failed(), (true, BACKOFF_FIRST));
        assert_eq!(o.failed(), (false, BACKOFF_FIRST * 2));
        assert_eq!(o.succeeded(), Some(Recovery::Back));
        assert_eq!(o.succeeded(), None);
    }
}
