//! Live reload (docs/design.md §6): file changes and SIGHUP rebuild the whole
//! snapshot off the request path and swap it in with one store.
//!
//! One plain thread owns the file watcher and does the rebuilding, so a slow
//! rebuild (a 130 MB database is read in about half a second) never occupies
//! a request worker. A rebuild that fails leaves the serving snapshot alone;
//! the reason goes to the log at warn and to `visitord_reloads_total`.
//!
//! Input files are opened without blocking and only if they are regular
//! files (`lookup::input`), so a FIFO or a device cannot hold a rebuild.
//! A rebuild still running after [`SLOW_REBUILD`] (a file on a hung
//! network file system) is reported at warn by a watchdog thread; the
//! changes made meanwhile wait in the queue and get their rebuild when it
//! ends.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::observe::metrics::METRICS;
use crate::observe::reload_history::{ReloadHistory, ReloadRecord};
use crate::snapshot::{FileStamp, LoadError, Shared, Snapshot};

/// Quiet time after the last event before rebuilding: editors and `cp` write
/// a file in several steps, and a rename-over arrives as a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A steady stream of events (a slow copy) still rebuilds this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// A rebuild taking longer than this is reported at warn.
const SLOW_REBUILD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot watch files for changes: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the reload thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Files,
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Files => "file change",
            Trigger::Signal => "SIGHUP",
        }
    }
}

/// Starts watching the files of the current snapshot and listening for
/// SIGHUP; every rebuild is written to `history`. Call before the server
/// runs: until the handler is installed, SIGHUP would terminate the
/// process.
pub fn spawn(
    config_file: PathBuf,
    shared: Shared,
    history: Arc<ReloadHistory>,
) -> Result<(), ReloadError> {
    let (tx, rx) = mpsc::channel();

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(ReloadError::Signal)?;
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("visitord-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                if signal_tx.send(Trigger::Signal).is_err() {
                    break;
                }
            }
        })
        .map_err(ReloadError::Thread)?;

    let watch = WatchSet::new(tx)?;
    let watchdog = Arc::new(Watchdog::default());
    let watching = watchdog.clone();
    std::thread::Builder::new()
        .name("visitord-reload-watchdog".into())
        .spawn(move || watching.watch(SLOW_REBUILD, report_slow))
        .map_err(ReloadError::Thread)?;
    let mut reloader = Reloader {
        config_file,
        shared,
        watch,
        last_failure: None,
        history,
        watchdog,
    };
    reloader.follow_files();
    std::thread::Builder::new()
        .name("visitord-reload".into())
        .spawn(move || reloader.run(rx))
        .map_err(ReloadError::Thread)?;
    Ok(())
}

struct Reloader {
    config_file: PathBuf,
    shared: Shared,
    watch: WatchSet,
    /// The files' identities when a rebuild last failed: more events for
    /// the same broken state (an editor touching the file again) are not
    /// worth another attempt and another warning.
    last_failure: Option<Fingerprint>,
    history: Arc<ReloadHistory>,
    watchdog: Arc<Watchdog>,
}

type Fingerprint = Vec<(PathBuf, Option<FileStamp>)>;

impl Reloader {
    fn run(&mut self, rx: Receiver<Trigger>) {
        while let Ok(first) = rx.recv() {
            let trigger = debounce(&rx, first);
            self.watchdog.started(trigger);
            self.rebuild(trigger);
            self.watchdog.ended();
        }
    }

    fn rebuild(&mut self, trigger: Trigger) {
        let current = self.shared.load_full();
        // Read once: its file list decides whether anything changed, and
        // the same value is what the new snapshot is built from.
        let config = Config::load(&self.config_file);
        let fingerprint = fingerprint(&current, config.as_ref().ok());
        if trigger == Trigger::Files && self.last_failure.as_ref() == Some(&fingerprint) {
            return;
        }
        let started = Instant::now();
        let next = config
            .map_err(LoadError::from)
            .and_then(|c| Snapshot::build(c, current.generation + 1, Some(&current)));
        match next {
            Ok(next) => self.serve(trigger, &current, next, started),
            Err(e) => self.refused(trigger, &current, &e, fingerprint),
        }
    }

