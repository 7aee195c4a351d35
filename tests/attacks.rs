//! What an outside attack pass found (issue "[hardening-2]"), each closed:
//! connections held in the TLS handshake, IPv6 addresses picked from a /64,
//! look-alike and client-address headers toward upstreams, huge request
//! heads, invalid hosts, client-caused error lines, a log loop at trace
//! level, pipelined requests. The attacker is 127.45.67.89, a legitimate
//! client 127.0.0.2; every flood is bounded in count and time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::attack::{
    attacker, client, closed_by_server, h2_rapid_reset, held_from, open_files, scanner_burst,
    tls_from,
};
use common::upstream::{Echo, Upstream};
use common::{connect_from, eventually, metric, raw_status, raw_tls, Options, Server};

fn with_limits(limits: &str) -> Options {
    Options {
        extra: format!("\n[limits]\n{limits}\n"),
        ..Options::default()
    }
}

/// One API request over a fresh TLS connection from `bind`: its status.
fn api_from(s: &Server, bind: std::net::IpAddr) -> Option<u16> {
    let mut tls = tls_from(s.https, &s.ca, bind).ok()?;
    tls.write_all(
        b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    raw_status(&out)
}

/// Silent TCP connections from the attacker: `n` of them, opened at once.
fn silent(s: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| connect_from(s.https, Some(attacker())))
        .collect()
}

/// 1,500 silent connections from one address once held 1,500 descriptors
/// for a minute. Now the per-client cap counts them from accept, the rest
/// are closed at once, and the handshake deadline ends the ones admitted.
#[test]
fn silent_connections_are_capped_at_accept_and_cut_at_the_handshake_deadline() {
    let s = Server::with(with_limits(
        "max_connections_per_ip = 20\ntls_handshake_timeout = \"2s\"",
    ));
    let before = open_files(&s);
    let mut held = silent(&s, 150);
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(&s, "visitord_rate_limited_total{reason=\"connections\"}") >= 130.0
        }),
        "{}",
        s.metrics_text()
    );
    let during = open_files(&s);
    assert!(
        during <= before + 20 + 10,
        "{during} open files with 150 silent connections (was {before})"
    );
    // Another client is served meanwhile.
    assert_eq!(api_from(&s, client()), Some(200));
    // The admitted ones are cut at the handshake deadline.
    let cut = eventually(Duration::from_secs(10), || {
        metric(
            &s,
            "visitord_closed_connections_total{reason=\"handshake_timeout\"}",
        ) >= 20.0
    });
    assert!(cut, "{}", s.metrics_text());
    let closed = held.iter_mut().map(closed_by_server).filter(|&c| c).count();
    assert_eq!(closed, held.len(), "every silent connection is closed");
    assert!(eventually(Duration::from_secs(5), || open_files(&s) <= before + 2));
    // The attacker's place is free again.
    assert_eq!(api_from(&s, attacker()), Some(200));
    let logs = s.logs();
    assert!(
        !logs.contains(" ERROR ") && !logs.contains(" WARN "),
        "{logs}"
    );
}

/// The server cap counts every connection from accept, whoever opens it.
#[test]
fn the_server_cap_counts_connections_before_tls() {
    let s = Server::with(with_limits(
        "max_connections = 10\ntls_handshake_timeout = \"3s\"",
    ));
    let held = silent(&s, 10);
    // Each is counted in its own task, right after accept. (Not read from
    // the metrics listener: its connection would be the eleventh.)
    assert!(eventually(Duration::from_secs(5), || {
        held_from(&s, attacker()) == 10
    }));
    let refused = api_from(&s, client());
    assert_eq!(refused, None, "{}", s.logs());
    // Once the deadline has closed the silent ones, clients are served
    // (the metrics listener's connections count too, so it is read after).
    assert!(
        eventually(Duration::from_secs(10), || api_from(&s, client())
            == Some(200)),
        "{}",
        s.logs()
    );
    assert!(
        metric(
            &s,
            "visitord_rate_limited_total{reason=\"server_connections\"}"
        ) >= 1.0
    );
    drop(held);
}

