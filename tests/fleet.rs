//! Fleet-wide project limits (docs/fleet.md) with the real binary and a
//! real Redis: `redis-server` (Debian's, installed by scripts/test) started
//! on a free port, without persistence, killed on drop.
//!
//! Counts are kept per wall-clock minute, so each scenario runs inside one
//! minute: when the minute turns during a run, it runs again with a fresh
//! project (see `within_one_window`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, free_port, metric, Options, Server};

const ALLOWED: &str = "https://example.com";
/// Generous: the machine may be busy with other test processes.
const PATIENCE: Duration = Duration::from_secs(60);
const SYNCS: &str = "visitord_shared_store_syncs_total";
const ERRORS: &str = "visitord_shared_store_errors_total";
const UP: &str = "visitord_shared_store_up";

/// A `redis-server` on a free loopback port, in its own folder, saving
/// nothing; killed on drop. `restart` brings it back on the same port,
/// empty, as a restarted store without persistence comes back.
struct Store {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    /// `requirepass`, for the test's own connections.
    password: Option<&'static str>,
    dir: tempfile::TempDir,
}

impl Store {
    fn start() -> Store {
        Store::with_args(&[], None)
    }

    fn with_args(extra: &[String], password: Option<&'static str>) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--dir".into(), dir.path().display().to_string()]);
        args.extend(["--port".into(), port.to_string()]);
        args.extend(extra.iter().cloned());
        if let Some(password) = password {
            args.extend(["--requirepass".into(), password.into()]);
        }
        let mut store = Store {
            child: None,
            port,
            args,
            password,
            dir,
        };
        store.restart();
        store
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "the store is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); scripts/test installs Debian's redis-server"
                )
            });
        self.child = Some(child);
        let ready = eventually(PATIENCE, || {
            self.connection()
                .ok()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
                .is_some()
        });
        assert!(ready, "redis-server not ready:\n{}", self.logs());
    }

    /// Kills the server at once (SIGKILL): a store that crashed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a store that hangs,
    /// its connections open and silent.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let url = match self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        };
        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))
    }

    fn get(&self, key: &str) -> Option<u64> {
        let mut c = self.connection().ok()?;
        redis::cmd("GET").arg(key).query(&mut c).ok()?
    }

    /// Every key and what it holds: (key, type, value as text, TTL).
    fn dump(&self) -> Vec<(String, String, String, i64)> {
        let mut c = self.connection().unwrap();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
                let value: String = if kind == "string" {
                    redis::cmd("GET").arg(&key).query(&mut c).unwrap()
                } else {
                    String::new()
                };
                let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
                (key, kind, value, ttl)
            })
            .collect()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Projects with the same limit; each run of a scenario uses a fresh one.
const PROJECTS: [&str; 8] = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"];

fn projects(limit: u32) -> String {
    PROJECTS
        .iter()
        .map(|id| {
            format!(
                "[[project]]\nid = \"{id}\"\ndomains = [\"example.com\"]\nrequests_per_minute = {limit}\n"
            )
        })
        .collect()
}

/// A node of the fleet: no per-client limit (every test request comes from
/// loopback), project limits shared through `store_url`.
fn node(limit: u32, store_url: &str) -> Server {
    Server::with(Options {
        projects: projects(limit),
        extra: format!(
            "\n[limits]\nrequests_per_minute_per_ip = 0\nshared_store = \"{store_url}\"\n"
        ),
        ..Options::default()
    })
}

fn now_window() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

fn key(project: &str, window: u64) -> String {
    format!("visitord:rate:{project}:{window}")
}

/// Runs `scenario` with the first of `projects`; runs it again with the
/// next one when the wall-clock minute changed meanwhile (counts start over
/// at each minute, so its numbers would not hold — whether it then
/// succeeded or failed says nothing).
fn within_one_window<T>(projects: &[&str], mut scenario: impl FnMut(&str, u64) -> T) -> T {
    for &project in projects {
        let window = now_window();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(project, window)));
        if now_window() != window {
            eprintln!("the minute turned during the run with {project}; again");
            continue;
        }
        match outcome {
            Ok(result) => return result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    panic!("the minute turned during every run");
}

