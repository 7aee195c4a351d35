//! The dashboard of the metrics listener: headless Chromium renders the
//! figures that requests produced, `/status.json` says the same, no
//! visitor address appears anywhere; and `metrics.allow` and
//! `metrics.token_file` keep everyone else out.
//!
//! `VISITORD_DASHBOARD_SCREENSHOT=docs/dashboard.png cargo nextest run
//! --test dashboard` also writes the screenshot shown in the docs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::upstream::Upstream;
use common::{
    connect_from, eventually, free_port, http_exchange, run_cli, Options, Server, TestCa,
};

/// A visitor address sent through the trusted proxy (the test client):
/// it must never reach the dashboard.
const VISITOR: &str = "198.51.100.77";
/// A refused origin that is an IP address.
const IP_ORIGIN: &str = "https://203.0.113.9";
const TOKEN: &str = "s3cret-token-for-the-metrics-listener";

fn get_from(addr: SocketAddr, from: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut tcp = connect_from(addr, Some(from.parse().unwrap()));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, head, body) = http_exchange(
        &mut tcp,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"),
    );
    (status, head, String::from_utf8(body).unwrap())
}

/// Whether a connection from `from` is closed without an answer, before
/// it has sent a byte.
fn closed_at_accept(addr: SocketAddr, from: &str) -> bool {
    use std::io::Read;
    let mut tcp = connect_from(addr, Some(from.parse().unwrap()));
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tcp.read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn status_json(s: &Server) -> serde_json::Value {
    let (code, _, body) = get_from(s.metrics, "127.0.0.1", "/status.json", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Runs headless Chromium on `url` with `args`; returns stdout and the log.
fn chromium_run(browser: &str, url: &str, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `<tr data-project="ID">` row of the rendered page.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    dom.split(&format!("<tr data-project=\"{id}\">"))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for {id:?} in\n{dom}"))
}

fn cell<'a>(row: &'a str, key: &str) -> &'a str {
    row.split(&format!("data-k=\"{key}\">"))
        .nth(1)
        .and_then(|c| c.split('<').next())
        .unwrap_or_else(|| panic!("no {key} in {row}"))
}

const PROJECTS: &str = r#"
[[project]]
id = "demo"
domains = ["example.com", "*.example.com"]

[[project]]
id = "shop"
domains = ["shop.example.org"]
requests_per_minute = 2
"#;

#[test]
fn chromium_renders_the_figures_requests_produced() {
    let app = Upstream::start("app");
    let dead = format!("127.0.0.1:{}", free_port());
    let s = Server::with(Options {
        projects: PROJECTS.to_owned(),
        extra: format!(
            "\n[[site]]\nhosts = [\"www.shop.example.org\"]\nupstreams = [\"{}\", \"{dead}\"]\nhealth_check_interval = \"1s\"\n",
            app.addr
        ),
        ..Options::default()
    });
    let api = |pid: &str, origin: Option<&str>| {
        let mut headers = vec![("X-Forwarded-For", VISITOR)];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        s.api(&format!("?pid={pid}"), &headers).status
    };
    for _ in 0..3 {
        assert_eq!(api("demo", Some("https://www.example.com")), 200);
    }
    assert_eq!(api("demo", Some("https://Evil.Example")), 403);
    assert_eq!(api("demo", Some("https://evil.example.")), 403);
    assert_eq!(api("demo", Some(IP_ORIGIN)), 403);
    assert_eq!(api("demo", None), 403);
    assert_eq!(api("shop", Some("https://shop.example.org")), 200);
    assert_eq!(api("shop", Some("https://shop.example.org")), 200);
    assert_eq!(api("shop", Some("https://shop.example.org")), 429);
    assert_eq!(api("nope", Some("https://www.example.com")), 403);
    assert_eq!(api("a.b", Some("https://www.example.com")), 400);
    // A refused reload, then a good one, for the table of loads.
    let projects = s.path("projects.toml");
    std::fs::write(&projects, "[[project]]\nid = \"bad id\"\ndomains = []\n").unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            status_json(&s)["reloads"][0]["result"] == "refused"
        }),
        "{}",
        s.logs()
    );
    std::fs::write(&projects, PROJECTS).unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        status_json(&s)["generation"] == 2
    }));
    // The figures are counted once each request has been logged, and the
    // dead upstream leaves after its first health check.
    let settled = eventually(Duration::from_secs(30), || {
        let v = status_json(&s);
        v["projects"][0]["requests_last_hour"] == 7
            && v["no_project"]["requests_last_hour"] == 2
            && v["sites"][0]["upstreams"][1]["up"] == false
    });
    let json = status_json(&s);
    assert!(settled, "{json:#}");

    let demo = &json["projects"][0];
    assert_eq!(demo["id"], "demo");
    assert_eq!(demo["answers"]["200"], 3);
    assert_eq!(demo["answers"]["403"], 4);
    assert_eq!(demo["refusals"]["not_listed"], 3);
    assert_eq!(demo["refusals"]["no_origin"], 1);
    let origins = &demo["top_refused_origins"];
    assert_eq!(origins[0]["origin"], "https://evil.example");
    assert_eq!(origins[0]["count"], 2);
    assert_eq!(origins[1]["origin"], "(an IP address)");
    assert_eq!(json["projects"][1]["answers"]["200"], 2);
    assert_eq!(json["projects"][1]["answers"]["429"], 1);
    assert_eq!(json["projects"][1]["rate_limited"]["project_rate"], 1);
    assert_eq!(json["no_project"]["refusals"]["unknown_project"], 1);
    assert_eq!(json["no_project"]["answers"]["other"], 1);
    assert_eq!(json["sites"][0]["upstreams"][0]["up"], true);
    assert_eq!(json["certificates"][0]["names"][0], "localhost");

    // The checks of /status.json above need no browser; the page's do, and
    // a missing browser fails them rather than passing unchecked.
    let browser = chromium()
        .expect("Chromium is not installed (Debian package `chromium`; scripts/test installs it)");
    let url = format!("http://{}/", s.metrics);
    let (dom, log) = chromium_run(browser, &url, &["--dump-dom"]);
    let demo = row(&dom, "demo");
    assert_eq!(cell(demo, "200"), "3", "{demo}");
    assert_eq!(cell(demo, "403"), "4", "{demo}");
    assert_eq!(cell(demo, "last-hour"), "7", "{demo}");
    assert!(
        demo.contains("not_listed: 3") && demo.contains("no_origin: 1"),
        "{demo}"
    );
    assert!(
        demo.contains("<span class=\"origin\">https://evil.example</span>: 2"),
        "{demo}"
    );
    assert!(
        demo.contains("<span class=\"origin\">(an IP address)</span>: 1"),
        "{demo}"
    );
    assert_eq!(demo.matches("<rect class=\"req\"").count(), 1, "{demo}");
    let shop = row(&dom, "shop");
    assert_eq!(cell(shop, "429"), "1", "{shop}");
    assert!(shop.contains("project_rate: 1"), "{shop}");
    let none = row(&dom, "");
    assert_eq!(cell(none, "403"), "1");
    assert_eq!(cell(none, "other"), "1");
    assert!(dom.contains("<span class=\"down\">down</span>"), "{dom}");
    assert!(dom.contains("project[0].id"), "the refused reload's reason");
    for secret in [VISITOR, "203.0.113.9"] {
        assert!(!dom.contains(secret), "{secret} on the dashboard");
        assert!(
            !json.to_string().contains(secret),
            "{secret} in status.json"
        );
    }
    // A stylesheet the CSP refused would be reported on the console.
    assert!(!log.contains("Content Security Policy"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("dashboard.png");
    let (_, log) = chromium_run(
        browser,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1500,900",
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    if let Ok(to) = std::env::var("VISITORD_DASHBOARD_SCREENSHOT") {
        std::fs::write(&to, &png).unwrap();
    }
}

#[test]
fn the_listener_answers_only_allowed_addresses() {
    let s = Server::with(Options {
        extra: "allow = [\"127.0.0.1/32\"]\n".into(),
        ..Options::default()
    });
    for path in ["/metrics", "/", "/status.json", "/healthz", "/readyz"] {
        let (code, _, body) = get_from(s.metrics, "127.0.0.1", path, "");
        assert_eq!(code, 200, "{path}: {body}");
    }
    // A peer outside the list is closed before it sends a byte.
    assert!(closed_at_accept(s.metrics, "127.0.0.2"));
    assert!(!s.logs().contains("127.0.0.2"), "{}", s.logs());
}

/// Writes the config with a token file beside it and starts the server.
fn with_token(extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(
        dir.path(),
        &Options {
            extra: format!("token_file = \"metrics.token\"\n{extra}"),
            ..Options::default()
        },
    );
    std::fs::write(dir.path().join("metrics.token"), format!("{TOKEN}\n")).unwrap();
    let ca = Arc::new(TestCa::new());
    ca.leaf(&dir.path().join("tls"), "server", &["localhost"]);
    Server::spawn(dir, config, ca, "info")
}

#[test]
fn a_token_is_required_and_rotates_live() {
    let s = with_token("");
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    for path in ["/metrics", "/", "/status.json"] {
        let (code, head, _) = get_from(s.metrics, "127.0.0.1", path, "");
        assert_eq!(code, 401, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let (code, _, _) = get_from(
            s.metrics,
            "127.0.0.1",
            path,
            &bearer("wrong-token-wrong-token"),
        );
        assert_eq!(code, 401, "{path}");
        let (code, _, body) = get_from(s.metrics, "127.0.0.1", path, &bearer(TOKEN));
        assert_eq!(code, 200, "{path}: {body}");
    }
    assert_eq!(get_from(s.metrics, "127.0.0.1", "/healthz", "").0, 200);

    let new = "a-brand-new-token-after-rotation";
    std::fs::write(s.path("metrics.token"), new).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            get_from(s.metrics, "127.0.0.1", "/metrics", &bearer(new)).0 == 200
        }),
        "{}",
        s.logs()
    );
    assert_eq!(
        get_from(s.metrics, "127.0.0.1", "/metrics", &bearer(TOKEN)).0,
        401
    );
    // A token file made unusable is a refused reload: the last token stays.
    std::fs::write(s.path("metrics.token"), "short").unwrap();
    assert!(eventually(Duration::from_secs(30), || s
        .logs()
        .contains("metrics.token_file")));
    assert_eq!(
        get_from(s.metrics, "127.0.0.1", "/metrics", &bearer(new)).0,
        200
    );
    assert!(!s.logs().contains(new) && !s.logs().contains(TOKEN));
}

