//! CORS as a real browser enforces it: headless Chromium loads a page from an
//! allowed origin and from a refused one; each calls the API cross-origin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Server};

const PROJECTS: &str = r#"
[[project]]
id = "browser"
domains = ["allowed.test"]
"#;

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

/// An HTTPS server for the test pages: every request gets `html`.
fn page_server(ca: &common::TestCa, html: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = ca.leaf(dir.path(), "pages", &["allowed.test", "refused.test"]);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    common::install_crypto();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            let html = html.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = tls.flush();
            });
        }
    });
    port
}

/// Loads `url` in headless Chromium; returns the DOM after scripts ran, and
/// Chromium's log (console messages explain a blocked request).
fn load(browser: &str, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The test CA is not in the system store; this profile only.
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP allowed.test 127.0.0.1, MAP refused.test 127.0.0.1, MAP api.test 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the page's script wrote into `<pre id="out">`.
fn outcome(dom: &str) -> &str {
    dom.split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or("")
}

#[test]
fn browser_reads_the_answer_only_from_an_allowed_origin() {
    // A missing browser fails the test: it would otherwise pass unchecked.
    let browser = chromium()
        .expect("Chromium is not installed (Debian package `chromium`; scripts/test installs it)");
    let s = Server::with(Options {
        projects: PROJECTS.to_owned(),
        trusted_proxies: vec![],
        cert_names: vec!["api.test", "localhost"],
        ..Options::default()
    });
    let api = format!("https://api.test:{}/api/?pid=browser", s.https.port());
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
fetch("{api}").then(r => r.json())
  .then(j => {{ document.getElementById("out").textContent = "COUNTRY=" + j.data.countryCode + ";IP=" + j.data.ipAddress; }})
  .catch(e => {{ document.getElementById("out").textContent = "BLOCKED=" + e.name; }});
</script></body></html>"#
    );
    let port = page_server(&s.ca, html);
    let mut last = (String::new(), String::new());
    // A cold Chromium start can exceed the virtual time budget; try twice.
    for _ in 0..2 {
        last = load(browser, &format!("https://allowed.test:{port}/"));
        if outcome(&last.0) != "pending" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        outcome(&last.0),
        "COUNTRY=NL;IP=127.0.0.1",
        "allowed origin:\n{}\n{}",
        last.1,
        s.metrics_text()
    );

    let (refused, log) = load(browser, &format!("https://refused.test:{port}/"));
    assert_eq!(
        outcome(&refused),
        "BLOCKED=TypeError",
        "refused origin:\n{log}"
    );
    let rejections = s.metrics_text();
    assert!(
        rejections.contains("visitord_origin_rejections_total{reason=\"not_listed\"}"),
        "{rejections}"
    );
}