/// Whoever holds an IPv6 /64 holds 2^64 addresses: the /64 is the client.
#[test]
fn an_ipv6_slash_64_is_one_client() {
    let s = Server::with(with_limits("requests_per_minute_per_ip = 5"));
    let from = |ip: &str| {
        s.api(
            "?pid=demo",
            &[("Origin", "https://example.com"), ("X-Forwarded-For", ip)],
        )
        .status
    };
    for n in 1..=5 {
        assert_eq!(from(&format!("2001:db8:1:2::{n:x}")), 200);
    }
    assert_eq!(from("2001:db8:1:2:dead:beef:0:1"), 429);
    assert_eq!(
        from("2001:db8:1:3::1"),
        200,
        "the next /64 is another client"
    );
    // Per address when configured so.
    let s = Server::with(with_limits(
        "requests_per_minute_per_ip = 5\nipv6_prefix = 128",
    ));
    let from = |ip: &str| {
        s.api(
            "?pid=demo",
            &[("Origin", "https://example.com"), ("X-Forwarded-For", ip)],
        )
        .status
    };
    for n in 1..=8 {
        assert_eq!(from(&format!("2001:db8:1:2::{n:x}")), 200);
    }
}

fn site_server(up: &Upstream, site_extra: &str, trusted: Vec<String>) -> Server {
    Server::with(Options {
        extra: format!(
            "\n[[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n{site_extra}\n",
            up.addr
        ),
        trusted_proxies: trusted,
        ..Options::default()
    })
}

