//! PRIVACY.md's promises: no client address in any log line at any level,
//! nothing written to disk; and what client failures are logged at.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{connect_from, eventually, raw_tls, Options, Server};

/// A loopback address no other part of the setup uses, so that finding it
/// in the log can only mean the client's address leaked.
const CLIENT: &str = "127.45.67.89";

fn client() -> IpAddr {
    CLIENT.parse().unwrap()
}

/// Every kind of traffic from CLIENT.
fn send_everything(s: &Server) {
    let from = client();
    let http = s.client_builder().local_address(from).build().unwrap();
    let get = |path: &str, origin: &str| {
        let _ = http.get(s.url(path)).header("Origin", origin).send();
    };
    get("/api/?pid=demo", "https://example.com");
    get("/api/?pid=demo", "https://evil.example");
    get("/api/?pid=nope", "https://example.com");
    get("/api/?pid=%zz", "https://example.com");
    get("/nowhere", "https://example.com");
    for _ in 0..5 {
        get("/api/?pid=demo", "https://example.com"); // over the rate limit
    }
    let _ = http.post(s.url("/api/?pid=demo")).body("x").send();
    let _ = http
        .request(reqwest::Method::OPTIONS, s.url("/api/?pid=demo"))
        .header("Origin", "https://example.com")
        .send();
    // Plain HTTP to the redirect listener.
    let plain = reqwest::blocking::Client::builder()
        .local_address(from)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let _ = plain.get(format!("http://{}/api/?pid=demo", s.http)).send();
    // Malformed HTTP over TLS.
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\0 HTTP/1.1\r\n\r\n",
    ] {
        let _ = raw_tls(s.https, &s.ca, Some(from), raw, Duration::from_secs(3));
    }
    // Failed TLS handshakes: not TLS at all, and TLS cut short.
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let mut tcp = connect_from(s.https, Some(from));
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.write_all(raw);
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink);
    }
    // A connection that is opened and dropped.
    drop(connect_from(s.https, Some(from)));
    // What an attack pass sends: scanners, a slowloris cut at the head
    // deadline, a huge head, an HTTP/2 rapid reset, connections over the
    // per-client cap and silent ones cut at the handshake deadline.
    common::attack::scanner_burst(s.https, s.http, &s.ca, Duration::from_secs(1));
    common::attack::h2_rapid_reset(s.https, &s.ca, from, 50);
    let silent: Vec<_> = (0..12).map(|_| connect_from(s.https, Some(from))).collect();
    std::thread::sleep(Duration::from_millis(1500));
    drop(silent);
}

#[test]
fn no_client_address_in_any_log_line() {
    let s = Server::with(Options {
        trusted_proxies: vec![],
        rust_log: "trace",
        extra: "\n[limits]\nrequests_per_minute_per_ip = 3\nrequest_header_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"\nmax_connections_per_ip = 10\n".into(),
        ..Options::default()
    });
    send_everything(&s);
    // Let the last lines reach the log.
    std::thread::sleep(Duration::from_millis(500));
    let logs = s.logs();
    assert!(
        logs.lines().filter(|l| l.contains("TRACE")).count() > 100,
        "the log is not at trace level; the test proves nothing:\n{logs}"
    );
    for expected in ["handshake", "over the connection limit", "request head"] {
        assert!(
            logs.contains(expected),
            "nothing about {expected:?} was logged:\n{logs}"
        );
    }
    let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(CLIENT)).collect();
    assert!(
        leaks.is_empty(),
        "{} lines name the client:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // The metrics saw the traffic (so it did reach the server)...
    let text = s.metrics_text();
    assert!(
        text.contains("visitord_rate_limited_total{reason=\"client_rate\"}"),
        "{text}"
    );
    // ...and do not name the client either.
    assert!(!text.contains(CLIENT));
}

#[test]
fn nothing_is_written_to_disk() {
    let s = Server::with(Options {
        trusted_proxies: vec![],
        ..Options::default()
    });
    let before = files_under(s.dir.path());
    send_everything(&s);
    std::thread::sleep(Duration::from_millis(300));
    let after = files_under(s.dir.path());
    assert_eq!(
        before, after,
        "files appeared or vanished in the config folder"
    );
    // No file is open for writing but the inherited log (fds 1 and 2).
    let pid = s.pid();
    let log = s.path("visitord.log");
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let fd = entry.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.is_absolute() || target == log || !target.is_file() {
            continue; // sockets, pipes, anon inodes, the log
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(
            flags & 0o3,
            0,
            "fd {fd} ({}) is open for writing",
            target.display()
        );
    }
    let _: SocketAddr = s.https;
}

