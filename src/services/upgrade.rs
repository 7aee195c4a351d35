//! Handing the listening sockets to a new instance: Pingora's graceful
//! upgrade (docs/operations.md, "Upgrade, restart, reload").
//!
//! Pingora's own SIGQUIT handling sends the sockets to the upgrade socket
//! and then shuts down whether or not a new instance took them, so a new
//! instance that failed to start would leave nothing serving. visitord's
//! signal watch passes SIGQUIT on to Pingora only once a new instance is
//! listening on `server.upgrade_socket` (it has loaded and validated
//! everything by then); otherwise it logs why and keeps serving.
//!
//! SIGUSR2 makes the running instance start its successor itself: the same
//! executable path (the file a package upgrade replaced) with `run
//! --upgrade` on the same configuration, as a child. Under systemd that
//! keeps the new process inside the service's cgroup and sandbox, where
//! `systemctl kill` and `MAINPID=` can reach it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How long a running instance waits, after SIGQUIT or SIGUSR2, for a new
/// one to load its configuration, databases and certificates and listen on
/// the upgrade socket.
const SUCCESSOR_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// The signals a running instance answers (Pingora's `RunArgs`): SIGTERM
/// drains, SIGINT stops now, SIGQUIT hands over to a waiting new instance,
/// SIGUSR2 starts one and hands over to it.
pub struct Signals {
    socket: PathBuf,
    executable: PathBuf,
    config: PathBuf,
}

impl Signals {
    /// `socket` is `server.upgrade_socket`, `config` the file this instance
    /// runs on. The executable path is read now, before a package upgrade
    /// replaces the file: afterwards the kernel names the old one deleted.
    pub fn new(socket: PathBuf, config: PathBuf) -> Signals {
        let executable = std::env::current_exe()
            .or_else(|_| std::env::args_os().next().map(PathBuf::from).ok_or(()))
            .unwrap_or_else(|()| PathBuf::from("visitord"));
        Signals {
            socket,
            executable,
            config,
        }
    }

    /// `run --upgrade --config F` beside this instance.
    fn start_successor(&self) -> std::io::Result<Child> {
        Command::new(&self.executable)
            .arg("run")
            .arg("--upgrade")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .spawn()
    }