/// Sends `n` API requests for `project` to `s` from `from` (or loopback);
/// returns how many were admitted. Every answer is a 200 or a 429 from
/// the project limit: a failing store must never fail a request.
fn send(s: &Server, project: &str, n: usize, from: Option<IpAddr>) -> usize {
    let mut builder = s.client_builder();
    if let Some(ip) = from {
        builder = builder.local_address(ip);
    }
    let client = builder.build().unwrap();
    let mut admitted = 0;
    for _ in 0..n {
        let r = client
            .get(s.url(&format!("/api/?pid={project}")))
            .header("Origin", ALLOWED)
            .header("X-Forwarded-For", "198.51.100.77")
            .send()
            .unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => assert!(r.headers().contains_key("retry-after")),
            other => panic!("{other}: {}\n{}", r.text().unwrap(), s.logs()),
        }
    }
    admitted
}

/// Waits until `s` has completed two exchanges with the store: the second
/// began after this call did, so it read the store as it is now.
fn wait_for_sync(s: &Server) {
    let start = metric(s, SYNCS);
    assert!(
        eventually(PATIENCE, || metric(s, SYNCS) >= start + 2.0),
        "no sync:\n{}",
        s.logs()
    );
}

/// Waits until the store holds `value` under `key`.
fn wait_for_value(store: &Store, key: &str, value: u64) {
    assert!(
        eventually(PATIENCE, || store.get(key) == Some(value)),
        "{key} = {:?}, not {value}",
        store.get(key)
    );
}

/// The store holds only project counts: keys `visitord:rate:{id}:{window}`
/// with a configured id and a current window, integer values, an expiry —
/// and no address anywhere.
fn assert_only_project_counts(store: &Store, addresses: &[&str]) {
    let window = now_window();
    let dump = store.dump();
    assert!(!dump.is_empty(), "the store is empty");
    for (key, kind, value, ttl) in &dump {
        let parts: Vec<&str> = key.split(':').collect();
        assert!(
            parts.len() == 4 && parts[0] == "visitord" && parts[1] == "rate",
            "{key}"
        );
        assert!(PROJECTS.contains(&parts[2]), "{key}: not a project id");
        let w: u64 = parts[3].parse().unwrap_or_else(|_| panic!("{key}"));
        assert!(w + 2 >= window && w <= window, "{key}: not a recent window");
        assert_eq!(kind, "string", "{key}");
        assert!(value.parse::<u64>().is_ok(), "{key} = {value:?}");
        assert!((1..=120).contains(ttl), "{key}: TTL {ttl}");
        for address in addresses {
            assert!(
                !key.contains(address) && !value.contains(address),
                "{key} = {value}"
            );
        }
    }
}

