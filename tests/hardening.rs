//! Abuse resistance (issue "[hardening]"): rate limits, connection limits,
//! the request-head deadline, and hostile requests over raw TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{raw_status, raw_tls, Options, Server};

const ALLOWED: &str = "https://example.com";

fn limits(extra: &str) -> Options {
    Options {
        extra: format!("\n[limits]\n{extra}\n"),
        ..Options::default()
    }
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let s = Server::with(Options {
        projects: "[[project]]\nid = \"demo\"\ndomains = [\"example.com\"]\n\n[[project]]\nid = \"small\"\ndomains = [\"example.com\"]\nrequests_per_minute = 3\n".into(),
        ..limits("requests_per_minute_per_ip = 5")
    });
    fn from(ip: &str) -> [(&str, &str); 2] {
        [("Origin", ALLOWED), ("X-Forwarded-For", ip)]
    }
    for _ in 0..5 {
        assert_eq!(s.api("?pid=demo", &from("198.51.100.1")).status, 200);
    }
    let r = s.api("?pid=demo", &from("198.51.100.1"));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"status":429,"result":"too many requests","data":null})
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.header("access-control-allow-origin").is_none());
    // Another client is unaffected.
    assert_eq!(s.api("?pid=demo", &from("198.51.100.2")).status, 200);

    // The project limit counts every client of the project.
    for i in 0..3 {
        let ip = format!("203.0.113.{i}");
        assert_eq!(s.api("?pid=small", &from(&ip)).status, 200);
    }
    assert_eq!(s.api("?pid=small", &from("203.0.113.9")).status, 429);

    let text = s.metrics_text();
    assert!(
        text.contains("visitord_rate_limited_total{reason=\"client_rate\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("visitord_rate_limited_total{reason=\"project_rate\"} 1"),
        "{text}"
    );
}

#[test]
fn zero_disables_the_client_limit() {
    let s = Server::with(limits("requests_per_minute_per_ip = 0"));
    for _ in 0..30 {
        assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
    }
}

