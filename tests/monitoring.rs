//! `monitoring/`: the alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`); and a real Prometheus (Debian
//! `prometheus`) scraping a real visitord under traffic — with the bearer
//! token of `metrics.token_file` — evaluates every expression of the
//! Grafana dashboard and of the alert rules through its HTTP API, each
//! returning series, and loads the rules without an evaluation error.
//!
//! The traffic makes every alert's condition true on purpose (a refusal
//! spike, 429s, a dead upstream and its 502s, a refused reload, a
//! certificate a week from expiry, a database from 2023), so an alert
//! expression that returns nothing is a broken expression, not a quiet
//! service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::upstream::Upstream;
use common::{eventually, free_port, Options, Server, TestCa};
use serde_json::Value;

const TOKEN: &str = "prometheus-scrapes-with-this-token";

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(file)
}

fn installed(command: &str) -> bool {
    Command::new(command)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(monitoring(file)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// (alert name, expression) of every rule in alerts.yml.
fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("alerts.yml");
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Grafana's variables, as Prometheus needs them: every instance, every
/// project, and a rate window that holds several scrapes.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$project", ".*")
}

/// (panel title, expression) of every query of the Grafana dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !installed("promtool") {
        eprintln!("SKIPPED: promtool is not installed (Debian package `prometheus`)");
        return;
    }
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(monitoring(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has unit tests, where it fires and where it does not.
    let tests = yaml("alerts.test.yml");
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let fires = !case["exp_alerts"].as_array().unwrap().is_empty();
            if fires {
                firing.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    for (alert, _) in alert_rules() {
        assert!(firing.contains(&alert), "{alert}: no test where it fires");
        let near_misses = yaml("alerts.test.yml")["tests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["alert_rule_test"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["alertname"] == alert.as_str())
            })
            .map(|t| t["input_series"].as_array().unwrap().len())
            .sum::<usize>();
        assert!(
            silent.contains(&alert) || near_misses > 1,
            "{alert}: no test where it stays silent"
        );
    }
}

#[test]
fn the_grafana_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "visitord");
    let variables: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        variables,
        BTreeSet::from(["datasource", "instance", "project"])
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id twice");
        let pos = &p["gridPos"];
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if matches!(p["type"].as_str(), Some("row" | "text")) {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("visitord_"), "{title}: {expr}");
            // Any $variable must be one the dashboard defines.
            for var in expr.split('$').skip(1) {
                let name: String = var
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || variables.contains(name.as_str()),
                    "{title}: ${name} is not defined"
                );
            }
        }
    }
    // What the issue asks the board to show.
    let titles: Vec<String> = dashboard_queries().into_iter().map(|(t, _)| t).collect();
    for wanted in [
        "Requests per project",
        "Refusals by reason",
        "Latency p50 and p99 by route",
        "Rate limited (429) by limit",
        "Reloads",
        "Database age (days)",
        "Certificate expiry (days left)",
        "Upstream health",
        "Proxied requests per site",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no panel {wanted:?}");
    }
}

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` every second with the bearer token in
    /// `token_file`, evaluating alerts.yml every second.
    fn start(target: SocketAddr, token_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: visitord\n    authorization:\n      type: Bearer\n      credentials_file: {token:?}\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = monitoring("alerts.yml").display().to_string(),
                token = token_file.display().to_string(),
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let url = reqwest::Url::parse_with_params(&format!("http://{}{path}", self.addr), params)
            .unwrap();
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let text = client.get(url).send().ok()?.text().ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The series an instant query returns (empty on an error).
    fn query(&self, expr: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", expr)])
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.logs());
        }
    }
}

/// A self-signed certificate for `name` that expires in `days` days.
fn expiring_certificate(dir: &Path, name: &str, days: u64) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let day = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
        + days;
    let (y, m, d) = civil_from_days(day as i64);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// The proleptic Gregorian date of a day number since 1970-01-01
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

const PROJECTS: &str = r#"
[[project]]
id = "demo"
domains = ["example.com", "*.example.com"]

[[project]]
id = "limited"
domains = ["example.com"]
requests_per_minute = 5
"#;

/// Requests of every kind the dashboard and the alerts look at; `n`
/// scales the counts.
fn traffic(s: &Server, n: usize) {
    let api = |pid: &str, origin: &str| s.api(&format!("?pid={pid}"), &[("Origin", origin)]).status;
    for _ in 0..n {
        assert_eq!(api("demo", "https://www.example.com"), 200);
    }
    for _ in 0..n * 8 {
        assert_eq!(api("demo", "https://evil.example"), 403);
    }
    // Twenty or more at once: over the limit of 5 a minute even when a
    // minute starts among them, so the 429 series exists after the first
    // round.
    for _ in 0..n * 5 + 20 {
        api("limited", "https://example.com");
    }
    s.api("?pid=nope", &[]);
    let client = s.client_for(&["www.shop.example.org", "down.example.org"]);
    let site = |host: &str| {
        client
            .get(format!("https://{host}:{}/", s.https.port()))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..n {
        assert_eq!(site("www.shop.example.org"), 200);
        assert_eq!(site("down.example.org"), 502);
    }
}

#[test]
fn prometheus_evaluates_every_dashboard_and_alert_expression() {
    if !installed("prometheus") {
        eprintln!("SKIPPED: Prometheus is not installed (Debian package `prometheus`)");
        return;
    }
    let app = Upstream::start("app");
    let dead = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(
        dir.path(),
        &Options {
            projects: PROJECTS.to_owned(),
            extra: format!(
                "token_file = \"metrics.token\"\n\
                 [limits]\nrequests_per_minute_per_ip = 0\n\
                 [[site]]\nhosts = [\"www.shop.example.org\"]\nupstreams = [\"{app}\"]\n\
                 [[site]]\nhosts = [\"down.example.org\"]\nupstreams = [\"{dead}\"]\nhealth_check_interval = \"1s\"\n",
                app = app.addr
            ),
            ..Options::default()
        },
    );
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // A second certificate, a week from expiry.
    expiring_certificate(&dir.path().join("tls"), "soon.example.com", 7);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "certificates = [{ cert = \"tls/server.crt\", key = \"tls/server.key\" }]",
        "certificates = [{ cert = \"tls/server.crt\", key = \"tls/server.key\" }, \
         { cert = \"tls/soon.example.com.crt\", key = \"tls/soon.example.com.key\" }]",
    );
    std::fs::write(&config, text).unwrap();
    let ca = Arc::new(TestCa::new());
    ca.leaf(
        &dir.path().join("tls"),
        "server",
        &["localhost", "www.shop.example.org", "down.example.org"],
    );
    let s = Server::spawn(dir, config, ca, "info");

    let prometheus = Prometheus::start(s.metrics, &token_file);
    let scraping = eventually(Duration::from_secs(60), || {
        !prometheus.query("up{job=\"visitord\"} == 1").is_empty()
    });
    let targets = prometheus.api("/api/v1/targets", &[]);
    assert!(scraping, "not scraping: {targets:?}\n{}", prometheus.logs());

    // Counters must exist in one scrape and grow by the next for rate()
    // and increase() to see anything: a little traffic, a scrape, more.
    traffic(&s, 1);
    assert!(
        eventually(Duration::from_secs(60), || !prometheus
            .query("visitord_site_requests_total{status_class=\"5xx\"}")
            .is_empty()),
        "{}",
        prometheus.logs()
    );
    traffic(&s, 20);
    // Leave the files on disk refused, for the reload alert.
    std::fs::write(s.path("projects.toml"), "[[project]]\nid = \"\"\n").unwrap();

    let mut expressions: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .map(|(title, expr)| (format!("dashboard panel {title:?}"), substitute(&expr)))
        .collect();
    expressions.extend(
        alert_rules()
            .into_iter()
            .map(|(alert, expr)| (format!("alert {alert}"), expr)),
    );
    let mut empty = Vec::new();
    for (what, expr) in &expressions {
        let found = eventually(Duration::from_secs(90), || {
            !prometheus.query(expr).is_empty()
        });
        if !found {
            empty.push(format!("{what}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "expressions without series:\n{}\n\nvisitord metrics seen by Prometheus: {:?}",
        empty.join("\n"),
        prometheus.query("count by (__name__) ({__name__=~\"visitord_.*\"})")
    );

    // The dashboard's variables have values.
    for (label, matcher) in [
        ("instance", "visitord_build_info"),
        ("project", "visitord_requests_total{route=\"api\"}"),
    ] {
        let values = prometheus
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", matcher)],
            )
            .unwrap();
        assert!(
            !values.as_array().unwrap().is_empty(),
            "no values of {label}"
        );
    }

    // Prometheus itself loaded the rules and evaluates them without error;
    // every alert is at least pending.
    let rules = prometheus.api("/api/v1/rules", &[]).unwrap();
    let loaded: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_rules().len());
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let all_active = eventually(Duration::from_secs(60), || {
        let active: BTreeSet<String> = prometheus
            .api("/api/v1/alerts", &[])
            .map(|d| {
                d["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        alert_rules().iter().all(|(name, _)| active.contains(name))
    });
    assert!(all_active, "{:?}", prometheus.api("/api/v1/alerts", &[]));
    // No label of any series carries the test client's address.
    let series = prometheus.query("{__name__=~\"visitord_.*\"}");
    for s in &series {
        let labels = s["metric"].to_string();
        assert!(!labels.contains("127.0.0.1\""), "{labels}");
    }
}

/// The metrics reference in docs/operations.md names every family
/// visitord exports (the scrape, and the table `Metrics::FAMILIES` it is
/// made from) and every value of their bounded labels.
#[test]
fn every_exported_family_and_label_value_is_documented() {
    use visitord::observe::metrics::{Metrics, RouteLabel};
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let row = |family: &str| -> String {
        docs.lines()
            .find(|l| l.starts_with(&format!("| `{family}` |")))
            .unwrap_or_else(|| panic!("{family} is not in the metrics table of docs/operations.md"))
            .to_owned()
    };
    for family in Metrics::FAMILIES {
        row(family);
    }
    let s = Server::start();
    let _ = s.api("?pid=demo", &[("Origin", "https://example.com")]);
    let scraped: BTreeSet<String> = s
        .metrics_text()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(scraped.len() >= 10, "{scraped:?}");
    for family in &scraped {
        assert!(
            Metrics::FAMILIES.contains(&family.as_str()),
            "{family} is exported but not in Metrics::FAMILIES"
        );
        row(family);
    }
    let labels = |all: Vec<&'static str>| all;
    let values: [(&str, Vec<&str>); 7] = [
        (
            "visitord_requests_total",
            labels(RouteLabel::ALL.iter().map(|r| r.as_label()).collect()),
        ),
        (
            "visitord_rate_limited_total",
            visitord::limits::Exceeded::ALL
                .iter()
                .map(|r| r.as_label())
                .collect(),
        ),
        (
            "visitord_origin_rejections_total",
            visitord::origin::DenyReason::ALL
                .iter()
                .map(|r| r.as_label())
                .collect(),
        ),
        (
            "visitord_refusals_total",
            visitord::observe::verdict::RefusalKind::ALL
                .iter()
                .map(|r| r.as_label())
                .collect(),
        ),
        (
            "visitord_closed_connections_total",
            vec!["handshake_timeout", "head_timeout", "head_too_large"],
        ),
        (
            "visitord_reloads_total",
            vec![
                "snapshot",
                "config",
                "projects",
                "geo",
                "tls",
                "user_agent",
                "acme",
                "ok",
                "error",
            ],
        ),
        ("visitord_site_requests_total", vec!["1xx", "5xx", "none"]),
    ];
    for (family, values) in values {
        let row = row(family);
        for value in values {
            assert!(
                row.contains(&format!("`{value}`")),
                "{family}: `{value}` not in {row}"
            );
        }
    }
}