#[test]
fn an_allow_list_and_a_token_together() {
    let s = with_token("allow = [\"127.0.0.2/32\"]\n");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(get_from(s.metrics, "127.0.0.2", "/metrics", &bearer).0, 200);
    assert_eq!(get_from(s.metrics, "127.0.0.2", "/metrics", "").0, 401);
    assert!(closed_at_accept(s.metrics, "127.0.0.1"));
}

/// `check` and `run` refuse a metrics listener off loopback with neither
/// an allow list nor a token, naming the key and the way out.
#[test]
fn off_loopback_without_allow_or_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(dir.path(), &Options::default());
    let text = std::fs::read_to_string(&config).unwrap();
    let port = free_port();
    let open = text.replace(
        &text
            .lines()
            .skip_while(|l| *l != "[metrics]")
            .nth(1)
            .unwrap()
            .to_owned(),
        &format!("addr = \"0.0.0.0:{port}\""),
    );
    std::fs::write(&config, &open).unwrap();
    TestCa::new().leaf(&dir.path().join("tls"), "server", &["localhost"]);
    let path = config.to_str().unwrap();
    for command in ["check", "run"] {
        let (ok, _, stderr) = run_cli(&[command, "--config", path]);
        assert!(!ok, "{command} accepted it");
        assert!(
            stderr.contains(&format!(
                "metrics.addr: 0.0.0.0:{port} is not a loopback address: set metrics.allow"
            )),
            "{command}: {stderr}"
        );
    }
    // With an allow list it is accepted.
    std::fs::write(
        &config,
        open.replace(
            &format!("addr = \"0.0.0.0:{port}\""),
            &format!("addr = \"0.0.0.0:{port}\"\nallow = [\"10.0.0.0/8\"]"),
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = run_cli(&["check", "--config", path]);
    assert!(ok, "{stdout}{stderr}");
    // A token file that cannot be read is named.
    std::fs::write(
        &config,
        open.replace(
            &format!("addr = \"0.0.0.0:{port}\""),
            &format!("addr = \"0.0.0.0:{port}\"\ntoken_file = \"missing.token\""),
        ),
    )
    .unwrap();
    let (ok, _, stderr) = run_cli(&["check", "--config", path]);
    assert!(!ok);
    assert!(
        stderr.contains("metrics.token_file") && stderr.contains("missing.token"),
        "{stderr}"
    );
}
