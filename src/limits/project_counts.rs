//! Per-project request counts over wall-clock minutes, and what a fleet of
//! nodes needs to add them up (`[limits] shared_store`, docs/fleet.md).
//!
//! A window is a wall-clock minute numbered `unix_seconds / 60`, so nodes
//! agree on it without talking. For each project a node keeps three counts
//! of the current window:
//!
//! - `local`: the requests this node admitted;
//! - `others`: the requests the rest of the fleet admitted, as last read
//!   from the shared store (0 without one);
//! - `synced`: how much of `local` the store has been sent.
//!
//! A request is admitted while `local + others` is under the limit, so the
//! request path never waits for the store; a background task sends the
//! difference `local - synced` and reads the fleet total back. Without a
//! store `others` stays 0 and the limit is counted per node.
//!
//! Each count is packed with its window number in one `AtomicU64` (window
//! in the high 32 bits, count in the low 32): a count of an older window
//! reads as 0, and a request that opens a new window resets its count in
//! the same compare-and-swap that counts it. 32 bits of minutes last until
//! the year 10000; a project's limit is a `u32`, so counts never wrap.
//!
//! No client address is kept here: the table is keyed by project id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A window number: wall-clock minutes since the Unix epoch.
pub type Window = u32;

/// The window a moment falls in, given as time since the Unix epoch.
pub fn window_at(since_epoch: Duration) -> Window {
    // Fits in 32 bits until the year 10136.
    (since_epoch.as_secs() / WINDOW.as_secs()) as Window
}

/// Time left in the window of `since_epoch`.
pub fn rest_of_window(since_epoch: Duration) -> Duration {
    let window = WINDOW.as_nanos();
    let into = since_epoch.as_nanos() % window;
    Duration::from_nanos((window - into) as u64)
}

fn pack(window: Window, count: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(count)
}

fn window_of(packed: u64) -> Window {
    (packed >> 32) as Window
}

/// The count `packed` holds for `window`: 0 when it belongs to another one.
fn count_in(packed: u64, window: Window) -> u32 {
    if window_of(packed) == window {
        packed as u32
    } else {
        0
    }
}

/// One project's counts (see the module documentation).
#[derive(Debug, Default)]
struct ProjectCount {
    local: AtomicU64,
    others: AtomicU64,
    synced: AtomicU64,
}