/// Every system call that could put something on disk, made by any
/// thread of the process while it serves every kind of traffic, watched
/// with `strace` (scripts/test installs it): none may create, write,
/// truncate, rename, link or remove a file. This configuration has no
/// `[acme]` and logs to the inherited standard error, the only places
/// visitord writes.
#[test]
fn no_file_is_created_or_written_while_serving() {
    let s = Server::with(Options {
        trusted_proxies: vec![],
        ..Options::default()
    });
    let trace = s.path("syscalls.trace");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "signal=none", "-e"])
        .arg(
            "trace=open,openat,openat2,creat,rename,renameat,renameat2,unlink,unlinkat,\
             mkdir,mkdirat,rmdir,truncate,ftruncate,link,linkat,symlink,symlinkat,mknod,mknodat",
        )
        .arg("-o")
        .arg(&trace)
        .args(["-p", &s.pid().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace is not installed (Debian package `strace`; scripts/test installs it)");
    // Attached once a call of the running process shows up: a reload reads
    // every file it was built from.
    s.signal("HUP");
    let attached = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("openat("))
    });
    assert!(attached, "strace did not attach");
    send_everything(&s);
    s.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status()
        .unwrap();
    let _ = strace.wait();
    let calls = std::fs::read_to_string(&trace).unwrap();
    // Both reloads were seen: the trace covers the whole run.
    assert!(calls.matches("visitord.toml\"").count() >= 2, "{calls}");
    let writes: Vec<&str> = calls
        .lines()
        .filter(|l| {
            let opens = l.contains("open") || l.contains("creat(");
            let writing = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                .iter()
                .any(|f| l.contains(f));
            (opens && writing) || (!opens && !l.contains("resumed>") && l.contains('('))
        })
        .collect();
    assert!(
        writes.is_empty(),
        "the process wrote to the file system:\n{}",
        writes.join("\n")
    );
}

fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "visitord.log") {
                let len = e.metadata().unwrap().len();
                out.push((path, len));
            }
        }
    }
    out.sort();
    out
}

/// A failed TLS handshake is the client's doing: logged at info (as nginx
/// does), never as an error the operator would have to chase.
#[test]
fn failed_handshakes_are_info_not_errors() {
    let s = Server::with(Options::default());
    let mut tcp = connect_from(s.https, None);
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = tcp.read_to_end(&mut Vec::new());
    let logged = eventually(Duration::from_secs(5), || {
        s.logs().lines().any(|l| l.contains("handshake error"))
    });
    let logs = s.logs();
    assert!(logged, "the failed handshake was not logged:\n{logs}");
    let handshake: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("handshake error"))
        .collect();
    assert!(
        handshake.iter().all(|l| l.contains(" INFO ")),
        "not at info: {handshake:?}"
    );
    assert!(!logs.contains(" ERROR "), "an error was logged:\n{logs}");
}

