//! Automatic certificates against a real ACME server (pebble, see
//! `common::pebble`): issuance over HTTP-01 and the certificate served by
//! SNI without a restart, reuse after a restart, forced and scheduled
//! renewal, failures (CA down, a refused name) with backoff while the old
//! certificate serves, damaged state refused, and two nodes sharing one
//! `state_dir`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pebble::{Pebble, PebbleOptions, PebblePorts};
use common::{eventually, free_port, run_cli, write_flat_fixture, TestCa, BIN, DEFAULT_PROJECTS};

const NAME: &str = "shop.test";
/// Generous: a shared two-core machine under a full test run is slow.
const ISSUE_WAIT: Duration = Duration::from_secs(120);

/// A visitord folder: configuration, projects, database, a file pair for
/// `localhost` (the API host), and ports.
struct NodeFiles {
    dir: PathBuf,
    config: PathBuf,
    https: u16,
    http: u16,
    metrics: u16,
}

/// Writes a node's files into `dir`; `acme` is the body of its `[acme]`
/// section after the directory settings.
fn node_files(
    dir: &Path,
    ca: &TestCa,
    pebble: &PebblePorts,
    state: &Path,
    acme: &str,
) -> NodeFiles {
    common::install_crypto();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    ca.leaf(&dir.join("tls"), "server", &["localhost"]);
    std::fs::write(dir.join("pebble-ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("projects.toml"), DEFAULT_PROJECTS).unwrap();
    write_flat_fixture(&dir.join("fixture.mmdb"));
    let (https, http, metrics) = (free_port(), free_port(), free_port());
    let config = dir.join("visitord.toml");
    let files = NodeFiles {
        dir: dir.to_path_buf(),
        config,
        https,
        http,
        metrics,
    };
    files.write_config(pebble, state, acme);
    files
}

impl NodeFiles {
    fn write_config(&self, pebble: &PebblePorts, state: &Path, acme: &str) {
        let text = format!(
            r#"[server]
threads = 1
grace_period = "1s"

[[listen]]
addr = "127.0.0.1:{https}"
tls = true

[[listen]]
addr = "127.0.0.1:{http}"
redirect_https_port = {https}

[tls]
certificates = [{{ cert = "tls/server.crt", key = "tls/server.key" }}]

[api]
projects = "projects.toml"

[geo]
databases = ["fixture.mmdb"]

[metrics]
addr = "127.0.0.1:{metrics}"

[acme]
email = "ops@visitord.test"
directory = "{directory}"
directory_ca = "pebble-ca.pem"
state_dir = {state:?}
{acme}
"#,
            https = self.https,
            http = self.http,
            metrics = self.metrics,
            directory = pebble.directory(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn https(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https))
    }

    fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

/// One `visitord run`; killed on drop.
struct Node {
    child: Child,
    log: PathBuf,
    http: u16,
    metrics: u16,
}

impl Node {
    /// Starts visitord with `files` and waits for `/readyz` on the plain
    /// listener.
    fn start(files: &NodeFiles) -> Node {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = files.dir.join(format!("visitord-{n}.log"));
        let child = Command::new(BIN)
            .args(["run", "--config", files.config_arg()])
            .env("RUST_LOG", "info,visitord=debug")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            log,
            http: files.http,
            metrics: files.metrics,
        };
        let url = format!("http://127.0.0.1:{}/readyz", node.http);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::blocking::get(&url).is_ok_and(|r| r.status() == 200) {
                break;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("visitord exited with {status}:\n{}", node.logs());
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", node.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one series of the metrics text, e.g.
    /// `visitord_acme_orders_total{result="ok"}`.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- visitord log {} ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// The serial (lower-case hex) of the certificate served for `name`,
/// checked against `roots` (PEM); the handshake error otherwise.
fn served(https: SocketAddr, name: &str, roots: &str) -> Result<String, String> {
    let config = Arc::new(TestCa::client_config_for(roots));
    let mut tcp = TcpStream::connect(https).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, server_name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn.peer_certificates().ok_or("no certificate")?[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// Waits until `name` is served with a certificate pebble issued (other
/// than `not`) and returns its serial.
fn wait_served(
    node: &Node,
    https: SocketAddr,
    name: &str,
    pebble: &Pebble,
    not: Option<&str>,
) -> String {
    let root = pebble.root();
    let mut last = Err(String::new());
    let ok = eventually(ISSUE_WAIT, || {
        last = served(https, name, &root);
        last.as_deref().is_ok_and(|s| Some(s) != not)
    });
    assert!(ok, "{name} not served ({last:?}):\n{}", node.logs());
    last.unwrap()
}

fn wait_log(node: &Node, needle: &str) {
    assert!(
        eventually(ISSUE_WAIT, || node.logs().contains(needle)),
        "no {needle:?} in the log:\n{}",
        node.logs()
    );
}

/// The ACME state folder of pebble's CA under `state`.
fn certs_dir(state: &Path, pebble: &PebblePorts) -> PathBuf {
    state
        .join(format!("127.0.0.1_{}-dir", pebble.acme))
        .join("certs")
}

/// One test's world: a temp dir, the test CA (pebble's HTTPS and the
/// node's file pair), pebble's ports, the ACME state folder, and one node's
/// files whose `[acme]` section has `acme` after the directory settings.
struct Scene {
    dir: tempfile::TempDir,
    ca: TestCa,
    ports: PebblePorts,
    state: PathBuf,
    files: NodeFiles,
}

impl Scene {
    fn new(acme: &str) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ports = PebblePorts::new();
        let state = dir.path().join("state");
        let files = node_files(&dir.path().join("node"), &ca, &ports, &state, acme);
        Scene {
            dir,
            ca,
            ports,
            state,
            files,
        }
    }

    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on the
    /// node's HTTPS port.
    fn pebble_on(&self, http_port: u16, options: &PebbleOptions) -> Pebble {
        Pebble::start(
            &self.dir.path().join("pebble"),
            self.ports,
            http_port,
            self.files.https,
            &self.ca,
            options,
        )
    }

    /// Pebble validating on the node's own listeners.
    fn pebble(&self, options: &PebbleOptions) -> Pebble {
        self.pebble_on(self.files.http, options)
    }
}

#[test]
fn http_01_issues_serves_by_sni_is_reused_after_a_restart_and_renews_on_request() {
    let scene = Scene::new(&format!("domains = [{NAME:?}]"));
    let pebble = scene.pebble(&PebbleOptions::default());

    // Before any order, `check` says which name waits.
    let (ok, out, err) = run_cli(&["check", "--config", scene.files.config_arg()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "acme: 1 name(s) from {}: 0 with a certificate, 1 waiting: {NAME}",
            scene.ports.directory()
        )),
        "{out}"
    );

    let node = Node::start(&scene.files);
    let serial = wait_served(&node, scene.files.https(), NAME, &pebble, None);
    assert_eq!(pebble.orders(), 1);
    wait_log(
        &node,
        &format!("acme: {NAME}: certificate issued (serial {serial}"),
    );
    assert_eq!(
        node.metric("visitord_acme_orders_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        node.metric("visitord_acme_orders_total{result=\"error\"}"),
        Some(0.0)
    );
    assert!(
        node.metric(&format!(
            "visitord_tls_certificate_expiry_timestamp_seconds{{name=\"{NAME}\"}}"
        ))
        .is_some_and(|t| t > 0.0),
        "the expiry gauge covers ACME certificates"
    );
    // The API host keeps its file pair.
    served(scene.files.https(), "localhost", &scene.ca.pem).unwrap();

    // Keys are private; the account is stored once.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let certs = certs_dir(&scene.state, &scene.ports);
    assert_eq!(mode(&certs.join(format!("{NAME}.pem"))), 0o600);
    assert_eq!(mode(&certs.parent().unwrap().join("account.json")), 0o600);

    let (ok, out, err) = run_cli(&["certs", "--config", scene.files.config_arg()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{NAME}\n  source:       acme: ")),
        "{out}"
    );
    assert!(out.contains("Pebble Intermediate CA"), "{out}");
    assert!(out.contains("localhost\n  source:       file: "), "{out}");

    // A restart serves what is stored, and orders nothing.
    node.kill();
    let node = Node::start(&scene.files);
    assert_eq!(
        served(scene.files.https(), NAME, &pebble.root()).unwrap(),
        serial
    );
    // The first pass has looked at the name (pebble offers no renewal
    // information, and says so): still one order.
    wait_log(&node, "offers no renewal information");
    assert_eq!(pebble.orders(), 1, "a restart must not order again");

    // A renewal on request: ordered and served without a restart.
    let (ok, out, err) = run_cli(&[
        "certs",
        "--config",
        scene.files.config_arg(),
        "--renew",
        NAME,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("renewal requested"), "{out}");
    let renewed = wait_served(&node, scene.files.https(), NAME, &pebble, Some(&serial));
    assert_ne!(renewed, serial);
    assert_eq!(pebble.orders(), 2);
    let (ok, _, err) = run_cli(&[
        "certs",
        "--config",
        scene.files.config_arg(),
        "--renew",
        "nope.test",
    ]);
    assert!(!ok);
    assert!(
        err.contains("nope.test is not a name [acme] manages"),
        "{err}"
    );
}

#[test]
fn tls_alpn_01_is_answered_before_pingoras_handshake() {
    let scene = Scene::new(&format!(
        "domains = [{NAME:?}]\nchallenge = \"tls-alpn-01\""
    ));
    // The CA's plain-HTTP port is closed: only TLS-ALPN-01 can succeed.
    let pebble = scene.pebble_on(free_port(), &PebbleOptions::default());
    let node = Node::start(&scene.files);
    wait_served(&node, scene.files.https(), NAME, &pebble, None);
    wait_log(
        &node,
        &format!("acme: {NAME}: TLS-ALPN-01 challenge answered"),
    );
    assert_eq!(pebble.orders(), 1);
    // Ordinary clients still get HTTP/2 or HTTP/1.1 on the same listener.
    let client = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured({
            let mut c = scene.ca.client_config();
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            c
        })
        .resolve("localhost", scene.files.https())
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{}/healthz", scene.files.https))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
}

#[test]
fn failures_back_off_with_the_cas_reason_while_the_old_certificate_serves() {
    let scene = Scene::new(&format!("domains = [{NAME:?}, \"blocked.test\"]"));
    let mut pebble = scene.pebble(&PebbleOptions {
        blocklist: vec!["blocked.test".into()],
        ..PebbleOptions::default()
    });
    let node = Node::start(&scene.files);
    let serial = wait_served(&node, scene.files.https(), NAME, &pebble, None);

    // The CA refuses one name: its problem document is in the warning,
    // the name is counted, waits, and its handshakes are refused.
    wait_log(&node, "acme: blocked.test: order failed (1 in a row): the CA refused: urn:ietf:params:acme:error:rejectedIdentifier");
    assert!(served(scene.files.https(), "blocked.test", &pebble.root()).is_err());
    let (ok, out, err) = run_cli(&["certs", "--config", scene.files.config_arg()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("blocked.test\n  source:       acme: waiting"),
        "{out}"
    );
    assert!(out.contains("(after 1 failed order(s); last: the CA refused: urn:ietf:params:acme:error:rejectedIdentifier"), "{out}");

    // The CA goes down during a renewal: a warning, a count, a backoff,
    // and the current certificate keeps serving.
    let root = pebble.root();
    pebble.stop();
    let (ok, _, err) = run_cli(&[
        "certs",
        "--config",
        scene.files.config_arg(),
        "--renew",
        NAME,
    ]);
    assert!(ok, "{err}");
    wait_log(
        &node,
        &format!("acme: {NAME}: order failed (1 in a row): cannot reach the CA"),
    );
    assert!(
        node.logs().contains("the current certificate (valid until"),
        "{}",
        node.logs()
    );
    assert!(node.logs().contains("next attempt in"), "{}", node.logs());
    // blocked.test's first failure and this one (blocked.test retries a
    // minute or more after its failure, which a slow run may reach).
    assert!(node
        .metric("visitord_acme_orders_total{result=\"error\"}")
        .is_some_and(|n| n >= 2.0));
    assert_eq!(served(scene.files.https(), NAME, &root).unwrap(), serial);
    let (ok, out, _) = run_cli(&["certs", "--config", scene.files.config_arg()]);
    assert!(ok);
    assert!(
        out.contains("(after 1 failed order(s); last: cannot reach the CA"),
        "{out}"
    );
    // One attempt, then the backoff (a minute at least): nothing hammers
    // the CA.
    let attempts = node
        .logs()
        .matches(&format!("acme: {NAME}: order failed"))
        .count();
    assert_eq!(attempts, 1, "{}", node.logs());
}

#[test]
fn damaged_state_is_refused_with_its_reason_and_the_old_state_kept() {
    let scene = Scene::new(&format!("domains = [{NAME:?}]"));
    let pebble = scene.pebble(&PebbleOptions::default());
    let node = Node::start(&scene.files);
    let serial = wait_served(&node, scene.files.https(), NAME, &pebble, None);
    let certs = certs_dir(&scene.state, &scene.ports);

    // A damaged record: reported, not repaired, no order.
    let record = certs.join(format!("{NAME}.json"));
    std::fs::write(&record, "{\"serial\": ").unwrap();
    wait_log(
        &node,
        &format!(
            "acme: {NAME}: not renewing until this is fixed: {}: damaged, left as it is",
            record.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "{\"serial\": ");
    let (ok, _, err) = run_cli(&[
        "certs",
        "--config",
        scene.files.config_arg(),
        "--renew",
        NAME,
    ]);
    assert!(!ok, "a renewal is not recorded over a damaged record");
    assert!(err.contains("damaged, left as it is"), "{err}");

    // A damaged certificate file: the reload is refused with the file and
    // the reason, the old certificate keeps serving, `check` refuses it.
    let bundle = certs.join(format!("{NAME}.pem"));
    let good = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    wait_log(
        &node,
        &format!(
            "refused, still serving generation 2: {}: ",
            bundle.display()
        ),
    );
    assert_eq!(
        served(scene.files.https(), NAME, &pebble.root()).unwrap(),
        serial
    );
    let (ok, _, err) = run_cli(&["check", "--config", scene.files.config_arg()]);
    assert!(!ok);
    assert!(err.contains(&format!("{}: ", bundle.display())), "{err}");

    // Repaired by the operator: served again, and still one order.
    std::fs::write(&bundle, good).unwrap();
    wait_log(&node, "now serving generation 3");
    assert_eq!(
        served(scene.files.https(), NAME, &pebble.root()).unwrap(),
        serial
    );
    assert_eq!(pebble.orders(), 1);
}

#[test]
fn a_fleet_sharing_state_dir_orders_once_and_any_node_answers_the_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ports = PebblePorts::new();
    let state = dir.path().join("shared-state");
    let a_files = node_files(
        &dir.path().join("a"),
        &ca,
        &ports,
        &state,
        &format!("domains = [{NAME:?}]"),
    );
    // Node b manages no name yet but answers challenges from the shared
    // folder; the CA is pointed at b, so a's order is validated by b.
    let b_files = node_files(&dir.path().join("b"), &ca, &ports, &state, "domains = []");
    let pebble = Pebble::start(
        &dir.path().join("pebble"),
        ports,
        b_files.http,
        b_files.https,
        &ca,
        &PebbleOptions::default(),
    );
    let b = Node::start(&b_files);
    let a = Node::start(&a_files);
    let serial = wait_served(&a, a_files.https(), NAME, &pebble, None);
    assert_eq!(pebble.orders(), 1);
    // The CA asked b (the only plain listener it knows), which answered
    // from the shared folder; a was never asked.
    let answered = "visitord_requests_total{project=\"\",route=\"acme_challenge\",status=\"200\"}";
    assert!(b.metric(answered).is_some_and(|n| n >= 1.0), "{}", b.logs());
    assert_eq!(a.metric(answered), None);

    // b takes the name too: it loads the stored certificate, orders nothing.
    b_files.write_config(&ports, &state, &format!("domains = [{NAME:?}]"));
    assert_eq!(
        wait_served(&b, b_files.https(), NAME, &pebble, None),
        serial
    );

    // Both are asked to renew at once: the lease lets one order, both
    // serve the result.
    let (ok, _, err) = run_cli(&["certs", "--config", a_files.config_arg(), "--renew", NAME]);
    assert!(ok, "{err}");
    let renewed = wait_served(&a, a_files.https(), NAME, &pebble, Some(&serial));
    assert_eq!(
        wait_served(&b, b_files.https(), NAME, &pebble, Some(&serial)),
        renewed
    );
    // Both nodes have looked at the name since (their next renewal is far
    // away again): one more order, not two.
    let later = |n: &Node| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        n.metric(&format!(
            "visitord_acme_next_renewal_timestamp_seconds{{name=\"{NAME}\"}}"
        ))
        .is_some_and(|t| t > now + 86_400.0)
    };
    assert!(eventually(ISSUE_WAIT, || later(&a) && later(&b)));
    assert_eq!(pebble.orders(), 2, "{}\n{}", a.logs(), b.logs());
    let ordered = |n: &Node| n.logs().matches("certificate issued").count();
    assert_eq!(ordered(&a) + ordered(&b), 2, "{}\n{}", a.logs(), b.logs());
}

#[test]
fn short_lived_certificates_renew_by_renew_before_with_an_external_account() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ports = PebblePorts::new();
    let state = dir.path().join("state");
    // "kid-1" / a MAC key as CAs hand them out: base64url.
    let mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let files = node_files(
        &dir.path().join("node"),
        &ca,
        &ports,
        &state,
        &format!("domains = [{NAME:?}]\nrenew_before = \"50s\"\neab_kid = \"kid-1\"\neab_hmac_key = {mac:?}"),
    );
    let pebble = Pebble::start(
        &dir.path().join("pebble"),
        ports,
        files.http,
        files.https,
        &ca,
        &PebbleOptions {
            validity_secs: Some(60),
            eab: Some(("kid-1".into(), mac.into())),
            ..PebbleOptions::default()
        },
    );
    let node = Node::start(&files);
    let first = wait_served(&node, files.https(), NAME, &pebble, None);
    // Valid for 60 s, renewed 50 s ahead of expiry: a new one follows
    // without anyone asking.
    let second = wait_served(&node, files.https(), NAME, &pebble, Some(&first));
    assert_ne!(first, second);
    assert!(pebble.orders() >= 2);
}

#[test]
fn http_01_tokens_are_answered_from_state_dir_before_the_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ports = PebblePorts::new();
    let state = dir.path().join("state");
    let files = node_files(
        &dir.path().join("node"),
        &ca,
        &ports,
        &state,
        "domains = []",
    );
    let node = Node::start(&files);
    let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
    std::fs::write(state.join("http-01").join(token), "LoqX.thumbprint").unwrap();
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let get = |path: &str| {
        let r = client
            .get(format!("http://127.0.0.1:{}{path}", files.http))
            .header("host", NAME)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, content_type, r.text().unwrap())
    };
    let (status, content_type, body) = get(&format!("/.well-known/acme-challenge/{token}"));
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    assert_eq!(body, "LoqX.thumbprint");
    assert_eq!(get("/.well-known/acme-challenge/unknown").0, 404);
    assert_eq!(get("/.well-known/acme-challenge/..%2Faccount.json").0, 404);
    assert_eq!(
        get("/.well-known/other").0,
        308,
        "everything else redirects"
    );
    assert_eq!(
        node.metric(
            "visitord_requests_total{project=\"\",route=\"acme_challenge\",status=\"200\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn check_says_which_names_a_file_pair_serves_and_refuses_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ports = PebblePorts::new();
    let state = dir.path().join("state");
    let files = node_files(
        &dir.path().join("node"),
        &ca,
        &ports,
        &state,
        &format!("domains = [\"www.covered.test\", {NAME:?}]"),
    );
    ca.leaf(
        &files.dir.join("tls"),
        "server",
        &["localhost", "*.covered.test"],
    );
    let (ok, out, err) = run_cli(&["check", "--config", files.config_arg()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(": 0 with a certificate, 1 waiting: shop.test"),
        "{out}"
    );
    assert!(
        out.contains("acme: served from a [tls] file pair instead: www.covered.test"),
        "{out}"
    );

    files.write_config(&ports, &state, "domains = [\"*.covered.test\"]");
    let (ok, _, err) = run_cli(&["check", "--config", files.config_arg()]);
    assert!(!ok);
    assert!(
        err.contains("visitord.toml: acme.domains[0]: \"*.covered.test\": a wildcard certificate needs the DNS-01 challenge"),
        "{err}"
    );
}