    /// Whether a new instance came to listen on the upgrade socket in time;
    /// `child` is the one this instance started, if any: its early exit
    /// ends the wait.
    async fn successor_listening(&self, mut child: Option<Child>) -> bool {
        let socket = self.socket.display();
        log::info!(
            "upgrade: waiting up to {}s for a new instance on {socket}",
            SUCCESSOR_WAIT.as_secs()
        );
        let deadline = Instant::now() + SUCCESSOR_WAIT;
        loop {
            if listening(&self.socket) {
                log::info!("upgrade: a new instance listens on {socket}; handing the listening sockets over");
                return true;
            }
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                log::warn!("upgrade: the new instance exited ({status}) before taking the listening sockets; this one keeps serving");
                return false;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "upgrade: no new instance listened on {socket} within {}s; this one keeps serving",
                    SUCCESSOR_WAIT.as_secs()
                );
                if let Some(mut c) = child {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = listen(SignalKind::quit());
        let mut terminate = listen(SignalKind::terminate());
        let mut interrupt = listen(SignalKind::interrupt());
        let mut start = listen(SignalKind::user_defined2());
        loop {
            let child = tokio::select! {
                () = next(&mut terminate) => return ShutdownSignal::GracefulTerminate,
                () = next(&mut interrupt) => return ShutdownSignal::FastShutdown,
                () = next(&mut quit) => {
                    log::info!("SIGQUIT received");
                    None
                }
                () = next(&mut start) => {
                    log::info!("SIGUSR2 received: starting a new instance to hand over to");
                    match self.start_successor() {
                        Ok(child) => Some(child),
                        Err(e) => {
                            log::warn!(
                                "upgrade: cannot start {}: {e}; this one keeps serving",
                                self.executable.display()
                            );
                            continue;
                        }
                    }
                }
            };
            // SIGTERM and SIGINT still work while the new instance starts.
            tokio::select! {
                handed = self.successor_listening(child) => if handed {
                    return ShutdownSignal::GracefulUpgrade;
                },
                () = next(&mut terminate) => return ShutdownSignal::GracefulTerminate,
                () = next(&mut interrupt) => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

fn listen(kind: SignalKind) -> Option<Signal> {
    signal(kind)
        .map_err(|e| log::warn!("cannot watch signal {}: {e}", kind.as_raw_value()))
        .ok()
}

/// The next delivery of a watched signal; never, for one that could not
/// be watched.
async fn next(watch: &mut Option<Signal>) {
    if let Some(s) = watch {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// Whether a Unix socket bound to `path` is listening, from the kernel's
/// table of this network namespace (a stale socket file left by a crashed
/// instance is not listening; connecting to find out would take the new
/// instance's one transfer connection).
fn listening(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/net/unix")
        .map(|table| listening_at(&table, path))
        .unwrap_or(false)
}

/// `/proc/net/unix` lines are `Num RefCount Protocol Flags Type St Inode
/// Path`; a listening socket has the `__SO_ACCEPTCON` flag (`00010000`).
fn listening_at(table: &str, path: &Path) -> bool {
    let suffix = format!(" {}", path.display());
    table
        .lines()
        .any(|line| line.split_whitespace().nth(3) == Some("00010000") && line.ends_with(&suffix))
}

/// Sends SIGQUIT to every other process that holds a listening socket on
/// one of `addrs` (the running instance; the one still draining from an
/// earlier upgrade, if any, ignores it), so that `run --upgrade` alone is
/// an upgrade. An operator's own SIGQUIT afterwards changes nothing.
/// Returns the process ids signalled. Only processes whose descriptors
/// this one may read (the same user, as under the unit) are found.
pub fn ask_holders_to_hand_over(addrs: &[SocketAddr]) -> Vec<u32> {
    let inodes = crate::services::systemd::listening_inodes(addrs);
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    let mut asked = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return asked;
    };
    for pid in processes
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if pid != me && holds(pid, &wanted) {
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGQUIT,
            ) {
                Ok(()) => asked.push(pid),
                Err(e) => log::warn!("upgrade: cannot signal process {pid}: {e}"),
            }
        }
    }
    asked
}

/// Whether one of process `pid`'s descriptors is one of `sockets`.
fn holds(pid: u32, sockets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// Checks, before a new instance asks for the sockets, that it can bind
/// the upgrade socket (Pingora's bind there panics and would abort the new
/// instance only after the old one was told to hand over).
pub fn check_upgrade_socket(socket: &Path) -> std::io::Result<()> {
    let dir = socket.parent().unwrap_or_else(|| Path::new("/"));
    let probe = dir.join(format!(".visitord-probe-{}", std::process::id()));
    let bound = std::os::unix::net::UnixListener::bind(&probe);
    let _ = std::fs::remove_file(&probe);
    bound.map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/visitord/upgrade.sock
0000000000000000: 00000002 00000000 00000000 0001 03 12346 /tmp/x/upgrade.sock
0000000000000000: 00000002 00000000 00010000 0001 01 12347 /srv/a/run/visitord/upgrade.sock
0000000000000000: 00000002 00000000 00010000 0001 01 12348
";
        assert!(listening_at(table, Path::new("/run/visitord/upgrade.sock")));
        // Connected, not listening.
        assert!(!listening_at(table, Path::new("/tmp/x/upgrade.sock")));
        assert!(!listening_at(table, Path::new("/run/upgrade.sock")));
        assert!(!listening_at(table, Path::new("/srv/a/run")));
    }

    #[test]
    fn the_real_table_shows_a_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        assert!(!listening(&path));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listening(&path));
        drop(listener);
        // The file stays, the socket is gone.
        assert!(path.exists());
        assert!(!listening(&path));
    }

    #[test]
    fn the_upgrade_socket_folder_must_allow_binding() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_upgrade_socket(&dir.path().join("u.sock")).is_ok());
        assert!(check_upgrade_socket(&dir.path().join("missing/u.sock")).is_err());
    }
}