    /// Serves `next` in place of `current`.
    fn serve(&mut self, trigger: Trigger, current: &Snapshot, next: Snapshot, started: Instant) {
        note_restart_only_changes(&current.config, &next.config);
        crate::snapshot::publish::publish_metrics(&next);
        let generation = next.generation;
        self.shared.store(Arc::new(next));
        METRICS.reloads.with_label_values(&["snapshot", "ok"]).inc();
        log::info!(
            "reloaded on {}: now serving generation {generation} (built in {} ms)",
            trigger.as_str(),
            started.elapsed().as_millis()
        );
        self.last_failure = None;
        METRICS.reload_ok.set(1);
        self.history.push(ReloadRecord {
            at: std::time::SystemTime::now(),
            trigger: trigger.as_str(),
            generation,
            refused: None,
        });
        if let Err(e) = crate::services::acme::prepare(&self.shared) {
            log::warn!("acme.state_dir: {e}");
        }
        self.follow_files();
        crate::services::systemd::status(&format!("serving generation {generation}"));
    }

    /// Keeps `current` serving after a refused reload; `fingerprint`
    /// names the files that were refused, so a file event alone does not
    /// retry them.
    fn refused(
        &mut self,
        trigger: Trigger,
        current: &Snapshot,
        e: &LoadError,
        fingerprint: Fingerprint,
    ) {
        self.last_failure = Some(fingerprint);
        METRICS
            .reloads
            .with_label_values(&[e.kind(), "error"])
            .inc();
        log::warn!(
            "reload on {} refused, still serving generation {}: {e}",
            trigger.as_str(),
            current.generation
        );
        crate::services::systemd::status(&format!(
            "serving generation {}; last reload refused: {e}",
            current.generation
        ));
        METRICS.reload_ok.set(0);
        self.history.push(ReloadRecord {
            at: std::time::SystemTime::now(),
            trigger: trigger.as_str(),
            generation: current.generation,
            refused: Some(e.to_string()),
        });
    }

    /// Points the watcher at the folders of the serving snapshot's files.
    fn follow_files(&mut self) {
        let files = self.shared.load().source_files();
        self.watch.follow(&files);
    }
}

fn report_slow(trigger: Trigger, after: Duration) {
    log::warn!(
        "reload on {}: still rebuilding after {} s (an input file slow to read?); \
         changes made meanwhile are rebuilt once it ends",
        trigger.as_str(),
        after.as_secs()
    );
}

/// Watches the rebuild in progress, if any, from its own thread.
#[derive(Default)]
struct Watchdog {
    state: Mutex<Running>,
    changed: Condvar,
}

#[derive(Default)]
struct Running {
    /// Rebuilds started so far: tells one rebuild from the next.
    count: u64,
    current: Option<(Instant, Trigger)>,
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Running> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn started(&self, trigger: Trigger) {
        let mut running = self.lock();
        running.count += 1;
        running.current = Some((Instant::now(), trigger));
        self.changed.notify_all();
    }

    fn ended(&self) {
        self.lock().current = None;
        self.changed.notify_all();
    }

    /// Calls `report` once for each rebuild still running `slow` after it
    /// started. Never returns.
    fn watch(&self, slow: Duration, report: impl Fn(Trigger, Duration)) {
        let mut running = self.lock();
        let mut reported = 0;
        loop {
            let left = match running.current {
                Some((at, trigger)) if running.count != reported => {
                    let left = (at + slow).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        reported = running.count;
                        report(trigger, slow);
                        continue;
                    }
                    left
                }
                // Idle, or already reported: wait for the next change.
                _ => Duration::MAX,
            };
            running = match self.changed.wait_timeout(running, left.min(slow)) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The identities of the serving snapshot's files and of those the
/// configuration on disk names now.
fn fingerprint(current: &Snapshot, on_disk: Option<&Config>) -> Fingerprint {
    let mut files = current.source_files();
    if let Some(config) = on_disk {
        files.extend(config.source_files());
    }
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            let stamp = FileStamp::of(&f);
            (f, stamp)
        })
        .collect()
}