/// The documented bound, checked where it is exact: a node admits a
/// request only while its own count plus the fleet total it last read is
/// under the limit. Once each node has read the other's count, the two
/// together admit exactly the limit; and whatever the timing, every
/// admitted request ends up counted once in the store.
#[test]
fn two_nodes_share_a_project_limit() {
    let store = Store::start();
    let a = node(20, &store.url());
    let b = node(20, &store.url());
    const CLIENT: &str = "127.45.67.89";
    let client: IpAddr = CLIENT.parse().unwrap();

    within_one_window(&PROJECTS[..4], |project, window| {
        let key = key(project, window);
        assert_eq!(send(&a, project, 12, Some(client)), 12);
        wait_for_value(&store, &key, 12);
        wait_for_sync(&b);
        // B knows of A's 12: it admits the 8 that are left of 20.
        assert_eq!(send(&b, project, 20, Some(client)), 8);
        wait_for_value(&store, &key, 20);
        wait_for_sync(&a);
        assert_eq!(send(&a, project, 5, Some(client)), 0);
    });

    // Both nodes at once, as fast as they answer: never refused before the
    // fleet reached the limit, never more than each node's limit alone,
    // and every admitted request counted once in the store.
    let limit = 20;
    let (admitted, project, window) = within_one_window(&PROJECTS[4..], |project, window| {
        let admitted = std::thread::scope(|scope| {
            let threads: Vec<_> = [&a, &b, &a, &b]
                .into_iter()
                .map(|s| scope.spawn(move || send(s, project, 30, Some(client))))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum::<usize>()
        });
        (admitted, project.to_owned(), window)
    });
    eprintln!("two nodes, 120 requests at once, limit {limit}: {admitted} admitted");
    assert!(
        (limit..=2 * limit).contains(&(admitted as u32)),
        "{admitted} admitted"
    );
    wait_for_value(&store, &key(&project, window), admitted as u64);

    assert_only_project_counts(&store, &[CLIENT, "198.51.100.77", "127.0.0.1"]);
    for s in [&a, &b] {
        assert!(!s.logs().contains(CLIENT));
    }
}

/// The store killed mid-run: no request fails, each node goes on counting
/// its own requests (and the fleet total it last read), warns once and
/// counts the errors. The store back, empty: what each node admitted
/// meanwhile is sent, and each reads the other's count again.
#[test]
fn a_failing_store_fails_no_request_and_counting_resumes() {
    let mut store = Store::start();
    let a = node(20, &store.url());
    let b = node(20, &store.url());

    within_one_window(&PROJECTS, |project, window| {
        let key = key(project, window);
        if store.child.is_none() {
            store.restart();
        }
        // Only this run's lines: a run again has an outage of its own.
        let since = [a.logs().len(), b.logs().len()];
        let logs = |i: usize, s: &Server| s.logs()[since[i]..].to_owned();
        assert_eq!(send(&a, project, 5, None), 5);
        wait_for_value(&store, &key, 5);
        wait_for_sync(&b);

        let errors = [metric(&a, ERRORS), metric(&b, ERRORS)];
        store.kill();
        for (i, s) in [&a, &b].into_iter().enumerate() {
            assert!(
                eventually(PATIENCE, || metric(s, ERRORS) >= errors[i] + 3.0),
                "{}",
                s.logs()
            );
            assert_eq!(metric(s, UP), 0.0);
        }
        // A counts on alone: 15 more of its 20.
        assert_eq!(send(&a, project, 25, None), 15);
        // B still knows of A's first 5: 5 of its own leave it 10 short.
        assert_eq!(send(&b, project, 5, None), 5);
        for (i, s) in [&a, &b].into_iter().enumerate() {
            let warnings: Vec<String> = logs(i, s)
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("shared store"))
                .map(str::to_owned)
                .collect();
            assert_eq!(warnings.len(), 1, "{warnings:#?}");
            assert!(!logs(i, s).contains("ERROR"), "{}", s.logs());
        }

        // Back, and empty: A sends the 15 it admitted since its last sync,
        // B its 5; the fleet is at 20 again.
        store.restart();
        wait_for_value(&store, &key, 20);
        for (i, s) in [&a, &b].into_iter().enumerate() {
            assert!(
                eventually(PATIENCE, || logs(i, s).contains("reachable again")),
                "{}",
                s.logs()
            );
            wait_for_sync(s);
            assert_eq!(metric(s, UP), 1.0);
        }
        // B has read A's 20 - 5 = 15 others: nothing left. (Counting alone,
        // with the 5 it knew before the outage, it would admit 10.)
        assert_eq!(send(&b, project, 10, None), 0);
        assert_eq!(send(&a, project, 3, None), 0);
    });
}