fn through_site(s: &Server, headers: &[(&str, &str)]) -> Echo {
    let mut req = s
        .client_for(&["site.example.com"])
        .get(format!("https://site.example.com:{}/", s.https.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = common::Reply::from(req.send().unwrap());
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

const SPOOFED: [(&str, &str); 14] = [
    ("X_Visitor_Country", "KP"),
    ("X-Visitor_City", "Pyongyang"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Host", "evil.example"),
    ("X_Forwarded_Proto", "http"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("X-Forwarded-Port", "1"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X_Real_IP", "6.6.6.6"),
    ("my_header", "1"),
];

/// A WSGI/CGI-style upstream reads `_` as `-`: look-alikes of visitord's
/// headers must never reach it, nor client-address headers from a client
/// that is no trusted proxy.
#[test]
fn upstreams_never_see_look_alikes_or_an_untrusted_clients_address_headers() {
    let up = Upstream::start("a");
    let s = site_server(&up, "", vec![]);
    let e = through_site(&s, &SPOOFED);
    for (name, value) in SPOOFED {
        let arrived = e.all(name);
        let normalised = name.to_ascii_lowercase().replace('_', "-");
        let as_wsgi = e
            .headers
            .iter()
            .filter(|(n, _)| n.replace('_', "-") == normalised)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>();
        assert!(
            !arrived.contains(&value) && !as_wsgi.contains(&value),
            "{name}={value} reached the upstream: {:?}",
            e.headers
        );
    }
    assert!(
        e.headers.iter().all(|(n, _)| !n.contains('_')),
        "{:?}",
        e.headers
    );
    assert_eq!(e.one("x-real-ip"), "127.0.0.1");
    assert_eq!(e.one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(
        e.one("x-visitor-country"),
        "NL",
        "the fixture maps 127/8 to NL"
    );
    assert_eq!(e.one("x-forwarded-proto"), "https");
    assert_eq!(
        e.one("x-forwarded-host").split(':').next(),
        Some("site.example.com")
    );
}

#[test]
fn underscore_headers_pass_when_a_site_allows_them_but_look_alikes_never() {
    let up = Upstream::start("a");
    let s = site_server(&up, "pass_underscore_headers = true", vec![]);
    let e = through_site(&s, &SPOOFED);
    assert_eq!(e.one("my_header"), "1");
    for name in [
        "x_visitor_country",
        "x-visitor_city",
        "x_forwarded_for",
        "x_real_ip",
    ] {
        assert!(e.all(name).is_empty(), "{name}: {:?}", e.headers);
    }
}

#[test]
fn a_trusted_proxy_may_pass_client_address_headers() {
    let up = Upstream::start("a");
    let s = site_server(&up, "", vec!["127.0.0.1/32".into()]);
    let e = through_site(
        &s,
        &[
            ("CF-Connecting-IP", "81.2.69.142"),
            ("X-Forwarded-For", "81.2.69.142"),
            ("X-Real-IP", "6.6.6.6"),
        ],
    );
    assert_eq!(e.one("cf-connecting-ip"), "81.2.69.142");
    assert_eq!(
        e.one("x-real-ip"),
        "81.2.69.142",
        "ours: the client behind the proxy"
    );
}

/// Pingora reads heads of up to 1 MiB; visitord stops at
/// `limits.max_request_head` and answers 431 with the JSON envelope.
#[test]
fn request_heads_over_the_limit_get_431() {
    let s = Server::with(with_limits("max_request_head = 16384"));
    let head = |pad: usize| {
        format!(
            "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let ok = raw_tls(
        s.https,
        &s.ca,
        None,
        head(8 * 1024).as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&ok), Some(200));
    for pad in [17 * 1024, 70 * 1024] {
        let out = raw_tls(
            s.https,
            &s.ca,
            None,
            head(pad).as_bytes(),
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&out);
        assert_eq!(raw_status(&out), Some(431), "{pad}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        assert!(v["data"].is_null());
    }
    // Trickled in small writes, the same.
    let mut tls = tls_from(s.https, &s.ca, client()).unwrap();
    let text = head(20 * 1024);
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(1024) {
        if tls.write_all(chunk).and_then(|()| tls.flush()).is_err() {
            break;
        }
    }
    let _ = tls.read_to_end(&mut out);
    assert_eq!(raw_status(&out), Some(431));
    assert!(
        metric(
            &s,
            "visitord_closed_connections_total{reason=\"head_too_large\"}"
        ) >= 3.0
    );
}

#[test]
fn invalid_hosts_are_refused_with_400() {
    let up = Upstream::start("a");
    let s = Server::with(Options {
        extra: format!(
            "\n[[site]]\nhosts = [\"*.wild.test\"]\nupstreams = [\"{}\"]\n",
            up.addr
        ),
        ..Options::default()
    });
    for host in [
        ".wild.test",
        "a..wild.test",
        "evil.test!",
        "[::1",
        "x.wild.test:99999",
    ] {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let out = raw_tls(
            s.https,
            &s.ca,
            None,
            request.as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(
            raw_status(&out),
            Some(400),
            "{host}: {}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8_lossy(&out);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
            assert_eq!(v["status"], 400, "{host}");
        }
    }
    assert_eq!(up.requests(), 0, "no invalid host reached the site");
    let request = b"GET / HTTP/1.1\r\nHost: a.wild.test\r\nConnection: close\r\n\r\n";
    let out = raw_tls(s.https, &s.ca, None, request, Duration::from_secs(5));
    assert_eq!(raw_status(&out), Some(200));
}

/// A scanned server's log must not be a wall of errors: everything a
/// client does is logged at info or below.
#[test]
fn scanners_and_floods_leave_no_warn_or_error_line() {
    let s = Server::with(with_limits(
        "request_header_timeout = \"1s\"\ntls_handshake_timeout = \"2s\"\nmax_connections_per_ip = 30",
    ));
    scanner_burst(s.https, s.http, &s.ca, Duration::from_secs(1));
    h2_rapid_reset(s.https, &s.ca, attacker(), 200);
    let held = silent(&s, 40);
    // Until the handshake deadline has closed the silent connections.
    assert!(eventually(Duration::from_secs(10), || {
        metric(
            &s,
            "visitord_closed_connections_total{reason=\"handshake_timeout\"}",
        ) >= 1.0
    }));
    drop(held);
    assert_eq!(api_from(&s, client()), Some(200));
    std::thread::sleep(Duration::from_millis(500));
    let logs = s.logs();
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "{} loud lines:\n{}",
        loud.len(),
        loud.join("\n")
    );
    assert!(s.try_status().is_none(), "visitord died:\n{logs}");
}

/// With the log file in a watched folder, each trace line of the file
/// watcher was a new file event, and each event a new line: 229 MB in 5 s.
#[test]
fn trace_logging_beside_watched_files_does_not_feed_itself() {
    let s = Server::with(Options {
        rust_log: "trace",
        ..Options::default()
    });
    let log = s.path("visitord.log");
    assert!(s.logs().contains("TRACE"), "not at trace level");
    let size = || std::fs::metadata(&log).unwrap().len();
    let start = size();
    std::thread::sleep(Duration::from_secs(3));
    let grown = size() - start;
    assert!(
        grown < 1024 * 1024,
        "an idle server wrote {grown} bytes of log in 3 s"
    );
    // And it still reloads on a real change.
    let projects = s.path("projects.toml");
    let text = std::fs::read_to_string(&projects).unwrap();
    std::fs::write(&projects, format!("{text}\n")).unwrap();
    assert!(eventually(Duration::from_secs(10), || s
        .logs()
        .contains("reloaded on file change")));
}

/// A request body is never taken for a request head, even once the answer
/// has started: the site's upstream answers at once without reading the
/// body, and the rest of the body, longer than `max_request_head` and sent
/// after a pause past `request_header_timeout`, is still the body.
#[test]
fn a_body_after_an_early_answer_is_not_a_head() {
    let up = Upstream::start("early");
    let s = Server::with(Options {
        extra: format!(
            "\n[limits]\nmax_request_head = 4096\nrequest_header_timeout = \"1s\"\n\
             [[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n",
            up.addr
        ),
        ..Options::default()
    });
    let mut tls = tls_from(s.https, &s.ca, client()).unwrap();
    let half = "a".repeat(32 * 1024);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: site.example.com\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        half.len() * 2
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(half.as_bytes()).unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = tls.write_all(half.as_bytes()).and_then(|()| tls.flush());
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200"], "{text}");
    for reason in ["head_too_large", "head_timeout"] {
        let series = format!("visitord_closed_connections_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&s, &series), 0.0, "{series}");
    }
}

/// Pipelined HTTP/1.1 requests are answered in order, as nginx does.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start();
    let mut tls = tls_from(s.https, &s.ca, client()).unwrap();
    let one =
        "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\n\r\n";
    let two = "GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let three = "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nConnection: close\r\n\r\n";
    tls.write_all(format!("{one}{two}{three}").as_bytes())
        .unwrap();
    tls.flush().unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{text}");
}

/// The warn and error lines a client could write at will (issue
/// "[hardening-3]" items 5, 8, 9): rustls's about an invalid server name,
/// a warning alert or a wrong first message (checked here at debug), and
/// what HTTP/2 streams reset once their answer started (an API answer, a
/// site's streamed and whole answers) may cause. All are the client's
/// doing. Pingora's `Response header is already sent` is not reliably
/// produced from loopback; its level is held by `src/observe/logging.rs:
/// client_caused_lines_are_info_or_debug_not_error`, and `fail_to_proxy`
/// no longer writes a second head after one went out.
#[test]
fn odd_handshakes_and_resets_after_the_answer_leave_no_warn_or_error_line() {
    let up = Upstream::start("a");
    let s = Server::with(Options {
        rust_log: "debug",
        extra: format!(
            "\n[[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n",
            up.addr
        ),
        ..Options::default()
    });
    for _ in 0..3 {
        common::attack::odd_handshakes(s.https, attacker());
    }
    let reset = |authority: &str, path: &str| {
        common::attack::h2_reset_after_headers(s.https, &s.ca, attacker(), authority, path, 50)
    };
    assert_eq!(reset("site.example.com", "/sse"), 50);
    up.release();
    assert_eq!(reset("site.example.com", "/page"), 50);
    assert_eq!(reset("localhost", "/api/?pid=demo"), 50);
    assert_eq!(api_from(&s, client()), Some(200));
    std::thread::sleep(Duration::from_millis(500));
    let logs = s.logs();
    // The lines are there, at debug: the test saw what it is about.
    for expected in [
        "Illegal SNI hostname received",
        "TLS alert warning received",
        "while expecting",
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains(expected) && l.contains(" DEBUG ")),
            "no {expected:?} at debug:\n{logs}"
        );
    }
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "{} loud lines:\n{}",
        loud.len(),
        loud.join("\n")
    );
}

/// A FIFO in place of `projects.toml` once blocked the reload thread in
/// `open` for good: later changes, SIGHUP, certificate and database
/// updates were never loaded again. Now it is refused like any bad file
/// and the next valid file loads.
#[test]
fn a_fifo_in_place_of_projects_toml_does_not_stop_the_next_reload() {
    let s = Server::start();
    let origin = [("Origin", "https://example.com")];
    let projects = s.path("projects.toml");
    std::fs::remove_file(&projects).unwrap();
    let c = std::ffi::CString::new(projects.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(
        eventually(Duration::from_secs(10), || s.logs().contains(
            "projects.toml: cannot read: not a regular file (a FIFO)"
        )),
        "{}",
        s.logs()
    );
    assert_eq!(
        s.api("?pid=demo", &origin).status,
        200,
        "the old projects serve"
    );
    std::fs::remove_file(&projects).unwrap();
    let next = format!(
        "{}\n[[project]]\nid = \"later\"\ndomains = [\"example.com\"]\n",
        common::DEFAULT_PROJECTS
    );
    std::fs::write(&projects, next).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || s
            .api("?pid=later", &origin)
            .status
            == 200),
        "{}",
        s.logs()
    );
}

/// A POST whose declared body never arrives is the client's doing: once
/// logged as the upstream's timeout at warn (`answered 504: ReadTimedout`)
/// after holding an upstream connection for the site's `read_timeout`.
/// Now the body's pause is timed from the client's side, answered 408,
/// logged at debug with its own reason, and the upstream is let go.
#[test]
fn a_body_that_never_arrives_is_the_clients_doing() {
    let up = Upstream::start("a");
    let s = Server::with(Options {
        extra: format!(
            "\n[limits]\nrequest_body_timeout = \"1s\"\n\
             [[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n",
            up.addr
        ),
        ..Options::default()
    });
    let before = open_files(&s);
    let mut tls = tls_from(s.https, &s.ca, client()).unwrap();
    tls.write_all(
        b"POST /body HTTP/1.1\r\nHost: site.example.com\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .unwrap();
    tls.flush().unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let took = started.elapsed();
    assert_eq!(
        raw_status(&out),
        Some(408),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(up.requests(), 1, "the request reached the upstream");
    assert!(
        eventually(Duration::from_secs(5), || open_files(&s) <= before),
        "the upstream connection is still held: {} open files, {before} before",
        open_files(&s)
    );
    assert_eq!(
        metric(
            &s,
            "visitord_closed_connections_total{reason=\"body_timeout\"}"
        ),
        1.0
    );
    // A body that keeps coming, more slowly than the timeout in all, is fine.
    let mut tls = tls_from(s.https, &s.ca, client()).unwrap();
    tls.write_all(
        b"POST /body HTTP/1.1\r\nHost: site.example.com\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        std::thread::sleep(Duration::from_millis(400));
        tls.write_all(b).unwrap();
        tls.flush().unwrap();
    }
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&out), Some(200), "{text}");
    assert!(text.ends_with("\r\n\r\n4"), "{text}");
    let logs = s.logs();
    assert!(
        !logs.contains(" WARN ") && !logs.contains(" ERROR "),
        "{logs}"
    );
}

/// A space in a request target (`GET /t25 x HTTP/1.1`): Pingora escapes
/// the bytes a target cannot hold (space, `"`, `<`, `>`) instead of
/// refusing the request as nginx does (400), so one request with the
/// target `/t25%20x` reaches the site, never two or a split one.
#[test]
fn a_space_in_the_request_target_is_escaped_into_one_request() {
    let up = Upstream::start("a");
    let s = site_server(&up, "", vec![]);
    let request = b"GET /t25 x HTTP/1.1\r\nHost: site.example.com\r\nConnection: close\r\n\r\n";
    let out = raw_tls(s.https, &s.ca, None, request, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&out), Some(200), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let echo: Echo = serde_json::from_str(body).unwrap();
    assert_eq!(echo.path, "/t25%20x");
    assert_eq!(up.requests(), 1);
}

/// A hostile shared store: it answers the connection's setup, then each
/// exchange with `reply`'s header followed by up to `len` bytes of `body`
/// (a 512 MB bulk string, or a 32 MB array of `:1`), as fast as the
/// connection takes them.
fn hostile_store(
    header: &'static [u8],
    body: &'static [u8],
    len: usize,
) -> (std::net::SocketAddr, tokio::runtime::Runtime) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // The setup: one `+OK` for each command of the first flight.
                let Ok(n) = tcp.read(&mut buf).await else {
                    return;
                };
                let commands = buf[..n]
                    .split(|&b| b == b'\n')
                    .filter(|line| line.first() == Some(&b'*'))
                    .count();
                let _ = tcp.write_all(&b"+OK\r\n".repeat(commands)).await;
                // Then the first exchange gets the flood.
                if tcp.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = tcp.write_all(header).await;
                let chunk = body.repeat((1 << 20) / body.len());
                let mut sent = 0;
                while sent < len && tcp.write_all(&chunk).await.is_ok() {
                    sent += chunk.len();
                }
            });
        }
    });
    (addr, runtime)
}