/// Waits until events stop for `DEBOUNCE` (at most `DEBOUNCE_MAX`); a
/// SIGHUP among them wins the label.
fn debounce(rx: &Receiver<Trigger>, first: Trigger) -> Trigger {
    let deadline = Instant::now() + DEBOUNCE_MAX;
    let mut trigger = first;
    loop {
        let wait = DEBOUNCE.min(deadline.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(t) => {
                if t == Trigger::Signal {
                    trigger = t;
                }
                if Instant::now() >= deadline {
                    return trigger;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return trigger,
        }
    }
}

/// Listener addresses, thread counts, the metrics address and the HTTP
/// server options are fixed at start; say so, and how to apply them
/// without a restart, instead of silently ignoring an edit.
fn note_restart_only_changes(old: &Config, new: &Config) {
    let changed = restart_only_changes(old, new);
    if !changed.is_empty() {
        log::warn!(
            "{}: changes to {} take effect on upgrade, which drops no connection: `{UPGRADE_COMMAND}` under systemd, else SIGUSR2 to this process or `visitord run --upgrade --config {}` as its user; everything else is live",
            new.file.display(),
            changed.join(", "),
            new.file.display(),
        );
    }
    if old.server.upgrade_socket != new.server.upgrade_socket {
        log::warn!(
            "{}: server.upgrade_socket takes effect on restart: this instance hands over only on {}",
            new.file.display(),
            old.server.upgrade_socket.display()
        );
    }
}

/// The one-line upgrade under the systemd unit (docs/operations.md).
pub const UPGRADE_COMMAND: &str = "systemctl kill --signal=SIGUSR2 --kill-whom=main visitord";

/// The settings that differ between `old` and `new` and are read only at
/// start, by their config names.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listeners != new.listeners {
        changed.push("listen");
    }
    if old.server.threads != new.server.threads {
        changed.push("server.threads");
    }
    if old.server.grace_period != new.server.grace_period {
        changed.push("server.grace_period");
    }
    // `metrics.allow` and `metrics.token_file` are read per request.
    match (&old.metrics, &new.metrics) {
        (Some(a), Some(b)) if a.addr != b.addr => changed.push("metrics.addr"),
        (Some(_), None) | (None, Some(_)) => changed.push("metrics.enabled"),
        _ => {}
    }
    if old.limits.keepalive_requests != new.limits.keepalive_requests {
        changed.push("limits.keepalive_requests");
    }
    // HTTP/1 reads the keep-alive timeout per request; HTTP/2's idle
    // timeout is fixed when the listeners start.
    if old.limits.keepalive_timeout != new.limits.keepalive_timeout {
        changed.push("limits.keepalive_timeout (for HTTP/2)");
    }
    changed
}

/// The folders watched, and the file names in them that matter.
///
/// Folders, not files: an editor's save, `mv` over the file, delete and
/// re-create, and Kubernetes' `..data` symlink swap all replace the inode,
/// which a watch on the file itself would lose.
struct WatchSet {
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    names: Arc<std::sync::RwLock<BTreeSet<OsString>>>,
}

impl WatchSet {
    fn new(tx: Sender<Trigger>) -> Result<WatchSet, ReloadError> {
        let names: Arc<std::sync::RwLock<BTreeSet<OsString>>> = Arc::default();
        let filter = names.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let relevant = filter
                .read()
                .map(|names| event.paths.iter().any(|p| is_relevant(p, &names)))
                .unwrap_or(true);
            if relevant {
                let _ = tx.send(Trigger::Files);
            }
        })?;
        Ok(WatchSet {
            watcher,
            dirs: BTreeSet::new(),
            names,
        })
    }

    fn follow(&mut self, files: &[PathBuf]) {
        let mut dirs = BTreeSet::new();
        let mut names = BTreeSet::new();
        for file in files {
            for path in [Some(file.clone()), std::fs::canonicalize(file).ok()]
                .into_iter()
                .flatten()
            {
                if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                    let dir = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    };
                    dirs.insert(dir.to_path_buf());
                    names.insert(name.to_os_string());
                }
            }
        }
        if let Ok(mut n) = self.names.write() {
            *n = names;
        }
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in &dirs {
            if self.dirs.contains(dir) {
                continue;
            }
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                log::warn!(
                    "{}: cannot watch for changes ({e}); use SIGHUP to reload",
                    dir.display()
                );
            }
        }
        self.dirs = dirs;
    }
}

