//! Live reload, metrics and lifecycle (docs/design.md §6, §7) with the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mmdb::{flat_record, MmdbWriter};
use common::{eventually, metric, Options, Server};

const ALLOWED: &str = "https://example.com";

/// Writes `text` to a temporary file beside `path`, then renames it over
/// `path` — the safe way docs/operations.md tells operators to replace files.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A flat database in which 81.2.69.0/24 is in `country`.
fn database(country: &str) -> Vec<u8> {
    let mut w = MmdbWriter::new("test-flat-city", 6);
    w.insert(
        "81.2.69.0/24".parse().unwrap(),
        flat_record(country, "", "", 1.0, 2.0, "", ""),
    );
    w.insert(
        "127.0.0.0/8".parse().unwrap(),
        flat_record("NL", "", "", 1.0, 2.0, "", ""),
    );
    w.to_bytes()
}

fn country_of_81(s: &Server) -> String {
    let r = s.api(
        "?pid=demo",
        &[("Origin", ALLOWED), ("X-Forwarded-For", "81.2.69.142")],
    );
    r.json()["data"]["countryCode"].as_str().unwrap().to_owned()
}

/// A load loop is not abuse: no per-client request limit.
fn unlimited() -> Options {
    Options {
        extra: "\n[limits]\nrequests_per_minute_per_ip = 0\n".into(),
        ..Options::default()
    }
}

/// Load threads that are stopped and joined when dropped — also when the
/// test panics, before the server is dropped, so that their clones of the
/// server do not outlive the test process's cleanup and leak its child.
struct LoadThreads {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl LoadThreads {
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            h.join().unwrap();
        }
    }
}

impl Drop for LoadThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[test]
fn new_domain_takes_effect_within_3s_of_a_rename_over() {
    let s = Server::start();
    let origin = "https://new.example.net";
    assert_eq!(s.api("?pid=demo", &[("Origin", origin)]).status, 403);
    let started = Instant::now();
    replace(
        &s.path("projects.toml"),
        b"[[project]]\nid = \"demo\"\ndomains = [\"example.com\", \"new.example.net\"]\n",
    );
    let ok = eventually(Duration::from_secs(3), || {
        s.api("?pid=demo", &[("Origin", origin)]).status == 200
    });
    assert!(ok, "not live after {:?}:\n{}", started.elapsed(), s.logs());
    assert_eq!(metric(&s, "visitord_snapshot_generation"), 2.0);
}

#[test]
fn broken_projects_keep_the_old_ones_serving_and_count_the_error() {
    let s = Server::start();
    let counter = "visitord_reloads_total{kind=\"projects\",result=\"error\"}";
    assert_eq!(metric(&s, counter), 0.0);
    replace(
        &s.path("projects.toml"),
        b"[[project]]\nid = \"demo\"\ndomains = [\"*.\"]\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || metric(&s, counter) == 1.0),
        "{}",
        s.metrics_text()
    );
    assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
    assert_eq!(metric(&s, "visitord_snapshot_generation"), 1.0);
    let logs = s.logs();
    assert!(
        logs.contains("projects.toml: project[0].domains[0]") && logs.contains("WARN"),
        "{logs}"
    );
}

#[test]
fn a_new_database_file_changes_answers() {
    let s = Server::start();
    assert_eq!(country_of_81(&s), "GB");
    replace(&s.path("fixture.mmdb"), &database("FR"));
    assert!(eventually(Duration::from_secs(5), || country_of_81(&s) == "FR"));
    // A database overwritten in place with garbage is refused; FR stays.
    std::fs::write(s.path("fixture.mmdb"), b"definitely not a database").unwrap();
    let errors = "visitord_reloads_total{kind=\"geo\",result=\"error\"}";
    assert!(eventually(Duration::from_secs(5), || metric(&s, errors) >= 1.0));
    assert_eq!(country_of_81(&s), "FR");
}

/// Does a fresh TLS handshake with SNI `name` verify against the test CA?
fn handshake_ok(s: &Server, name: &str) -> bool {
    let config = Arc::new(s.ca.client_config());
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, server_name).unwrap();
    let mut tcp = std::net::TcpStream::connect(s.https).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return false;
        }
    }
    true
}

#[test]
fn a_replaced_certificate_is_served_on_the_next_handshake() {
    let s = Server::start();
    assert!(handshake_ok(&s, "localhost"));
    assert!(!handshake_ok(&s, "renewed.example"));
    let staging = tempfile::tempdir().unwrap();
    let (crt, key) =
        s.ca.leaf(staging.path(), "new", &["renewed.example", "localhost"]);
    replace(&s.path("tls/server.key"), &std::fs::read(key).unwrap());
    replace(&s.path("tls/server.crt"), &std::fs::read(crt).unwrap());
    assert!(
        eventually(Duration::from_secs(5), || handshake_ok(
            &s,
            "renewed.example"
        )),
        "{}",
        s.logs()
    );
    assert!(handshake_ok(&s, "localhost"));
}

