//! Upgrades (`visitord run --upgrade`, SIGQUIT, SIGUSR2): the real binary
//! hands its listening sockets to a new instance while clients keep
//! opening new TLS connections, and none of them notices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::upstream::Upstream;
use common::{eventually, free_port, Options, Server, BIN};

/// `visitord run --upgrade` on the configuration of a running server;
/// killed on drop.
struct Successor {
    child: Child,
    log: PathBuf,
}

impl Successor {
    fn start(s: &Server) -> Successor {
        let log = s.path("successor.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--upgrade", "--config"])
            .arg(&s.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Successor { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it has loaded everything and asks for the sockets.
    fn wait_asking(&mut self) {
        let asking = eventually(Duration::from_secs(60), || {
            self.logs().contains("upgrade: waiting on") || self.exited().is_some()
        });
        assert!(asking && self.exited().is_none(), "{}", self.logs());
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        assert!(
            eventually(limit, || self.exited().is_some()),
            "still running:\n{}",
            self.logs()
        );
        self.exited().unwrap()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- successor log ---\n{}", self.logs());
        }
    }
}

/// What the load saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    refused: u64,
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.refused += other.refused;
        self.errors.extend(other.errors.into_iter().take(5));
    }
}

/// Threads that GET `/readyz` on `port`, each request over a new TCP
/// connection and TLS handshake, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(s: &Server, port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let client = s
                    .client_builder()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let url = format!("https://localhost:{port}/readyz");
                let stop = stop.clone();
                std::thread::spawn(move || fire(&client, &url, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for t in self.threads {
            total.add(t.join().unwrap());
        }
        total
    }
}

fn fire(client: &reqwest::blocking::Client, url: &str, stop: &AtomicBool) -> Tally {
    // Bounded even if nobody stops it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tally = Tally::default();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match client.get(url).send() {
            Ok(r) if r.status() == 200 => tally.ok += 1,
            Ok(r) => {
                tally.failed += 1;
                tally.errors.push(format!("status {}", r.status()));
            }
            Err(e) => {
                tally.failed += 1;
                if e.is_connect() {
                    tally.refused += 1;
                }
                if tally.errors.len() < 5 {
                    tally.errors.push(format!("{e:?}"));
                }
                // A refused connect returns at once: no busy loop.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    tally
}

fn options(extra: String) -> Options {
    Options {
        extra,
        grace_period: "10s",
        ..Options::default()
    }
}

/// SIGQUIT to the running instance once its successor asks for the
/// sockets; returns how long the old one took to exit after the signal.
fn hand_over(s: &Server, next: &mut Successor) -> Duration {
    next.wait_asking();
    let signalled = Instant::now();
    s.signal("QUIT");
    let status = s.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", s.logs());
    signalled.elapsed()
}

fn readyz(s: &Server, port: u16) -> Result<u16, reqwest::Error> {
    let client = s.client_builder().pool_max_idle_per_host(0).build()?;
    let r = client
        .get(format!("https://localhost:{port}/readyz"))
        .send()?;
    Ok(r.status().as_u16())
}

/// The headline: while three threads open a new TLS connection for every
/// request, the new instance takes over and the old one drains and exits;
/// not one request fails and not one connection is refused.
#[test]
fn an_upgrade_under_load_fails_no_request() {
    let s = Server::with(options(String::new()));
    let load = Load::start(&s, s.https.port(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let mut next = Successor::start(&s);
    let old_exit = hand_over(&s, &mut next);
    // Load on the new instance alone, for a while.
    std::thread::sleep(Duration::from_secs(1));
    let tally = load.finish();
    eprintln!("upgrade under load: {tally:?}; old instance exited {old_exit:?} after SIGQUIT");
    assert_eq!(tally.failed, 0, "{tally:?}\n{}", next.logs());
    assert_eq!(tally.refused, 0, "{tally:?}");
    assert!(tally.ok > 50, "too little load to mean anything: {tally:?}");
    // server.grace_period (10 s) + 5 s.
    assert!(old_exit < Duration::from_secs(15), "{old_exit:?}");
    assert!(next.exited().is_none(), "{}", next.logs());
    assert_eq!(readyz(&s, s.https.port()).unwrap(), 200);
    assert!(
        s.logs().contains("every connection has closed"),
        "{}",
        s.logs()
    );
    assert!(
        next.logs().contains("took over the listening sockets"),
        "{}",
        next.logs()
    );
}

/// A request the old instance is proxying when it hands over is answered
/// by it; it exits only afterwards.
#[test]
fn a_request_running_across_the_hand_over_completes() {
    let up = Upstream::start("slow");
    let site = format!(
        "\n[[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\nread_timeout = \"10s\"\n",
        up.addr
    );
    let s = Server::with(options(site));
    let mut next = Successor::start(&s);
    next.wait_asking();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            let client = s.client_for(&["site.example.com"]);
            let url = format!("https://site.example.com:{}/slow", s.https.port());
            common::Reply::from(client.get(url).send().unwrap())
        });
        assert!(eventually(Duration::from_secs(5), || up.requests() == 1));
        s.signal("QUIT");
        let r = running.join().unwrap();
        // The upstream answers after 3 s; the old instance is still there.
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(s.try_status().is_none(), "{}", s.logs());
    });
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(readyz(&s, s.https.port()).unwrap(), 200);
}