/// An event matters if it names one of our files, or a Kubernetes-style
/// `..data` entry whose swap replaces every file of a mounted ConfigMap.
fn is_relevant(path: &Path, names: &BTreeSet<OsString>) -> bool {
    path.file_name()
        .is_some_and(|name| names.contains(name) || name.to_string_lossy().starts_with(".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_rebuild_is_reported_once_and_a_quick_one_never() {
        let watchdog = Arc::new(Watchdog::default());
        let (tx, rx) = mpsc::channel();
        let watching = watchdog.clone();
        std::thread::spawn(move || {
            watching.watch(Duration::from_millis(100), move |t, _| {
                let _ = tx.send(t);
            });
        });
        watchdog.started(Trigger::Files);
        watchdog.ended();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        watchdog.started(Trigger::Signal);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Trigger::Signal));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "once");
        watchdog.ended();
        // The next rebuild is watched again.
        watchdog.started(Trigger::Files);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Trigger::Files));
    }

    #[test]
    fn restart_only_settings_are_named() {
        let config = |extra: &str| {
            let text = format!(
                "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = true\n\
                 [tls]\ncertificates = [{{ cert = \"a.crt\", key = \"a.key\" }}]\n\
                 [api]\nprojects = \"projects.toml\"\n\
                 [geo]\ndatabases = [\"x.mmdb\"]\n{extra}"
            );
            Config::parse(Path::new("/etc/visitord/visitord.toml"), &text).unwrap()
        };
        let base = config("");
        assert!(restart_only_changes(&base, &base).is_empty());
        // Live settings are not named.
        let live = config("[limits]\nrequests_per_minute_per_ip = 5\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        assert!(restart_only_changes(&base, &live).is_empty());
        // Who may read the metrics listener is live; where it listens is not.
        let allowed = config("[metrics]\nallow = [\"10.0.0.0/8\"]\n");
        assert!(restart_only_changes(&base, &allowed).is_empty());
        let moved = config("[metrics]\naddr = \"127.0.0.1:9999\"\n");
        assert_eq!(restart_only_changes(&base, &moved), ["metrics.addr"]);
        let edited = config(
            "[server]\nthreads = 7\n[limits]\nkeepalive_requests = 5\nkeepalive_timeout = \"5s\"\n",
        );
        assert_eq!(
            restart_only_changes(&base, &edited),
            [
                "server.threads",
                "limits.keepalive_requests",
                "limits.keepalive_timeout (for HTTP/2)"
            ]
        );
    }

    #[test]
    fn relevant_events() {
        let names: BTreeSet<OsString> = ["visitord.toml", "projects.toml", "city.mmdb"]
            .into_iter()
            .map(OsString::from)
            .collect();
        assert!(is_relevant(
            Path::new("/etc/visitord/projects.toml"),
            &names
        ));
        assert!(is_relevant(
            Path::new("/var/lib/visitord/geo-db/city.mmdb"),
            &names
        ));
        assert!(is_relevant(Path::new("/etc/visitord/..data"), &names));
        assert!(is_relevant(Path::new("/etc/visitord/..2026_11_29"), &names));
        assert!(!is_relevant(
            Path::new("/etc/visitord/projects.toml.swp"),
            &names
        ));
        assert!(!is_relevant(
            Path::new("/var/lib/visitord/geo-db/city.mmdb.tmp"),
            &names
        ));
        assert!(!is_relevant(Path::new("/"), &names));
    }

    #[test]
    fn debounce_waits_for_quiet_and_prefers_signal() {
        let (tx, rx) = mpsc::channel();
        tx.send(Trigger::Files).unwrap();
        tx.send(Trigger::Signal).unwrap();
        let first = rx.recv().unwrap();
        let started = Instant::now();
        assert_eq!(debounce(&rx, first), Trigger::Signal);
        assert!(started.elapsed() >= DEBOUNCE);
        assert!(rx.try_recv().is_err(), "the burst was consumed");
    }
}