#[test]
fn key_then_certificate_replacement_never_serves_an_error() {
    let s = Arc::new(Server::with(unlimited()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (s, stop, sent, failures) = (s.clone(), stop.clone(), sent.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A new connection each time: every request is a handshake.
                let client = s
                    .client_builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let r = client
                    .get(s.url("/api/?pid=demo"))
                    .header("Origin", ALLOWED)
                    .send();
                sent.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                }
            }
        })
    };
    let load = LoadThreads {
        stop: stop.clone(),
        handles: vec![load],
    };
    let staging = tempfile::tempdir().unwrap();
    let (crt, key) =
        s.ca.leaf(staging.path(), "new", &["renewed.example", "localhost"]);
    let key_errors = "visitord_reloads_total{kind=\"tls\",result=\"error\"}";
    replace(&s.path("tls/server.key"), &std::fs::read(key).unwrap());
    // The key alone does not match the serving certificate: refused.
    assert!(eventually(Duration::from_secs(5), || metric(
        &s, key_errors
    ) >= 1.0));
    std::thread::sleep(Duration::from_millis(300));
    replace(&s.path("tls/server.crt"), &std::fs::read(crt).unwrap());
    assert!(eventually(Duration::from_secs(5), || handshake_ok(
        &s,
        "renewed.example"
    )));
    std::thread::sleep(Duration::from_millis(300));
    load.finish();
    let failures = failures.lock().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 10);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn sighup_reloads() {
    let s = Server::start();
    assert_eq!(metric(&s, "visitord_snapshot_generation"), 1.0);
    s.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || metric(
        &s,
        "visitord_snapshot_generation"
    ) == 2.0));
    assert!(s.try_status().is_none(), "SIGHUP must not terminate");
    assert!(s.logs().contains("reloaded on SIGHUP"), "{}", s.logs());
    assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
}

#[test]
fn sigterm_exits_within_the_grace_period() {
    let s = Server::with(Options {
        grace_period: "2s",
        ..Options::default()
    });
    let (status, took) = s.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
    // The listeners are gone.
    assert!(std::net::TcpStream::connect(s.https).is_err());
}

/// With nothing to drain, SIGTERM does not wait out the grace period.
#[test]
fn sigterm_with_only_idle_connections_exits_early() {
    let s = Server::with(Options {
        grace_period: "30s",
        ..Options::default()
    });
    // A kept-alive connection, idle after its answer.
    let mut idle = common::tls_connect(s.https, &s.ca, "localhost", b"").unwrap();
    idle.write_all(
        b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let (status, took) = s.terminate();
    assert!(status.success(), "{status:?}");
    // The shutdown closed the idle connection instead of waiting 30 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        s.logs().contains("every connection has closed"),
        "{}",
        s.logs()
    );
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        !rest.ends_with(b"HTTP/1.1"),
        "the connection was still served"
    );
}

#[test]
fn sigint_exits_at_once() {
    let s = Server::with(Options {
        grace_period: "30s",
        ..Options::default()
    });
    let started = std::time::Instant::now();
    s.signal("INT");
    s.wait_exit(Duration::from_secs(10));
    // Well inside the 30 s grace period SIGTERM would wait out.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(s.https).is_err());
}