/// A configuration the new instance refuses: it exits non-zero with the
/// file, key and reason before taking anything, and the old one serves on.
/// Told to hand over anyway (SIGQUIT with no successor), it keeps serving.
#[test]
fn a_broken_new_config_leaves_the_old_serving() {
    let s = Server::with(options(String::new()));
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("threads = 2", "threads = 0")).unwrap();
    let mut next = Successor::start(&s);
    let status = next.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let why = next.logs();
    assert!(why.contains("server.threads: 0 is out of range"), "{why}");
    assert!(why.contains("visitord.toml"), "{why}");

    s.signal("QUIT");
    // Pingora alone would have stopped accepting 5 s after failing to
    // send the sockets (5 s of retries): well inside this.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(12) {
        assert_eq!(readyz(&s, s.https.port()).unwrap(), 200, "{}", s.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.try_status().is_none(), "{}", s.logs());
}

/// SIGUSR2: the running instance starts its successor; one that cannot
/// start (a broken file) leaves it serving, and says why.
#[test]
fn sigusr2_with_a_broken_config_keeps_serving() {
    let s = Server::with(options(String::new()));
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("[api]", "[api]\nbogus = 1")).unwrap();
    s.signal("USR2");
    assert!(
        eventually(Duration::from_secs(60), || s.logs().contains(
            "exited (exit status: 1) before taking the listening sockets"
        )),
        "{}",
        s.logs()
    );
    assert!(s.logs().contains("bogus"), "{}", s.logs());
    assert_eq!(readyz(&s, s.https.port()).unwrap(), 200);
    assert!(s.try_status().is_none());
}