/// After API traffic from 300 client addresses (IPv4 and IPv6, through a
/// trusted proxy, allowed, refused and rate limited), no label value of
/// any family is an address or names one, and the label values stay few:
/// they are bounded names, not one per client.
#[test]
fn no_metric_label_carries_a_client_address() {
    let s = Server::with(Options {
        extra: "\n[limits]\nrequests_per_minute_per_ip = 2\n".into(),
        ..Options::default()
    });
    let clients: Vec<String> = (0..300u32)
        .map(|n| {
            if n % 2 == 0 {
                format!("198.51.{}.{}", n / 250, n % 250 + 1)
            } else {
                format!("2001:db8:{n:x}::{n:x}")
            }
        })
        .collect();
    let http = s.client();
    for (n, client) in clients.iter().enumerate() {
        let origin = ["https://example.com", "https://evil.example", "null"][n % 3];
        let pid = ["demo", "nope", "shop"][n % 3];
        for _ in 0..3 {
            let _ = http
                .get(s.url(&format!("/api/?pid={pid}")))
                .header("X-Forwarded-For", client.as_str())
                .header("Origin", origin)
                .send();
        }
        if n % 50 == 0 {
            let _ = http
                .get(s.url(&format!("/{client}")))
                .header("X-Forwarded-For", client.as_str())
                .send();
        }
    }
    let text = s.metrics_text();
    assert!(
        text.contains("visitord_rate_limited_total{reason=\"client_rate\"}"),
        "{text}"
    );
    let mut values = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line.split_once('{').and_then(|(_, r)| r.rsplit_once('}')) else {
            continue;
        };
        for pair in labels.0.split("\",") {
            let (name, value) = pair.split_once("=\"").unwrap();
            let value = value.trim_end_matches('"');
            assert!(
                value.parse::<IpAddr>().is_err(),
                "{name}={value:?} in {line}"
            );
            for client in &clients {
                assert!(!value.contains(client.as_str()), "{client} in {line}");
            }
            values.insert(format!("{name}={value}"));
        }
    }
    assert!(values.len() > 20, "{values:?}");
    assert!(
        values.len() < 150,
        "not bounded: {} values {values:?}",
        values.len()
    );
}

/// What a request carries that must never reach a log line: each value is
/// distinctive, so finding it can only mean a leak.
const COOKIE: &str = "sid=c00kie-6f1d2a";
const BEARER: &str = "Bearer t0ken-9a7c3e";
const QUERY_VALUE: &str = "qv4lue-3b2e8f";
const AGENT: &str = "SecretAgent-8d4f1b/1.0";
const BODY: &str = "b0dy-5e6a7c";
/// The visitor facts the fixture database gives every loopback client,
/// which visitord sends a site's upstream as `X-Visitor-*` headers.
const FACTS: [&str; 3] = ["Amsterdam", "North Holland", "52.374"];

/// PRIVACY.md: no header value, query string or visitor fact in any line
/// at any level, the libraries' included. At debug Pingora printed each
/// upstream request whole (cookie, authorization, query, user agent,
/// `X-Visitor-*`), at trace the bytes it wrote.
#[test]
fn no_request_content_in_any_log_line() {
    let up = common::upstream::Upstream::start("a");
    let s = Server::with(Options {
        rust_log: "trace",
        extra: format!(
            "\n[[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n",
            up.addr
        ),
        ..Options::default()
    });
    let query = format!("?pid=demo&email=alice%40example.com&q={QUERY_VALUE}");
    for version in [reqwest::Version::HTTP_11, reqwest::Version::HTTP_2] {
        let mut tls = s.ca.client_config();
        tls.alpn_protocols = match version {
            reqwest::Version::HTTP_2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let http = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve("localhost", s.https)
            .resolve("site.example.com", s.https)
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap();
        let urls = [
            s.url(&format!("/api/{query}")),
            format!("https://site.example.com:{}/page{query}", s.https.port()),
        ];
        for url in urls {
            let r = http
                .post(&url)
                .header("Cookie", COOKIE)
                .header("Authorization", BEARER)
                .header("User-Agent", AGENT)
                .header("Origin", "https://example.com")
                .body(BODY)
                .send()
                .unwrap();
            assert_eq!(r.version(), version, "{url}");
            let r = http
                .get(&url)
                .header("Cookie", COOKIE)
                .header("Authorization", BEARER)
                .header("User-Agent", AGENT)
                .header("Origin", "https://example.com")
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "{url}");
        }
    }
    assert_eq!(up.requests(), 4, "the site saw every request");
    std::thread::sleep(Duration::from_millis(500));
    let logs = s.logs();
    // The test proves something only if the lines that used to leak are
    // there, redacted.
    for expected in ["Sending header to upstream", "TRACE"] {
        assert!(logs.contains(expected), "no {expected:?} in the log");
    }
    let mut secrets = vec![
        COOKIE,
        "c00kie",
        "t0ken",
        QUERY_VALUE,
        "alice",
        AGENT,
        "SecretAgent",
        BODY,
    ];
    secrets.extend(FACTS);
    let leaks: Vec<String> = secrets
        .iter()
        .flat_map(|secret| {
            logs.lines()
                .filter(move |l| l.contains(secret))
                .map(move |l| format!("{secret}: {l}"))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} lines carry request content:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
