//! The API end to end (docs/design.md §3): the real binary over TLS on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Options, Server, CHROME_WINDOWS};

const ALLOWED: &str = "https://example.com";

#[test]
fn allowed_origin_gets_the_full_answer_and_cors() {
    let s = Server::start();
    let r = s.api(
        "?pid=demo",
        &[
            ("Origin", ALLOWED),
            ("X-Forwarded-For", "81.2.69.142"),
            ("User-Agent", CHROME_WINDOWS),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    let v = r.json();
    assert_eq!(v["status"], 200);
    assert_eq!(v["result"], "success");
    let d = &v["data"];
    assert_eq!(d["ipAddress"], "81.2.69.142");
    assert_eq!(d["countryCode"], "GB");
    assert_eq!(d["countryName"], "United Kingdom");
    assert_eq!(d["currencies"], serde_json::json!(["GBP"]));
    assert!(
        d["languages"].as_array().unwrap().contains(&"en-GB".into()),
        "{d}"
    );
    assert_eq!(d["regionName"], "England");
    assert_eq!(d["region"], "England", "a flat database has no ISO code");
    assert_eq!(d["city"], "London");
    assert_eq!(d["cityLatLong"], "51.514200,-0.093100");
    assert_eq!(d["browser"], "Chrome");
    assert_eq!(d["browserVersion"], "131.0.0");
    assert_eq!(d["os"], "Windows");
    assert_eq!(d["osVersion"], "10");
    assert_eq!(d["deviceFamily"], "Other");
    assert_eq!(d["continentCode"], "EU");
    assert_eq!(d["timezone"], "Europe/London");
    assert_eq!(d["postalCode"], "EC4N");
    assert_eq!(d["isEU"], false);
    assert_eq!(d["asn"], 0);
    assert_eq!(d["asOrganization"], "");
    assert!(d.as_object().unwrap().values().all(|v| !v.is_null()));
}

#[test]
fn api_path_without_trailing_slash_works() {
    let s = Server::start();
    let r = s
        .client()
        .get(s.url("/api?pid=demo"))
        .header("Origin", ALLOWED)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn wildcard_matches_subdomains_but_not_the_apex_it_was_not_given_for() {
    let s = Server::start();
    for origin in ["https://www.example.com", "https://a.b.example.com"] {
        let r = s.api("?pid=demo", &[("Origin", origin)]);
        assert_eq!(r.status, 200, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
    // "shop" lists shop.example.org only: neither the apex nor siblings.
    for origin in [
        "https://example.org",
        "https://www.shop.example.org",
        "https://evilshop.example.org",
    ] {
        let r = s.api("?pid=shop", &[("Origin", origin)]);
        assert_eq!(r.status, 403, "{origin}");
    }
    let r = s.api("?pid=shop", &[("Origin", "https://shop.example.org")]);
    assert_eq!(r.status, 200);
}

#[test]
fn apex_only_project_refuses_subdomains() {
    let s = Server::with(Options {
        projects: "[[project]]\nid = \"apex\"\ndomains = [\"example.net\"]\n".into(),
        ..Options::default()
    });
    assert_eq!(
        s.api("?pid=apex", &[("Origin", "https://example.net")])
            .status,
        200
    );
    assert_eq!(
        s.api("?pid=apex", &[("Origin", "https://www.example.net")])
            .status,
        403
    );
}

#[test]
fn refused_origins_get_403_without_cors_headers() {
    let s = Server::start();
    for origin in [
        "https://evil.com",
        "http://example.com",
        "https://example.com.evil.com",
        "null",
        "https://exa mple.com",
    ] {
        let r = s.api("?pid=demo", &[("Origin", origin)]);
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
        assert_eq!(
            r.json(),
            serde_json::json!({"status":403,"result":"origin not allowed","data":null})
        );
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[test]
fn no_origin_at_all_is_the_same_403() {
    let s = Server::start();
    let none = s.api("?pid=demo", &[]);
    let refused = s.api("?pid=demo", &[("Origin", "https://evil.com")]);
    assert_eq!(none.status, 403);
    assert_eq!(none.body, refused.body);
    assert!(none.header("access-control-allow-origin").is_none());
}

#[test]
fn unknown_project_is_the_same_403() {
    let s = Server::start();
    let unknown = s.api("?pid=nope", &[("Origin", ALLOWED)]);
    let refused = s.api("?pid=shop", &[("Origin", ALLOWED)]);
    assert_eq!(unknown.status, 403);
    assert_eq!(unknown.body, refused.body);
    assert!(unknown.header("access-control-allow-origin").is_none());
}

#[test]
fn missing_or_invalid_pid_is_400() {
    let s = Server::start();
    for (query, reason) in [
        ("", "missing pid parameter"),
        ("?pid=", "missing pid parameter"),
        ("?x=1", "missing pid parameter"),
        ("?pid=a.b", "invalid pid parameter"),
        ("?pid=demo&pid=demo", "repeated pid parameter"),
        ("?pid=%zz", "malformed query string"),
        ("?pid=%00", "malformed query string"),
    ] {
        let r = s.api(query, &[("Origin", ALLOWED)]);
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(
            r.json(),
            serde_json::json!({"status":400,"result":reason,"data":null}),
            "{query}"
        );
    }
}

#[test]
fn referer_is_the_fallback_origin() {
    let s = Server::start();
    let r = s.api(
        "?pid=demo",
        &[("Referer", "https://www.example.com/shop/cart?item=1#top")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.example.com")
    );
    let r = s.api(
        "?pid=demo",
        &[("Referer", "https://evil.com/?https://example.com")],
    );
    assert_eq!(r.status, 403);
    let r = s.api("?pid=demo", &[]);
    assert_eq!(r.status, 403, "no Origin and no Referer");
}

#[test]
fn localhost_may_use_http_and_any_port() {
    let s = Server::start();
    for origin in [
        "http://localhost:3000",
        "https://localhost",
        "http://127.0.0.1:5173",
    ] {
        let r = s.api("?pid=demo", &[("Origin", origin)]);
        assert_eq!(r.status, 200, "{origin}: {}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let s = Server::start();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = s
            .client()
            .request(method.parse().unwrap(), s.url("/api/?pid=demo"))
            .header("Origin", ALLOWED)
            .send()
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
        let v: serde_json::Value = r.json_body();
        assert_eq!(v["status"], 405);
    }
}

#[test]
fn head_has_headers_and_no_body() {
    let s = Server::start();
    let r = s
        .client()
        .head(s.url("/api/?pid=demo"))
        .header("Origin", ALLOWED)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ALLOWED);
    assert!(r.text().unwrap().is_empty());
}

#[test]
fn unknown_path_is_404_json() {
    let s = Server::start();
    let r = common::Reply::from(s.client().get(s.url("/nothing/here")).send().unwrap());
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"status":404,"result":"not found","data":null})
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn preflight_is_204_with_cors() {
    let s = Server::start();
    let r = s
        .client()
        .request(reqwest::Method::OPTIONS, s.url("/api/?pid=demo"))
        .header("Origin", "https://www.example.com")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "accept")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://www.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "accept");
    assert_eq!(h["access-control-max-age"], "7200");
    assert_eq!(h["vary"], "Origin");

    let r = s
        .client()
        .request(reqwest::Method::OPTIONS, s.url("/api/?pid=demo"))
        .header("Origin", "https://evil.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(r.headers().get("access-control-allow-methods").is_none());
}

#[test]
fn plain_http_redirects_to_https_except_health() {
    let s = Server::start();
    // The test client follows no redirects.
    let client = s.client();
    let r = client
        .get(format!("http://{}/api/?pid=demo&x=1", s.http))
        .header("Host", "visitor.example.com:80")
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://visitor.example.com:{}/api/?pid=demo&x=1",
            s.https.port()
        )
        .as_str()
    );
    for path in ["/healthz", "/readyz"] {
        let r = client
            .get(format!("http://{}{path}", s.http))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[test]
fn health_and_ready_over_https() {
    let s = Server::start();
    for path in ["/healthz", "/readyz"] {
        let r = s.client().get(s.url(path)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // Trusted: 127.0.0.1 is in trusted_proxies.
    let s = Server::start();
    let r = s.api(
        "?pid=demo",
        &[("Origin", ALLOWED), ("X-Forwarded-For", "8.8.8.8")],
    );
    assert_eq!(r.json()["data"]["ipAddress"], "8.8.8.8");
    assert_eq!(r.json()["data"]["countryCode"], "US");
    let r = s.api(
        "?pid=demo",
        &[
            ("Origin", ALLOWED),
            ("Forwarded", "for=\"[2001:db8:1::7]:443\""),
        ],
    );
    assert_eq!(r.json()["data"]["ipAddress"], "2001:db8:1::7");
    assert_eq!(r.json()["data"]["countryCode"], "DE");

    // Untrusted: the same headers are ignored.
    let s = Server::with(Options {
        trusted_proxies: vec![],
        ..Options::default()
    });
    let r = s.api(
        "?pid=demo",
        &[
            ("Origin", ALLOWED),
            ("X-Forwarded-For", "8.8.8.8"),
            ("Forwarded", "for=8.8.4.4"),
        ],
    );
    assert_eq!(r.json()["data"]["ipAddress"], "127.0.0.1");
}

#[test]
fn ipv6_client_is_answered() {
    let port = common::free_port();
    let s = Server::with(Options {
        trusted_proxies: vec![],
        extra: format!("\n[[listen]] # ipv6\naddr = \"[::1]:{port}\"\ntls = true\n"),
        ..Options::default()
    });
    let client = s
        .client_builder()
        .resolve("localhost", format!("[::1]:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/api/?pid=demo"))
        .header("Origin", ALLOWED)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json_body();
    assert_eq!(v["data"]["ipAddress"], "::1");
}

#[test]
fn http2_is_negotiated() {
    let s = Server::start();
    let r = s.api("?pid=demo", &[("Origin", ALLOWED)]);
    assert_eq!(r.version, reqwest::Version::HTTP_2);
    assert_eq!(r.status, 200);
}

/// The acceptance case of docs/design.md §3, on the database that ships in `geo-db/`.
#[test]
fn shipped_database_answers_us_for_8_8_8_8() {
    let db = concat!(env!("CARGO_MANIFEST_DIR"), "/geo-db/iptoasn-country.mmdb");
    let s = Server::with(Options {
        databases: Some(vec![db.to_owned()]),
        ..Options::default()
    });
    let r = s.api(
        "?pid=demo",
        &[
            ("Origin", ALLOWED),
            ("X-Forwarded-For", "8.8.8.8"),
            ("User-Agent", CHROME_WINDOWS),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.json()["data"];
    assert_eq!(d["countryCode"], "US");
    assert_eq!(d["countryName"], "United States");
    assert!(d["currencies"].as_array().unwrap().contains(&"USD".into()));
    assert!(d["languages"].as_array().unwrap().contains(&"en-US".into()));
    assert_eq!(d["browser"], "Chrome");
    assert_eq!(d["os"], "Windows");
}

trait JsonBody {
    fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::blocking::Response {
    fn json_body(self) -> serde_json::Value {
        serde_json::from_str(&self.text().unwrap()).unwrap()
    }
}

/// HSTS is sent over TLS only, and `tls.hsts = ""` turns it off.
#[test]
fn hsts_is_tls_only_and_can_be_turned_off() {
    let s = Server::start();
    let r = s
        .client()
        .get(format!("http://{}/api/?pid=demo", s.http))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert!(r.headers().get("strict-transport-security").is_none());
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(dir.path(), &Options::default());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[tls]\n", "[tls]\nhsts = \"\"\n")).unwrap();
    let ca = std::sync::Arc::new(common::TestCa::new());
    ca.leaf(&dir.path().join("tls"), "server", &["localhost"]);
    let s = Server::spawn(dir, config, ca, "info");
    let r = s.api("?pid=demo", &[("Origin", ALLOWED)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("strict-transport-security").is_none());
}

/// Every kind of answer visitord writes itself over TLS carries HSTS and
/// `nosniff`, refusals and the head watch's HTTP/1.1 431 included (a
/// site's 5xx: `tests/sites.rs`). Plain HTTP never carries HSTS (RFC 6797
/// §7.2), its 308 included.
#[test]
fn every_answer_over_tls_has_hsts_and_nosniff() {
    let s = Server::with(Options {
        extra: "\n[limits]\nrequests_per_minute_per_ip = 20\n".into(),
        ..Options::default()
    });
    let get = |target: &str, more: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{more}Connection: close\r\n\r\n")
    };
    let origin = "Origin: https://example.com\r\n";
    let huge = format!("X-Big: {}\r\n", "a".repeat(40_000));
    let cases: Vec<(u16, String)> = vec![
        (200, get("/api/?pid=demo", origin)),
        (200, get("/healthz", "")),
        (200, get("/readyz", "")),
        (
            204,
            format!(
                "OPTIONS /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\n{origin}\
                 Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n"
            ),
        ),
        (400, get("/api/", origin)),
        (
            400,
            "GET /api/?pid=demo HTTP/1.1\r\nHost: .bad\r\nConnection: close\r\n\r\n".into(),
        ),
        (403, get("/api/?pid=demo", "Origin: https://evil.example\r\n")),
        (404, get("/nowhere", "")),
        (
            405,
            format!(
                "DELETE /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\n{origin}Connection: close\r\n\r\n"
            ),
        ),
        (
            413,
            format!(
                "POST /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\n{origin}Content-Length: 1\r\n\r\nx"
            ),
        ),
        (
            414,
            get(&format!("/api/?pid=demo&x={}", "a".repeat(3000)), origin),
        ),
        (431, get("/api/?pid=demo", &huge)),
    ];
    let hsts = "\r\nstrict-transport-security: max-age=63072000\r\n";
    let check = |status: u16, raw: &[u8], what: &str| {
        let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
        assert_eq!(common::raw_status(raw), Some(status), "{what}: {text}");
        let head = text.split("\r\n\r\n").next().unwrap();
        let head = format!("{head}\r\n");
        assert!(head.contains(hsts), "{what}: no HSTS: {head}");
        assert!(
            head.contains("\r\nx-content-type-options: nosniff\r\n"),
            "{what}: no nosniff: {head}"
        );
    };
    for (status, request) in &cases {
        let raw = common::raw_tls(
            s.https,
            &s.ca,
            None,
            request.as_bytes(),
            std::time::Duration::from_secs(5),
        );
        check(*status, &raw, request.lines().next().unwrap());
    }
    // Over the per-client limit (20 a minute; the requests above count).
    let mut limited = false;
    for _ in 0..25 {
        let raw = common::raw_tls(
            s.https,
            &s.ca,
            None,
            get("/api/?pid=demo", origin).as_bytes(),
            std::time::Duration::from_secs(5),
        );
        if common::raw_status(&raw) == Some(429) {
            check(429, &raw, "429");
            limited = true;
            break;
        }
    }
    assert!(limited, "never limited");
    // HTTP/2 answers carry the same headers (this client is limited now,
    // so a path the limit does not count).
    let r = s.client().get(s.url("/nowhere")).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=63072000");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    let plain = s
        .client()
        .get(format!("http://{}/api/?pid=demo", s.http))
        .send()
        .unwrap();
    assert_eq!(plain.status(), 308);
    assert!(plain.headers().get("strict-transport-security").is_none());
    assert_eq!(plain.headers()["x-content-type-options"], "nosniff");
}