fn rss_kib(s: &Server) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", s.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A hostile or intercepted store once made visitord read any reply whole:
/// a 512 MB bulk string took RSS from 58 MB to 1.6 GB, and under an
/// address-space cap the process aborted. Now what a store may send is
/// bounded; more drops the connection and counts as an outage (limits
/// fail open), and the API keeps answering.
#[test]
fn a_hostile_shared_store_cannot_exhaust_memory() {
    const MIB: usize = 1 << 20;
    for (header, body, len) in [
        (&b"$536870912\r\n"[..], &b"xxxxxxxx"[..], 512 * MIB),
        (&b"*8388608\r\n"[..], &b":1\r\n"[..], 32 * MIB),
    ] {
        let (store, _runtime) = hostile_store(header, body, len);
        let s = Server::with(Options {
            projects: format!(
                "{}\n[[project]]\nid = \"limited\"\ndomains = [\"example.com\"]\nrequests_per_minute = 1000\n",
                common::DEFAULT_PROJECTS
            ),
            ..Options::default()
        });
        let origin = [("Origin", "https://example.com")];
        assert_eq!(s.api("?pid=limited", &origin).status, 200);
        let baseline = rss_kib(&s);
        let config = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(
            &s.config,
            format!("{config}\n[limits]\nshared_store = \"redis://{store}/0\"\n"),
        )
        .unwrap();
        let mut peak = baseline;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            peak = peak.max(rss_kib(&s));
            assert!(s.try_status().is_none(), "visitord died:\n{}", s.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        let errors = metric(&s, "visitord_shared_store_errors_total");
        assert!(
            errors >= 1.0,
            "the store was never counted down:\n{}",
            s.logs()
        );
        assert_eq!(metric(&s, "visitord_shared_store_up"), 0.0);
        assert_eq!(
            s.api("?pid=limited", &origin).status,
            200,
            "limits fail open"
        );
        let grown = (peak - baseline) / 1024;
        eprintln!(
            "{}: RSS {baseline} KiB, peak +{grown} MiB",
            String::from_utf8_lossy(header).trim()
        );
        assert!(grown < 100, "RSS grew {grown} MiB over {baseline} KiB");
        let logs = s.logs();
        let warned: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("shared store"))
            .collect();
        eprintln!("{}", warned.join("\n"));
        assert!(
            warned
                .iter()
                .any(|l| l.contains("sent more than was asked for")),
            "the store was not cut for its reply:\n{logs}"
        );
    }
}