/// Settings of `visitord.toml` itself reload live, like the files it names:
/// trusting a proxy and the API path, with no restart and no warning.
#[test]
fn trusted_proxies_and_the_api_path_reload_live() {
    let s = Server::with(Options {
        trusted_proxies: vec![],
        ..Options::default()
    });
    let ip = |s: &Server, path: &str| {
        let r = common::Reply::from(
            s.client()
                .get(s.url(&format!("{path}?pid=demo")))
                .header("Origin", ALLOWED)
                .header("X-Forwarded-For", "81.2.69.142")
                .send()
                .unwrap(),
        );
        (
            r.status,
            r.json()["data"]["ipAddress"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(ip(&s, "/api/"), (200, Some("127.0.0.1".to_owned())));

    let config = std::fs::read_to_string(&s.config).unwrap();
    let changed = config
        .replace(
            "trusted_proxies = []",
            "trusted_proxies = [\"127.0.0.1/32\"]",
        )
        .replace("[api]\n", "[api]\npath = \"/visitor/\"\n");
    assert_ne!(changed, config);
    replace(&s.config, changed.as_bytes());
    assert!(
        eventually(Duration::from_secs(5), || ip(&s, "/visitor/")
            == (200, Some("81.2.69.142".to_owned()))),
        "{}",
        s.logs()
    );
    assert_eq!(ip(&s, "/api/").0, 404);
    assert!(!s.logs().contains("take effect on upgrade"), "{}", s.logs());
}

#[test]
fn listener_changes_are_logged_as_taking_effect_on_upgrade() {
    let s = Server::start();
    let config = std::fs::read_to_string(&s.config).unwrap();
    let changed = config.replace("threads = 2", "threads = 3");
    replace(&s.config, changed.as_bytes());
    assert!(eventually(Duration::from_secs(5), || s
        .logs()
        .contains("take effect on upgrade")));
    assert!(s.logs().contains("server.threads"), "{}", s.logs());
    // The line names the command.
    assert!(
        s.logs()
            .contains("systemctl kill --signal=SIGUSR2 --kill-whom=main visitord"),
        "{}",
        s.logs()
    );
}

/// The headline promise: replace the database and the projects 20 times
/// while requests run, and no request fails.
#[test]
fn twenty_replacements_under_load_fail_no_request() {
    let s = Arc::new(Server::with(unlimited()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop, sent, failures) =
                (s.clone(), stop.clone(), sent.clone(), failures.clone());
            std::thread::spawn(move || {
                let client = s.client();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .get(s.url("/api/?pid=demo"))
                        .header("Origin", ALLOWED)
                        .header("X-Forwarded-For", "81.2.69.142")
                        .send();
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let v: serde_json::Value =
                                serde_json::from_str(&r.text().unwrap()).unwrap();
                            let cc = v["data"]["countryCode"].as_str().unwrap().to_owned();
                            if !["GB", "FR", "DE"].contains(&cc.as_str()) {
                                failures.lock().unwrap().push(format!("country {cc:?}"));
                            }
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect();
    let workers = LoadThreads {
        stop: stop.clone(),
        handles: workers,
    };
    for i in 0..20 {
        let country = ["FR", "DE"][i % 2];
        replace(&s.path("fixture.mmdb"), &database(country));
        let projects = format!(
            "[[project]]\nid = \"demo\"\ndomains = [\"example.com\", \"n{i}.example.org\"]\n"
        );
        replace(&s.path("projects.toml"), projects.as_bytes());
        std::thread::sleep(Duration::from_millis(350));
    }
    // The last state is served: DE, and the last project domain.
    assert!(eventually(Duration::from_secs(10), || country_of_81(&s)
        == "DE"
        && s.api("?pid=demo", &[("Origin", "https://n19.example.org")])
            .status
            == 200));
    let generations = metric(&s, "visitord_snapshot_generation");
    workers.finish();
    let sent = sent.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    eprintln!(
        "reload under load: {sent} requests, {} failed, {generations} generations",
        failures.len()
    );
    assert!(generations >= 5.0, "only {generations} generations");
    assert!(sent > 100, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let s = Server::start();
    s.api("?pid=demo", &[("Origin", ALLOWED)]);
    s.api("?pid=demo", &[("Origin", "https://evil.com")]);
    s.api("?pid=nope", &[("Origin", ALLOWED)]);
    let text = s.metrics_text();
    for needle in [
        "visitord_requests_total{project=\"demo\",route=\"api\",status=\"200\"} 1",
        "visitord_requests_total{project=\"demo\",route=\"api\",status=\"403\"} 1",
        "visitord_requests_total{project=\"\",route=\"api\",status=\"403\"} 1",
        "visitord_origin_rejections_total{reason=\"not_listed\"} 1",
        "visitord_origin_rejections_total{reason=\"unknown_project\"} 1",
        "visitord_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"}",
        "visitord_snapshot_generation 1",
        "visitord_geo_database_build_timestamp_seconds{database=\"fixture\"}",
        "visitord_tls_certificate_expiry_timestamp_seconds{name=\"localhost\"}",
        "visitord_build_info{version=",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(
        !text.contains("127.0.0.1"),
        "an address leaked into metrics"
    );
    assert!(!text.contains("evil.com"), "an origin leaked into metrics");
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_ok_and(|o| o.status.success()) {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool not installed: checked by the unit test's parser only");
    }
}

/// docs/operations.md, "Shutting down": after serving traffic, with
/// kept-alive HTTP/1.1 and HTTP/2 connections idle, SIGTERM ends the
/// process within the time stated there, far inside the grace period.
#[test]
fn sigterm_after_traffic_exits_within_the_documented_time() {
    let s = Server::with(Options {
        grace_period: "30s",
        ..Options::default()
    });
    let h2 = s.client();
    let h1 = s.client_builder().http1_only().build().unwrap();
    for client in [&h2, &h1] {
        for _ in 0..20 {
            let r = client
                .get(s.url("/api/?pid=demo"))
                .header("Origin", ALLOWED)
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // The redirect listener and the metrics listener, kept alive too.
    for _ in 0..5 {
        let r = h1
            .get(format!("http://{}/api/?pid=demo", s.http))
            .send()
            .unwrap();
        assert_eq!(r.status(), 308);
        let r = h1.get(format!("http://{}/healthz", s.http)).send().unwrap();
        assert_eq!(r.status(), 200);
        let r = h1
            .get(format!("http://{}/metrics", s.metrics))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // And clients still sending when the signal comes: new connections
    // are refused, kept-alive ones are answered and closed.
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop) = (s.client(), s.url("/api/?pid=demo"), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = client.get(&url).header("Origin", ALLOWED).send();
                    if sent.is_err() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = s.terminate();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "{status:?}");
    // 1 s of it is the drain's settle time (src/server.rs DRAIN_SETTLE).
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    // Measured 1.05 to 1.2 s; the margin is for a loaded test machine.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}