/// A client trickling its request head, one byte inside any per-read
/// timeout, is cut off at the head deadline.
#[test]
fn slow_header_clients_are_cut_off() {
    let s = Server::with(limits("request_header_timeout = \"1s\""));
    let config = Arc::new(s.ca.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(s.https).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(250));
        if tls
            .write_all(b"X-Slow: a\r\n")
            .and_then(|_| tls.flush())
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        tls.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let eof = matches!(tls.read(&mut buf), Ok(0) | Ok(_));
        tls.sock.set_nonblocking(false).unwrap();
        if eof {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let took = closed_after.expect("the slow client was never cut off");
    assert!(took < Duration::from_secs(3), "cut off after {took:?}");
    // A normal client is still served.
    assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
}

type TlsConn = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection to the server's HTTPS listener from 127.0.0.1.
fn open_tls(s: &Server, config: &Arc<rustls::ClientConfig>) -> TlsConn {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = std::net::TcpStream::connect(s.https).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Whether an API request on `tls` is answered 200.
fn answered(tls: &mut TlsConn) -> bool {
    let request =
        b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\n\r\n";
    if tls.write_all(request).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    tls.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

#[test]
fn connections_per_address_are_capped() {
    let s = Server::with(Options {
        trusted_proxies: vec![],
        ..limits("max_connections_per_ip = 3")
    });
    let config = Arc::new(s.ca.client_config());
    let mut held: Vec<_> = (0..3).map(|_| open_tls(&s, &config)).collect();
    for tls in &mut held {
        assert!(answered(tls));
    }
    let mut fourth = open_tls(&s, &config);
    assert!(!answered(&mut fourth), "a fourth connection was served");
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let mut again = open_tls(&s, &config);
    assert!(answered(&mut again), "a freed place was not reused");
    // The metrics listener's connections count too: make room for one.
    drop(again);
    std::thread::sleep(Duration::from_millis(200));
    let text = s.metrics_text();
    assert!(
        text.contains("visitord_rate_limited_total{reason=\"connections\"}"),
        "{text}"
    );
}

/// A trusted proxy carries many visitors' connections: it is not capped.
#[test]
fn trusted_proxies_are_not_capped() {
    let s = Server::with(limits("max_connections_per_ip = 2")); // 127.0.0.1 is trusted
    let config = Arc::new(s.ca.client_config());
    let mut held: Vec<_> = (0..6).map(|_| open_tls(&s, &config)).collect();
    for (i, tls) in held.iter_mut().enumerate() {
        assert!(answered(tls), "connection {i} was refused");
    }
}

/// Reads one response with a `Content-Length` body: its status and head, or
/// `None` if the connection ends first.
fn read_response(tls: &mut TlsConn) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).ok()?;
    Some((raw_status(&got)?, head))
}

const KEEP_ALIVE_REQUEST: &[u8] =
    b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\n\r\n";

#[test]
fn keepalive_requests_bounds_a_connection() {
    let s = Server::with(limits("keepalive_requests = 2"));
    let config = Arc::new(s.ca.client_config());
    let mut tls = open_tls(&s, &config);
    for i in 1..=2 {
        tls.write_all(KEEP_ALIVE_REQUEST).unwrap();
        let (status, _) = read_response(&mut tls).unwrap_or_else(|| panic!("request {i}"));
        assert_eq!(status, 200, "request {i}");
    }
    // The server closed the connection after the second answer.
    let third = tls
        .write_all(KEEP_ALIVE_REQUEST)
        .ok()
        .and_then(|()| read_response(&mut tls));
    assert!(third.is_none(), "a third request was served: {third:?}");
}

#[test]
fn keepalive_timeout_zero_closes_after_each_answer() {
    let s = Server::with(limits("keepalive_timeout = \"0s\""));
    let config = Arc::new(s.ca.client_config());
    let mut tls = open_tls(&s, &config);
    tls.write_all(KEEP_ALIVE_REQUEST).unwrap();
    let (status, _) = read_response(&mut tls).unwrap();
    assert_eq!(status, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Closed by the server, not ended by the test's 5 s read timeout.
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn api_refuses_request_bodies_before_reading_them() {
    let s = Server::start();
    for req in [
        "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nContent-Length: 5\r\n\r\nhello",
        "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let out = raw_tls(s.https, &s.ca, None, req.as_bytes(), Duration::from_secs(5));
        assert_eq!(raw_status(&out), Some(413), "{}", String::from_utf8_lossy(&out));
        assert!(String::from_utf8_lossy(&out).contains(r#""status":413"#));
    }
}

/// What a hostile request may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 4xx with the JSON envelope.
    Refused,
    /// Harmless input that is answered normally: 2xx, or a 4xx JSON refusal.
    Served,
    /// Not HTTP, or HTTP that Pingora's parser refuses before any visitord
    /// code runs: a 4xx (Pingora's, without a body) or a closed connection.
    Protocol,
}

/// More than a hundred malformed or hostile requests over raw TLS: none
/// gets a 5xx or kills the server, each refusal of a parsed request is a 4xx
/// JSON envelope, and the server keeps answering normally.
#[test]
fn hostile_requests_get_4xx_and_never_5xx() {
    use Expect::*;
    let s = Server::start();
    let origin = "Origin: https://example.com\r\n";
    let mut cases: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    let mut get = |label: String, target: &str, headers: &str, expect: Expect| {
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
        cases.push((label, req.into_bytes(), expect));
    };
    for q in [
        "",
        "?",
        "?pid",
        "?pid=",
        "?pid=%",
        "?pid=%2",
        "?pid=%zz",
        "?pid=%00",
        "?pid=%0d%0a",
        "?pid=%ff",
        "?pid=%c3%28",
        "?pid=demo&pid=demo",
        "?pid=demo&pid=x",
        "?pid=a.b",
        "?pid=a%20b",
        "?pid=../../etc/passwd",
        "?pid=%2e%2e%2f",
        "?pid=%3Cscript%3E",
        "?pid='%20OR%201=1--",
        "?pid=demo%00",
        "?pid=%u0041",
        "?pid=%C3%A9",
        "?pid=demo%2526",
        "?x=%&pid=demo",
        "?pid==demo",
        "?=&=&pid",
        "?pid=demo&x=%C2%85",
    ] {
        get(format!("query {q}"), &format!("/api/{q}"), origin, Refused);
    }
    for control in [
        "%01", "%07", "%08", "%09", "%0b", "%0c", "%1b", "%1f", "%7f", "%c2%80",
    ] {
        let target = format!("/api/?pid=de{control}mo");
        get(format!("control {control}"), &target, origin, Refused);
    }
    get(
        "pid of 65 bytes".into(),
        &format!("/api/?pid={}", "a".repeat(65)),
        origin,
        Refused,
    );
    get(
        "query over 2048 bytes".into(),
        &format!("/api/?pid=demo&x={}", "y".repeat(3000)),
        origin,
        Refused,
    );
    get(
        "40 parameters".into(),
        &format!("/api/?{}pid=demo", "a=1&".repeat(40)),
        origin,
        Refused,
    );
    get(
        "path of 5000 bytes".into(),
        &format!("/api/{}", "x".repeat(5000)),
        origin,
        Refused,
    );
    for target in [
        "/api/../api/?pid=demo",
        "/%61pi/?pid=demo",
        "/api/%2e%2e/",
        "//api/?pid=demo",
        "/API/?pid=demo",
        "/api/x?pid=demo",
    ] {
        get(format!("path {target}"), target, origin, Refused);
    }
    for (label, headers) in [
        ("no origin", String::new()),
        ("null origin", "Origin: null\r\n".to_owned()),
        ("empty origin", "Origin: \r\n".to_owned()),
        (
            "origin with path",
            "Origin: https://example.com/x\r\n".to_owned(),
        ),
        (
            "origin with userinfo",
            "Origin: https://a@example.com\r\n".to_owned(),
        ),
        (
            "origin javascript",
            "Origin: javascript:alert(1)\r\n".to_owned(),
        ),
        ("origin file", "Origin: file://\r\n".to_owned()),
        ("origin data", "Origin: data:text/html,x\r\n".to_owned()),
        (
            "origin 10k",
            format!("Origin: https://{}.com\r\n", "a".repeat(10_000)),
        ),
        (
            "origin bad port",
            "Origin: https://example.com:99999\r\n".to_owned(),
        ),
        (
            "origin port 0",
            "Origin: https://example.com:0\r\n".to_owned(),
        ),
        ("origin ipv6 junk", "Origin: https://[::1\r\n".to_owned()),
        (
            "origin label 64",
            format!("Origin: https://{}.example.com\r\n", "b".repeat(64)),
        ),
        (
            "origin non-ascii",
            "Origin: https://b\u{fc}cher.example\r\n".to_owned(),
        ),
        (
            "two origins",
            "Origin: https://example.com\r\nOrigin: https://evil.com\r\n".to_owned(),
        ),
        ("origin http", "Origin: http://example.com\r\n".to_owned()),
        (
            "origin suffix trick",
            "Origin: https://example.com.evil.net\r\n".to_owned(),
        ),
        (
            "origin prefix trick",
            "Origin: https://evilexample.com\r\n".to_owned(),
        ),
        (
            "referer 10k",
            format!("Referer: https://example.com/{}\r\n", "r".repeat(10_000)),
        ),
        ("referer garbage", "Referer: ::::\r\n".to_owned()),
        (
            "referer javascript",
            "Referer: javascript:alert(1)\r\n".to_owned(),
        ),
        (
            "referer userinfo",
            "Referer: https://u:p@example.com/\r\n".to_owned(),
        ),
        (
            "content-length body",
            format!("{origin}Content-Length: 3\r\n"),
        ),
        (
            "chunked body",
            format!("{origin}Transfer-Encoding: chunked\r\n"),
        ),
        (
            "expect continue",
            format!("{origin}Expect: 100-continue\r\nContent-Length: 10\r\n"),
        ),
    ] {
        get(label.to_owned(), "/api/?pid=demo", &headers, Refused);
    }
    for (label, headers) in [
        (
            "xff garbage",
            format!("{origin}X-Forwarded-For: not-an-ip, ,,,\r\n"),
        ),
        (
            "xff 1000 hops",
            format!("{origin}X-Forwarded-For: {}\r\n", "1.2.3.4, ".repeat(1000)),
        ),
        (
            "forwarded garbage",
            format!("{origin}Forwarded: for=\"[::1\r\n"),
        ),
        (
            "forwarded quotes",
            format!("{origin}Forwarded: for=\"\\\"\", by=;;;\r\n"),
        ),
        (
            "ua 64k",
            format!("{origin}User-Agent: {}\r\n", "Mozilla ".repeat(8000)),
        ),
        (
            "ua non-ascii",
            format!("{origin}User-Agent: \u{ff}\u{fe}\r\n"),
        ),
        (
            "preflight headers",
            format!(
                "{origin}Access-Control-Request-Headers: {}\r\n",
                "x-a,".repeat(500)
            ),
        ),
        ("no host", origin.to_owned()),
    ] {
        get(label.to_owned(), "/api/?pid=demo", &headers, Served);
    }
    for method in ["POST", "PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "FOO"] {
        let req = format!("{method} /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Length: 0\r\n\r\n");
        cases.push((format!("method {method}"), req.into_bytes(), Refused));
    }
    for (label, raw) in [
        ("http/1.0", b"GET /api/?pid=demo HTTP/1.0\r\nOrigin: https://example.com\r\n\r\n".to_vec()),
        ("absolute form", b"GET https://evil.com/api/?pid=demo HTTP/1.1\r\nHost: evil.com\r\nOrigin: https://evil.com\r\n\r\n".to_vec()),
        ("lf only", b"GET /api/?pid=demo HTTP/1.1\nHost: x\nOrigin: https://example.com\n\n".to_vec()),
    ] {
        cases.push((label.to_owned(), raw, Served));
    }
    for (label, raw) in [
        ("garbage line", b"GARBAGE\r\n\r\n".to_vec()),
        ("no version", b"GET /api/\r\n\r\n".to_vec()),
        ("http/9.9", b"GET / HTTP/9.9\r\n\r\n".to_vec()),
        (
            "nul in target",
            b"GET /api/\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "space in target",
            b"GET /a pi/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "bad header name",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(),
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(),
        ),
        (
            "control char in header",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n".to_vec(),
        ),
        (
            "bad content length",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        (
            "two content lengths",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
        ),
        ("binary noise", (0u8..=255).rev().collect()),
        (
            "h2 preface on h1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "300 headers",
            format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(300)).into_bytes(),
        ),
        (
            "connect",
            b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n".to_vec(),
        ),
        (
            "obs fold",
            b"GET /api/?pid=demo HTTP/1.1\r\nOrigin: https://evil.com\r\n folded\r\n\r\n".to_vec(),
        ),
    ] {
        cases.push((label.to_owned(), raw, Protocol));
    }
    assert!(cases.len() >= 100, "only {} cases", cases.len());

    let mut seen = std::collections::BTreeMap::new();
    for (label, raw, expect) in &cases {
        let out = raw_tls(s.https, &s.ca, None, raw, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&out);
        let status = raw_status(&out);
        *seen.entry(status).or_insert(0) += 1;
        let json_envelope = |code: u16| {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            let v: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{label}: body is not JSON ({e}): {text}"));
            assert_eq!(v["status"], code, "{label}");
        };
        match (expect, status) {
            (_, Some(code)) if code >= 500 => panic!("{label}: {code}\n{text}"),
            (Refused, Some(code)) => {
                assert!((400..500).contains(&code), "{label}: {code}\n{text}");
                json_envelope(code);
            }
            (Served, Some(code)) => {
                assert!(code < 500, "{label}: {code}");
                json_envelope(code);
            }
            (Protocol, Some(code)) => {
                assert!((400..500).contains(&code), "{label}: {code}\n{text}")
            }
            (Protocol, None) => {}
            (_, None) => panic!("{label}: no answer"),
        }
    }
    eprintln!("{} hostile requests; statuses: {seen:?}", cases.len());
    assert!(s.try_status().is_none(), "visitord died:\n{}", s.logs());
    assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

/// A request Pingora's HTTP/1 parser rejects never reaches visitord's
/// request code (pingora-proxy 0.9.1 answers it in `handle_new_request`);
/// the connection wrapper writes visitord's JSON `400` in place of
/// Pingora's empty one, with the headers every answer has, as README's
/// error table says, and the connection is closed.
#[test]
fn unparsable_requests_get_the_json_400() {
    let s = Server::start();
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ] {
        let out = raw_tls(s.https, &s.ca, None, raw, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(raw_status(&out), Some(400), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = format!("{}\r\n", head.to_ascii_lowercase());
        for line in [
            "content-type: application/json",
            "cache-control: no-store",
            "x-content-type-options: nosniff",
            "strict-transport-security: max-age=63072000",
            "connection: close",
        ] {
            assert!(head.contains(&format!("\r\n{line}\r\n")), "{line}: {text}");
        }
        assert!(!head.contains("server:"), "{text}");
        assert_eq!(
            body, r#"{"status":400,"result":"malformed request","data":null}"#,
            "{text}"
        );
    }
    // The plain listener (no HSTS there).
    let mut tcp = std::net::TcpStream::connect(s.http).unwrap();
    let (status, head, body) = common::http_exchange(
        &mut tcp,
        "GET / HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n",
    );
    assert_eq!(status, 400, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{head}"
    );
    assert!(
        String::from_utf8_lossy(&body).contains("malformed request"),
        "{head}"
    );
    assert_eq!(s.api("?pid=demo", &[("Origin", ALLOWED)]).status, 200);
}

// Connections: the metrics
// listener behind the same gate as the others, DNS rebinding, HTTP/2
// streams whose answer cannot be sent, connections that never send a
// request, the PROXY protocol listener from accept.

mod conn {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::common::attack::{attacker, client, closed_by_server, open_files, tls_from};
    use super::common::upstream::Upstream;
    use super::common::{
        connect_from, eventually, http_exchange, metric, raw_status, Options, Server, TestCa,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// One API request over a fresh TLS connection from `bind`: its status.
    fn api_from(s: &Server, bind: IpAddr) -> Option<u16> {
        let mut tls = tls_from(s.https, &s.ca, bind).ok()?;
        tls.write_all(
            b"GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://example.com\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        raw_status(&out)
    }

    /// A GET on the metrics listener from `from`, with `Host: host`.
    fn metrics_get(s: &Server, from: &str, path: &str, host: &str, more: &str) -> (u16, String) {
        let mut tcp = connect_from(s.metrics, Some(ip(from)));
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (status, _, body) = http_exchange(
            &mut tcp,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{more}Connection: close\r\n\r\n"),
        );
        (status, String::from_utf8(body).unwrap())
    }

    /// 1,000 silent connections to the metrics listener from outside
    /// `metrics.allow`, against a process with 1,024 descriptors, used to
    /// take every descriptor: the API timed out and reloads failed. Now
    /// they are closed at accept, before a byte is read; an allowed
    /// scraper and the API are served throughout, and an allowed peer is
    /// held to the per-client cap there as everywhere.
    #[test]
    fn a_metrics_listener_flood_from_outside_allow_leaves_the_api_and_scrapers_served() {
        let s = Server::with(Options {
            extra: "allow = [\"127.0.0.1/32\", \"127.0.0.3/32\"]\n\n[limits]\nmax_connections_per_ip = 20\n".into(),
            open_files: Some(1024),
            ..Options::default()
        });
        let before = open_files(&s);
        let mut held: Vec<TcpStream> = (0..1000)
            .map(|_| connect_from(s.metrics, Some(ip("127.0.0.9"))))
            .collect();
        assert_eq!(api_from(&s, client()), Some(200));
        assert!(s.metrics_text().contains("visitord_build_info"));
        assert!(
            eventually(Duration::from_secs(15), || {
                metric(
                    &s,
                    "visitord_closed_connections_total{reason=\"not_allowed\"}",
                ) >= 1000.0
            }),
            "{}",
            s.metrics_text()
        );
        let closed = held.iter_mut().map(closed_by_server).filter(|&c| c).count();
        assert_eq!(closed, held.len(), "every refused connection is closed");
        eprintln!("1,000 refused: descriptors {before} -> {}", open_files(&s));
        assert!(
            open_files(&s) <= before + 10,
            "{} (was {before})",
            open_files(&s)
        );
        drop(held);
        // An allowed peer is capped like any client.
        let allowed: Vec<TcpStream> = (0..40)
            .map(|_| connect_from(s.metrics, Some(ip("127.0.0.3"))))
            .collect();
        assert!(
            eventually(Duration::from_secs(10), || {
                metric(&s, "visitord_rate_limited_total{reason=\"connections\"}") >= 20.0
            }),
            "{}",
            s.metrics_text()
        );
        let (code, body) = metrics_get(&s, "127.0.0.1", "/metrics", "localhost", "");
        assert_eq!(code, 200, "{body}");
        assert_eq!(api_from(&s, client()), Some(200));
        drop(allowed);
        let logs = s.logs();
        assert!(!logs.contains("Too many open files"), "{logs}");
        assert!(
            !logs.contains(" ERROR ") && !logs.contains(" WARN "),
            "{logs}"
        );
    }

    /// A page the operator visits can point its own name at 127.0.0.1 and
    /// read the dashboard as same-origin (DNS rebinding). Without a token
    /// only loopback names and addresses, the listener's address and
    /// `metrics.hosts` are answered; with one, any name.
    #[test]
    fn the_metrics_listener_refuses_foreign_host_names_without_a_token() {
        let s = Server::with(Options {
            extra: "hosts = [\"metrics.internal\"]\n".into(),
            ..Options::default()
        });
        let port = s.metrics.port();
        for host in [
            "attacker.example".to_owned(),
            format!("attacker.example:{port}"),
            format!("localhost.attacker.example:{port}"),
        ] {
            for path in ["/status.json", "/metrics", "/"] {
                let (code, body) = metrics_get(&s, "127.0.0.1", path, &host, "");
                assert_eq!(code, 421, "{host}{path}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["status"], 421);
                assert!(!body.contains("demo"), "{body}");
            }
        }
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            "metrics.internal".to_owned(),
            format!("dashboard.localhost:{port}"),
        ] {
            let (code, body) = metrics_get(&s, "127.0.0.1", "/status.json", &host, "");
            assert_eq!(code, 200, "{host}: {body}");
        }
        // Health probes tell nothing; /readyz answers here like /healthz.
        for path in ["/healthz", "/readyz"] {
            let (code, _) = metrics_get(&s, "127.0.0.1", path, "attacker.example", "");
            assert_eq!(code, 200, "{path}");
        }

        // With a token, the name does not matter.
        let dir = tempfile::tempdir().unwrap();
        let token = "a-token-a-rebinding-page-cannot-know";
        let config = Server::prepare(
            dir.path(),
            &Options {
                extra: "token_file = \"metrics.token\"\n".into(),
                ..Options::default()
            },
        );
        std::fs::write(dir.path().join("metrics.token"), token).unwrap();
        let ca = Arc::new(TestCa::new());
        ca.leaf(&dir.path().join("tls"), "server", &["localhost"]);
        let t = Server::spawn(dir, config, ca, "info");
        let bearer = format!("Authorization: Bearer {token}\r\n");
        let (code, body) =
            metrics_get(&t, "127.0.0.1", "/status.json", "attacker.example", &bearer);
        assert_eq!(code, 200, "{body}");
        let (code, _) = metrics_get(&t, "127.0.0.1", "/status.json", "attacker.example", "");
        assert_eq!(code, 401);
    }

    /// A TLS client with ALPN `protocols`, handshake done, from `bind`.
    fn tls_alpn(
        addr: SocketAddr,
        ca: &TestCa,
        bind: IpAddr,
        protocols: &[&[u8]],
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let tcp = connect_from(addr, Some(bind));
        let mut config = ca.client_config();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls
    }

    /// Connections that never send a request used to stay for Pingora's
    /// fixed 60 s (HTTP/1, the redirect and metrics listeners) or for ever
    /// (HTTP/2 without its preface). Now every listener closes them at
    /// `request_header_timeout` from the connection's start, and an idle
    /// keep-alive on the metrics listener at `keepalive_timeout`.
    #[test]
    fn connections_that_send_no_request_are_closed_at_the_head_deadline_on_every_listener() {
        let s = Server::with(Options {
            extra: "\n[limits]\nrequest_header_timeout = \"2s\"\nkeepalive_timeout = \"3s\"\n"
                .into(),
            ..Options::default()
        });
        let from = attacker();
        let started = Instant::now();
        let mut plain: Vec<TcpStream> = Vec::new();
        for _ in 0..10 {
            plain.push(connect_from(s.metrics, Some(ip("127.0.0.5"))));
            plain.push(connect_from(s.http, Some(from)));
        }
        // A scraper's kept-alive connection, idle after one answer.
        let mut idle = connect_from(s.metrics, Some(ip("127.0.0.5")));
        idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let mut tls: Vec<_> = (0..80)
            .map(|_| tls_alpn(s.https, &s.ca, from, &[b"h2"]))
            .collect();
        for _ in 0..10 {
            tls.push(tls_alpn(s.https, &s.ca, from, &[b"http/1.1"]));
        }
        for _ in 0..5 {
            let mut half = tls_alpn(s.https, &s.ca, from, &[b"h2"]);
            half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
            half.flush().unwrap();
            tls.push(half);
        }
        let done = eventually(Duration::from_secs(20), || {
            plain.retain_mut(|c| !closed_by_server(c));
            tls.retain_mut(|c| !closed_by_server(&mut c.sock));
            plain.is_empty() && tls.is_empty()
        });
        let took = started.elapsed();
        assert!(
            done,
            "{} plain and {} TLS connections still open after {took:?}",
            plain.len(),
            tls.len()
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        eprintln!("116 silent connections closed after {took:?}");
        // The idle keep-alive goes at its own timeout (Pingora's is 60 s).
        let mut rest = Vec::new();
        assert!(idle.read_to_end(&mut rest).is_ok(), "kept open");
        assert!(
            metric(
                &s,
                "visitord_closed_connections_total{reason=\"head_timeout\"}"
            ) >= 115.0,
            "{}",
            s.metrics_text()
        );
        assert_eq!(api_from(&s, client()), Some(200));
        let logs = s.logs();
        assert!(
            !logs.contains(" ERROR ") && !logs.contains(" WARN "),
            "{logs}"
        );
    }

    /// Up to 100 streams of a site answer on each of `connections` HTTP/2
    /// connections from the attacker, with a window of zero that is never
    /// opened: their answers' heads, whose bodies can never be sent.
    fn zero_window_streams(
        runtime: &tokio::runtime::Runtime,
        s: &Server,
        connections: usize,
    ) -> Vec<h2::RecvStream> {
        let mut config = s.ca.client_config();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let url = format!("https://site.example.com:{}/", s.https.port());
        let https = s.https;
        runtime.block_on(async move {
            let mut pending = Vec::new();
            for _ in 0..connections {
                let tcp = connect_from(https, Some(attacker()));
                tcp.set_nonblocking(true).unwrap();
                let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
                let name = rustls::pki_types::ServerName::try_from("site.example.com").unwrap();
                // Over the client's cap (its streams' upstream connections
                // count), a connection is closed at accept.
                let Ok(tls) = connector.connect(name, tcp).await else {
                    continue;
                };
                let Ok((client, connection)) = h2::client::Builder::new()
                    .initial_window_size(0)
                    .handshake::<_, bytes::Bytes>(tls)
                    .await
                else {
                    continue;
                };
                tokio::spawn(connection);
                for _ in 0..100 {
                    let mut ready = client.clone().ready().await.unwrap();
                    let request = http::Request::get(&url).body(()).unwrap();
                    let (response, _) = ready.send_request(request, true).unwrap();
                    pending.push(response);
                }
            }
            let mut bodies = Vec::new();
            for response in pending {
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), response).await {
                    bodies.push(r.into_body());
                }
            }
            bodies
        })
    }

    /// A client that opens HTTP/2 streams with a window of zero and never
    /// opens it held each stream and its upstream connection for ever
    /// (500 of them: descriptors 43 -> 548, unchanged after 30 s). Now a
    /// stream whose answer cannot be written for `limits.send_timeout` is
    /// reset and its upstream connection released, and the upstream
    /// connections held for one client count against its connection cap.
    #[test]
    fn zero_window_http2_streams_are_reset_at_the_send_timeout() {
        let up = Upstream::start("a");
        let s = Server::with(Options {
            extra: format!(
                "\n[limits]\nsend_timeout = \"3s\"\n\n[[site]]\nhosts = [\"site.example.com\"]\nupstreams = [\"{}\"]\n",
                up.addr
            ),
            ..Options::default()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let before = open_files(&s);
        let mut bodies = zero_window_streams(&runtime, &s, 5);
        let started = Instant::now();
        // Every stream of an accepted connection got its answer's head
        // (the site's, or 429 over the cap); later connections were refused.
        assert!(bodies.len() >= 200, "{} streams", bodies.len());
        assert_eq!(bodies.len() % 100, 0, "{} streams", bodies.len());
        let during = open_files(&s);
        assert!(
            during >= before + 60,
            "{during} (was {before}): streams not held"
        );
        // 5 client connections and their upstream connections: at most the
        // per-client cap (128) together.
        assert!(during <= before + 128 + 10, "{during} (was {before})");
        eprintln!(
            "{} zero-window streams: descriptors {before} -> {during}",
            bodies.len()
        );
        assert_eq!(api_from(&s, client()), Some(200));
        let released = eventually(Duration::from_secs(20), || open_files(&s) <= before + 20);
        let took = started.elapsed();
        assert!(
            released,
            "{} open files after {took:?} (was {before})",
            open_files(&s)
        );
        assert!(took < Duration::from_secs(15), "{took:?}");
        eprintln!("back to {} descriptors after {took:?}", open_files(&s));
        // Every stream was reset, none finished.
        let reset = runtime.block_on(async {
            let mut reset = 0;
            for body in &mut bodies {
                let next = tokio::time::timeout(Duration::from_secs(5), body.data()).await;
                if let Ok(Some(Err(_))) = next {
                    reset += 1;
                }
            }
            reset
        });
        assert_eq!(reset, bodies.len());
        // The streams over the cap were refused (429), or the connections
        // that carried them (at accept).
        assert!(
            metric(&s, "visitord_rate_limited_total{reason=\"connections\"}") > 0.0,
            "{}",
            s.metrics_text()
        );
        assert_eq!(api_from(&s, client()), Some(200));
    }

    /// A PROXY protocol listener counted only the server cap while the
    /// header was read (one TCP peer held 1,000 silent connections) and
    /// started the handshake deadline after the header. Now the TCP peer
    /// holds its place from accept, and the deadline runs from accept.
    #[test]
    fn a_proxy_protocol_listener_caps_the_tcp_peer_and_times_the_handshake_from_accept() {
        let pp = super::common::free_port();
        let s = Server::with(Options {
            extra: format!(
                "\n[[listen]]\naddr = \"127.0.0.1:{pp}\"\ntls = true\nproxy_protocol = true\n\n\
                 [limits]\nmax_connections_per_ip = 20\ntls_handshake_timeout = \"4s\"\n"
            ),
            ..Options::default()
        });
        let pp: SocketAddr = format!("127.0.0.1:{pp}").parse().unwrap();
        let before = open_files(&s);
        let mut held: Vec<TcpStream> = (0..100)
            .map(|_| connect_from(pp, Some(attacker())))
            .collect();
        assert!(
            eventually(Duration::from_secs(3), || {
                metric(&s, "visitord_rate_limited_total{reason=\"connections\"}") >= 80.0
            }),
            "{}",
            s.metrics_text()
        );
        assert!(
            open_files(&s) <= before + 20 + 10,
            "{} (was {before})",
            open_files(&s)
        );
        assert_eq!(api_from(&s, client()), Some(200));
        assert!(eventually(Duration::from_secs(10), || {
            held.retain_mut(|c| !closed_by_server(c));
            held.is_empty()
        }));

        // A header sent 3 s after accept, then nothing: closed at the 4 s
        // deadline counted from accept, not 4 s after the header.
        let mut late = connect_from(pp, Some(client()));
        let accepted = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        late.write_all(b"PROXY TCP4 81.2.69.142 127.0.0.1 40000 443\r\n")
            .unwrap();
        late.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = late.read(&mut [0u8; 16]);
        let took = accepted.elapsed();
        assert!(
            (Duration::from_millis(3500)..Duration::from_millis(6000)).contains(&took),
            "{took:?}"
        );
    }
}