/// A store that hangs (stopped, its connection open and silent) is a
/// failing store: exchanges time out, requests are answered from the
/// local count, one warning; when it resumes, so does sharing.
#[test]
fn a_hanging_store_holds_no_request() {
    let store = Store::start();
    let a = node(20, &store.url());
    assert!(eventually(PATIENCE, || metric(&a, UP) == 1.0));
    let errors = metric(&a, ERRORS);
    store.signal("STOP");
    assert!(
        eventually(PATIENCE, || metric(&a, ERRORS) > errors),
        "{}",
        a.logs()
    );
    within_one_window(&PROJECTS, |project, _| {
        assert_eq!(send(&a, project, 25, None), 20);
    });
    store.signal("CONT");
    assert!(
        eventually(PATIENCE, || a.logs().contains("reachable again")),
        "{}",
        a.logs()
    );
    let warnings = a
        .logs()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("shared store"))
        .count();
    assert_eq!(warnings, 1, "{}", a.logs());
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `rediss://` verified by a configured CA, the password from a file, and
/// the whole setting live: added, its password file fixed, removed —
/// without a restart.
#[test]
fn a_tls_store_with_a_password_file_reloads_live() {
    let tls_port = free_port();
    let s = Server::with(Options {
        projects: projects(20),
        ..Options::default()
    });
    let tls = s.path("tls");
    let (crt, key_file) = s.ca.leaf(&tls, "store", &["localhost"]);
    let ca = tls.join("store-ca.pem");
    std::fs::write(&ca, &s.ca.pem).unwrap();
    let arg = |p: &PathBuf| p.display().to_string();
    let store = Store::with_args(
        &[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            arg(&crt),
            "--tls-key-file".into(),
            arg(&key_file),
            "--tls-ca-cert-file".into(),
            arg(&ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        Some("s3cret"),
    );

    // Added with a wrong password: refused by the store, requests unharmed.
    write(&s.path("store-password"), "wrong\n");
    let config = std::fs::read_to_string(&s.config).unwrap();
    write(
        &s.config,
        &format!(
            "{config}\n[limits]\nrequests_per_minute_per_ip = 0\n\
             shared_store = \"rediss://localhost:{tls_port}/0\"\n\
             shared_store_password_file = \"store-password\"\n\
             shared_store_ca = \"tls/store-ca.pem\"\n"
        ),
    );
    assert!(
        eventually(PATIENCE, || metric(&s, ERRORS) >= 1.0),
        "{}",
        s.logs()
    );
    assert_eq!(send(&s, "p1", 3, None), 3);

    // The right password: connected over TLS, counting in the store.
    write(&s.path("store-password"), "s3cret\n");
    assert!(
        eventually(PATIENCE, || metric(&s, UP) == 1.0),
        "{}",
        s.logs()
    );
    within_one_window(&PROJECTS[1..7], |project, window| {
        let before = send(&s, project, 4, None);
        assert!(
            eventually(PATIENCE, || store.get(&key(project, window))
                == Some(before as u64)),
            "{:?}\n{}",
            store.get(&key(project, window)),
            s.logs()
        );
    });

    // Removed: counting per node again, no more exchanges.
    write(&s.config, &config);
    assert!(
        eventually(PATIENCE, || s
            .logs()
            .contains("removed from the configuration")),
        "{}",
        s.logs()
    );
    assert_eq!(metric(&s, UP), 0.0);
    let syncs = metric(&s, SYNCS);
    assert_eq!(send(&s, "p8", 2, None), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&s, SYNCS), syncs);
    assert!(!s.logs().contains("s3cret"));
}

#[test]
fn check_refuses_a_password_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(
        dir.path(),
        &Options {
            extra: "\n[limits]\nshared_store = \"redis://:hunter2@127.0.0.1:6379/0\"\n".into(),
            ..Options::default()
        },
    );
    let (ok, _, stderr) = common::run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("limits.shared_store: a password in the URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