/// The new listener set takes effect through an upgrade: an added listener
/// answers, a removed one is gone, and the one that stays never refuses a
/// connection (threads change too).
#[test]
fn a_changed_listener_set_takes_effect_through_an_upgrade() {
    let s = Server::with(options(String::new()));
    let added = free_port();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let redirect = format!(
        "[[listen]] # http redirect\naddr = \"{}\"\nredirect_https_port = {}\n",
        s.http,
        s.https.port()
    );
    assert!(text.contains(&redirect), "{text}");
    let changed = text
        .replace(
            &redirect,
            &format!("[[listen]] # added\naddr = \"127.0.0.1:{added}\"\ntls = true\n"),
        )
        .replace("threads = 2", "threads = 1");
    std::fs::write(&s.config, changed).unwrap();
    assert!(eventually(Duration::from_secs(10), || s
        .logs()
        .contains("take effect on upgrade")));

    let load = Load::start(&s, s.https.port(), 2);
    let mut next = Successor::start(&s);
    hand_over(&s, &mut next);
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert_eq!(readyz(&s, added).unwrap(), 200);
    assert!(
        std::net::TcpStream::connect(s.http).is_err(),
        "the removed listener still accepts"
    );
    assert!(
        next.logs()
            .contains("serving generation 1 on 2 listener(s) (took over"),
        "{}",
        next.logs()
    );
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`): after SIGUSR2 the new
/// instance, a child of the old one, says `MAINPID=` with its own id and
/// `READY=1`, so systemd follows it; the old one exits.
#[test]
fn sigusr2_hands_over_and_the_new_instance_tells_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(String::new());
    let config = Server::prepare(dir.path(), &o);
    let ca = Arc::new(common::TestCa::new());
    ca.leaf(&dir.path().join("tls"), "server", &o.cert_names);
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let s = Server::spawn_with_env(
        dir,
        config,
        ca,
        "info",
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let first = receive(&socket);
    assert!(!first.contains("MAINPID="), "{first:?}");

    let load = Load::start(&s, s.https.port(), 2);
    s.signal("USR2");
    let second = receive(&socket);
    let new_pid = main_pid(&second).unwrap_or_else(|| panic!("{second:?}\n{}", s.logs()));
    let _kill = KillOnDrop(new_pid);
    assert_ne!(new_pid, s.pid());
    assert!(second.lines().any(|l| l == "READY=1"), "{second:?}");
    let status = s.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(500));
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert_eq!(readyz(&s, s.https.port()).unwrap(), 200);
    assert!(Path::new(&format!("/proc/{new_pid}")).exists());
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn main_pid(notification: &str) -> Option<u32> {
    notification
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
}

/// The successor started by SIGUSR2 is not this test's child.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// The same load through a plain restart (SIGTERM, then a new `run`), for
/// comparison: `cargo test --test upgrade -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check: a restart refuses connections"]
fn measure_a_plain_restart() {
    let s = Server::with(options(String::new()));
    let load = Load::start(&s, s.https.port(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    let (status, drained) = s.terminate();
    assert!(status.success());
    let log = std::fs::File::create(s.path("restarted.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&s.config)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(60), || readyz(
        &s,
        s.https.port()
    )
    .is_ok()));
    let gap = stopped.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let tally = load.finish();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "plain restart: ok {} failed {} (refused {}); old drained in {drained:?}, serving again after {gap:?}",
        tally.ok, tally.failed, tally.refused
    );
}

/// `run --upgrade` with no instance on these addresses fails at once and
/// says what to do instead.
#[test]
fn an_upgrade_with_nothing_running_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(dir.path(), &Options::default());
    common::TestCa::new().leaf(&dir.path().join("tls"), "server", &["localhost"]);
    let (ok, _, err) = common::run_cli(&["run", "--upgrade", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nothing to take over"), "{err}");
    assert!(err.contains("visitord run"), "{err}");
    // Said before Pingora's wait for sockets that would never come, which
    // ends in its own "Bootstrap failed".
    assert!(!err.contains("Bootstrap failed"), "{err}");
}

/// The unit lets a child of the main process become the main process, has
/// the runtime directory the upgrade socket defaults to, and keeps
/// `systemctl reload` a SIGHUP; the command it documents is the one the
/// log line and docs/operations.md name.
#[test]
fn the_unit_follows_the_new_instance() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/visitord.service")).unwrap();
    let has = |line: &str| unit.lines().any(|l| l == line);
    assert!(has("Type=notify"));
    assert!(has("NotifyAccess=all"));
    assert!(has("RuntimeDirectory=visitord"));
    assert!(unit
        .lines()
        .any(|l| l.starts_with("ExecReload=") && l.ends_with("-HUP $MAINPID")));
    let command = "systemctl kill --signal=SIGUSR2 --kill-whom=main visitord";
    assert!(unit.contains(command));
    let operations = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    assert!(operations.contains(command));
    assert!(operations.contains("## Upgrade, restart, reload — which to use when"));
}

/// `run --upgrade` alone is an upgrade: the new instance finds the process
/// holding the listening sockets and sends it SIGQUIT itself.
#[test]
fn run_upgrade_alone_is_an_upgrade() {
    let s = Server::with(options(String::new()));
    let old = s.pid();
    let load = Load::start(&s, s.https.port(), 2);
    let mut next = Successor::start(&s);
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(500));
    let tally = load.finish();
    assert_eq!(tally.failed, 0, "{tally:?}");
    assert!(
        next.logs()
            .contains(&format!("sent SIGQUIT to process [{old}]")),
        "{}",
        next.logs()
    );
    assert!(next.exited().is_none(), "{}", next.logs());
    assert_eq!(readyz(&s, s.https.port()).unwrap(), 200);
}