impl ProjectCount {
    /// Counts one request in `window` unless this node's count plus the
    /// rest of the fleet's is already at `limit`.
    fn admit(&self, limit: u32, window: Window) -> bool {
        let mut current = self.local.load(Relaxed);
        loop {
            // Threads read the clock a moment apart: a request that read
            // the minute before another one opened the next window counts
            // in the newer window rather than resetting it.
            let window = window.max(window_of(current));
            let mine = count_in(current, window);
            let others = count_in(self.others.load(Relaxed), window);
            if u64::from(mine) + u64::from(others) >= u64::from(limit) {
                return false;
            }
            match self.local.compare_exchange_weak(
                current,
                pack(window, mine + 1),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What one sync sends for a project: the requests admitted here in
/// `window` since the last sync (`delta`, possibly 0, then the store is
/// only read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub project: Arc<str>,
    pub window: Window,
    pub delta: u32,
    /// What the store was sent before, in this window.
    sent: u32,
}

/// The counts of every project with a limit, one table per process, shared
/// by every snapshot: a reload must not hand a project a fresh allowance.
/// Projects are few and named in configuration; a project is added on its
/// first request (or sync) and kept while configured.
#[derive(Debug, Default)]
pub struct ProjectCounts {
    table: ArcSwap<HashMap<Arc<str>, Arc<ProjectCount>>>,
}

impl ProjectCounts {
    pub fn new() -> ProjectCounts {
        ProjectCounts::default()
    }

    /// Counts one request for `project` in `window`; `false` (nothing
    /// counted) when the project's fleet-wide count is at `limit`.
    pub fn admit(&self, project: &str, limit: u32, window: Window) -> bool {
        if let Some(count) = self.table.load().get(project) {
            return count.admit(limit, window);
        }
        self.entry(project).admit(limit, window)
    }

    /// The project's entry, added when missing.
    fn entry(&self, project: &str) -> Arc<ProjectCount> {
        if let Some(count) = self.table.load().get(project) {
            return Arc::clone(count);
        }
        self.table.rcu(|table| {
            let mut table = HashMap::clone(table);
            table.entry(Arc::from(project)).or_default();
            table
        });
        // Detached only if `retain` removed it meanwhile: then it counts
        // for nobody, as the project is gone.
        self.table.load().get(project).cloned().unwrap_or_default()
    }

    /// What to send the store for each of `projects` in `window`.
    pub fn pending<'a>(
        &self,
        projects: impl IntoIterator<Item = &'a str>,
        window: Window,
    ) -> Vec<Pending> {
        projects
            .into_iter()
            .map(|project| {
                let count = self.entry(project);
                let local = count_in(count.local.load(Relaxed), window);
                let sent = count_in(count.synced.load(Relaxed), window);
                Pending {
                    project: Arc::from(project),
                    window,
                    // `local` only grows within a window, and `sent` was
                    // read from it.
                    delta: local.saturating_sub(sent),
                    sent,
                }
            })
            .collect()
    }

    /// Records the store's answer to `pending`: after adding its delta,
    /// the fleet's count for the window is `fleet_total`.
    pub fn record(&self, pending: &Pending, fleet_total: u64) {
        let count = self.entry(&pending.project);
        let mine = pending.sent.saturating_add(pending.delta);
        count.synced.store(pack(pending.window, mine), Relaxed);
        // A store that lost keys (restarted empty) answers less than this
        // node alone has sent: the others' part is then taken as 0.
        let others = fleet_total.saturating_sub(u64::from(mine));
        let others = u32::try_from(others).unwrap_or(u32::MAX);
        count.others.store(pack(pending.window, others), Relaxed);
    }

    /// Forgets the projects `keep` says no to (after a reload removed them).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let table = self.table.load();
        if table.keys().all(|id| keep(id)) {
            return;
        }
        self.table.rcu(|table| {
            let mut table = HashMap::clone(table);
            table.retain(|id, _| keep(id));
            table
        });
    }

    /// This node's count and the rest of the fleet's, for `project` in
    /// `window` (tests and the dashboard).
    pub fn counts(&self, project: &str, window: Window) -> (u32, u32) {
        self.table.load().get(project).map_or((0, 0), |c| {
            (
                count_in(c.local.load(Relaxed), window),
                count_in(c.others.load(Relaxed), window),
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    const W: Window = 29_000_000;

    fn admitted(counts: &ProjectCounts, project: &str, limit: u32, window: Window) -> usize {
        (0..limit * 3)
            .filter(|_| counts.admit(project, limit, window))
            .count()
    }

    #[test]
    fn windows_are_wall_clock_minutes() {
        assert_eq!(window_at(Duration::from_secs(1_740_000_000)), 29_000_000);
        assert_eq!(window_at(Duration::from_secs(1_740_000_059)), 29_000_000);
        assert_eq!(window_at(Duration::from_secs(1_740_000_060)), 29_000_001);
        assert_eq!(
            rest_of_window(Duration::from_millis(1_740_000_059_250)),
            Duration::from_millis(750)
        );
        assert_eq!(rest_of_window(Duration::from_secs(1_740_000_000)), WINDOW);
    }

    #[test]
    fn a_project_is_admitted_up_to_its_limit_per_window() {
        let c = ProjectCounts::new();
        assert_eq!(admitted(&c, "a", 5, W), 5);
        assert_eq!(c.counts("a", W), (5, 0));
        // Refused requests are not counted.
        assert!(!c.admit("a", 5, W));
        assert_eq!(c.counts("a", W), (5, 0));
        // Another project has its own count; the next window starts at 0.
        assert_eq!(admitted(&c, "b", 5, W), 5);
        assert_eq!(admitted(&c, "a", 5, W + 1), 5);
        assert_eq!(c.counts("a", W), (0, 0));
    }

    /// A thread that read the clock just before another opened the next
    /// window must not reset the new window's count.
    #[test]
    fn a_late_reader_counts_in_the_newer_window() {
        let c = ProjectCounts::new();
        assert_eq!(admitted(&c, "a", 3, W + 1), 3);
        assert!(!c.admit("a", 3, W));
        assert_eq!(c.counts("a", W + 1), (3, 0));
    }

    #[test]
    fn the_fleet_total_counts_against_the_limit() {
        let c = ProjectCounts::new();
        assert_eq!(admitted(&c, "a", 10, W), 10);
        let p = c.pending(["a"], W);
        assert_eq!(p[0].delta, 10);
        // The store now holds 10 from here and 25 from the other nodes.
        c.record(&p[0], 35);
        assert_eq!(c.counts("a", W), (10, 25));
        // 40 - 10 - 25: five more here.
        assert_eq!(admitted(&c, "a", 40, W), 5);
        let c = ProjectCounts::new();
        let p = c.pending(["a"], W);
        assert_eq!(p[0].delta, 0);
        c.record(&p[0], 37);
        // 40 - 37: three more here.
        assert_eq!(admitted(&c, "a", 40, W), 3);
        // The other nodes' count is of its window only.
        assert_eq!(admitted(&c, "a", 40, W + 1), 40);
    }

    #[test]
    fn each_sync_sends_what_was_admitted_since_the_last() {
        let c = ProjectCounts::new();
        assert_eq!(admitted(&c, "a", 4, W), 4);
        let first = c.pending(["a"], W);
        assert_eq!((first[0].delta, first[0].sent), (4, 0));
        // Not recorded (the store failed): sent again with what follows.
        let again = c.pending(["a"], W);
        assert_eq!(again, first);
        c.record(&again[0], 4);
        assert_eq!(c.pending(["a"], W)[0].delta, 0);
        assert_eq!(admitted(&c, "a", 6, W), 2);
        let next = c.pending(["a"], W);
        assert_eq!((next[0].delta, next[0].sent), (2, 4));
        c.record(&next[0], 6);
        // A new window starts with nothing sent.
        assert!(c.admit("a", 6, W + 1));
        let p = c.pending(["a"], W + 1);
        assert_eq!((p[0].delta, p[0].sent, p[0].window), (1, 0, W + 1));
    }

    #[test]
    fn a_store_that_lost_its_keys_counts_no_others() {
        let c = ProjectCounts::new();
        assert_eq!(admitted(&c, "a", 10, W), 10);
        let p = c.pending(["a"], W);
        c.record(&p[0], 10);
        assert!(!c.admit("a", 10, W));
        let p = c.pending(["a"], W);
        c.record(&p[0], 2);
        assert_eq!(c.counts("a", W), (10, 0));
    }

    #[test]
    fn removed_projects_are_forgotten() {
        let c = ProjectCounts::new();
        assert!(c.admit("a", 1, W));
        assert!(c.admit("b", 1, W));
        c.retain(|id| id == "b");
        assert_eq!(c.counts("a", W), (0, 0));
        assert_eq!(c.counts("b", W), (1, 0));
    }

    #[test]
    fn concurrent_requests_are_each_counted_once() {
        let c = Arc::new(ProjectCounts::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || (0..5_000).filter(|_| c.admit("a", 12_000, W)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 12_000);
        assert_eq!(c.counts("a", W), (12_000, 0));
    }
}
