//! Test harness: runs the real `visitord` binary on free loopback ports with a
//! configuration written into a temporary folder, certificates from a test CA
//! made with rcgen, and databases made by `mmdb::MmdbWriter`.
#![allow(dead_code)]

pub mod attack;
pub mod mmdb;
pub mod pebble;
pub mod upstream;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_visitord");

/// The user agent of Chrome 131 on Windows 10.
pub const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A loopback port that was free a moment ago, and not handed out before
/// by this process.
///
/// Not from the kernel's ephemeral range (32768 and up): a port taken with
/// `bind(…:0)` and released can be given again by the next such call, or to
/// an outgoing connection of any process, before the server binds it.
/// Ports 10000-29999 are never handed out that way; each test process
/// starts at its own offset (process id × 101) and walks on, so processes
/// running side by side try different ports.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 20_000;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let mut n = next.unwrap_or_else(|| std::process::id().wrapping_mul(101) % SPAN);
    for _ in 0..SPAN {
        let port = (FIRST + n % SPAN) as u16;
        n = n.wrapping_add(1);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(n);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}-{}", FIRST + SPAN - 1);
}

/// A test certificate authority and leaf certificates signed by it.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "visitord test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `NAME.crt` and `NAME.key` for `names` into `dir`.
    pub fn leaf(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let crt = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }

    pub fn client_config(&self) -> rustls::ClientConfig {
        install_crypto();
        rustls::ClientConfig::builder()
            .with_root_certificates(self.root_store())
            .with_no_client_auth()
    }

    /// A client configuration trusting the certificates of `pem` only.
    pub fn client_config_for(pem: &str) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        install_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

/// A flat (ip-location-db shaped) database with a few well-known networks.
pub fn write_flat_fixture(path: &Path) {
    use mmdb::{flat_record, MmdbWriter};
    let mut w = MmdbWriter::new("test-flat-city", 6);
    w.insert(
        "8.8.8.0/24".parse().unwrap(),
        flat_record(
            "US",
            "California",
            "Mountain View",
            37.386,
            -122.0838,
            "94035",
            "America/Los_Angeles",
        ),
    );
    w.insert(
        "81.2.69.0/24".parse().unwrap(),
        flat_record(
            "GB",
            "England",
            "London",
            51.5142,
            -0.0931,
            "EC4N",
            "Europe/London",
        ),
    );
    w.insert(
        "2001:db8:1::/48".parse().unwrap(),
        flat_record(
            "DE",
            "Bavaria",
            "Munich",
            48.1374,
            11.5755,
            "80331",
            "Europe/Berlin",
        ),
    );
    w.insert(
        "127.0.0.0/8".parse().unwrap(),
        flat_record(
            "NL",
            "North Holland",
            "Amsterdam",
            52.3740,
            4.8897,
            "1012",
            "Europe/Amsterdam",
        ),
    );
    w.write(path).unwrap();
}

/// How to start a server.
pub struct Options {
    pub projects: String,
    /// Extra TOML appended to visitord.toml (new sections only).
    pub extra: String,
    pub trusted_proxies: Vec<String>,
    /// Database file names inside the temp dir; `None` writes the flat fixture.
    pub databases: Option<Vec<String>>,
    pub grace_period: &'static str,
    pub rust_log: &'static str,
    /// Names on the server certificate.
    pub cert_names: Vec<&'static str>,
    /// The process's open-file limit, soft and hard (`None`: inherited).
    pub open_files: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            projects: DEFAULT_PROJECTS.to_owned(),
            extra: String::new(),
            trusted_proxies: vec!["127.0.0.1/32".to_owned()],
            databases: None,
            grace_period: "2s",
            rust_log: "info",
            cert_names: vec!["localhost", "127.0.0.1", "example.com", "*.example.com"],
            open_files: None,
        }
    }
}

pub const DEFAULT_PROJECTS: &str = r#"
[[project]]
id = "demo"
domains = ["localhost", "example.com", "*.example.com"]

[[project]]
id = "shop"
domains = ["shop.example.org"]
"#;

/// A running `visitord run` in a temp dir; killed on drop.
pub struct Server {
    child: Mutex<Option<Child>>,
    pub dir: TempDir,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    pub ca: Arc<TestCa>,
    pub config: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::with(Options::default())
    }

    pub fn with(o: Options) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = Server::prepare(dir.path(), &o);
        let ca = Arc::new(TestCa::new());
        let names: Vec<&str> = o.cert_names.clone();
        ca.leaf(&dir.path().join("tls"), "server", &names);
        Server::launch(dir, config, ca, o.rust_log, &[], o.open_files)
    }

    /// Writes visitord.toml, projects.toml and the database into `dir`.
    pub fn prepare(dir: &Path, o: &Options) -> PathBuf {
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        let databases = match &o.databases {
            Some(list) => list.clone(),
            None => {
                write_flat_fixture(&dir.join("fixture.mmdb"));
                vec!["fixture.mmdb".to_owned()]
            }
        };
        std::fs::write(dir.join("projects.toml"), &o.projects).unwrap();
        let config = dir.join("visitord.toml");
        std::fs::write(&config, config_text(o, &databases)).unwrap();
        config
    }

    pub fn spawn(dir: TempDir, config: PathBuf, ca: Arc<TestCa>, rust_log: &str) -> Server {
        Server::spawn_with_env(dir, config, ca, rust_log, &[])
    }

    /// `spawn`, with extra environment variables for the process.
    pub fn spawn_with_env(
        dir: TempDir,
        config: PathBuf,
        ca: Arc<TestCa>,
        rust_log: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        Server::launch(dir, config, ca, rust_log, env, None)
    }

    fn launch(
        dir: TempDir,
        config: PathBuf,
        ca: Arc<TestCa>,
        rust_log: &str,
        env: &[(&str, &std::ffi::OsStr)],
        open_files: Option<u64>,
    ) -> Server {
        let text = std::fs::read_to_string(&config).unwrap();
        let addr_of = |marker: &str| -> SocketAddr {
            let line = text
                .lines()
                .skip_while(|l| !l.contains(marker))
                .find(|l| l.starts_with("addr"))
                .unwrap();
            line.split('"').nth(1).unwrap().parse().unwrap()
        };
        let log = std::fs::File::create(dir.path().join("visitord.log")).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            let limit = move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            };
            // SAFETY: setrlimit is async-signal-safe and touches no memory
            // of the parent.
            unsafe { command.pre_exec(limit) };
        }
        let child = command.spawn().unwrap();
        let server = Server {
            child: Mutex::new(Some(child)),
            https: addr_of("# https"),
            http: addr_of("# http redirect"),
            metrics: addr_of("[metrics]"),
            dir,
            ca,
            config,
        };
        server.wait_ready();
        server
    }

    /// Polls `/readyz` over HTTPS until it answers 200; panics with the log
    /// after a deadline.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = self.client();
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.try_status() {
                panic!("visitord exited with {status}:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!("visitord not ready in time:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap();
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().map_or(0, |c| c.id())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("visitord.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// A client that trusts the test CA and resolves every name to loopback.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::blocking::ClientBuilder {
        let mut config = self.ca.client_config();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(config)
            .resolve("localhost", self.https)
            .resolve("example.com", self.https)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .no_proxy()
    }

    /// A client like `client()` that also resolves each of `hosts` to the
    /// HTTPS listener (for sites).
    pub fn client_for(&self, hosts: &[&str]) -> reqwest::blocking::Client {
        let mut b = self.client_builder();
        for h in hosts {
            b = b.resolve(h, self.https);
        }
        b.build().unwrap()
    }

    /// GET the API as a browser at `origin` would.
    pub fn api(&self, query: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client().get(self.url(&format!("/api/{query}")));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::from(req.send().unwrap())
    }

    pub fn metrics_text(&self) -> String {
        reqwest::blocking::get(format!("http://{}/metrics", self.metrics))
            .unwrap()
            .text()
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit, returning how long it took.
    pub fn terminate(&self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(60));
        (status, started.elapsed())
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait_exit(&self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "visitord did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().map(Option::take).unwrap_or(None);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- visitord log ---\n{}", self.logs());
        }
    }
}

fn config_text(o: &Options, databases: &[String]) -> String {
    let trusted = o
        .trusted_proxies
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dbs = databases
        .iter()
        .map(|d| format!("{d:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[server]
threads = 2
grace_period = "{grace}"

[[listen]] # https
addr = "127.0.0.1:{https}"
tls = true

[[listen]] # http redirect
addr = "127.0.0.1:{http}"
redirect_https_port = {https}

[tls]
certificates = [{{ cert = "tls/server.crt", key = "tls/server.key" }}]

[api]
projects = "projects.toml"

[geo]
databases = [{dbs}]

[client_ip]
trusted_proxies = [{trusted}]

[metrics]
addr = "127.0.0.1:{metrics}"
{extra}
"#,
        grace = o.grace_period,
        https = free_port(),
        http = free_port(),
        metrics = free_port(),
        extra = o.extra,
    )
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub version: reqwest::Version,
}

impl From<reqwest::blocking::Response> for Reply {
    fn from(r: reqwest::blocking::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let version = r.version();
        let body = r.text().unwrap();
        Reply {
            status,
            headers,
            body,
            version,
        }
    }
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends raw bytes over TLS and returns everything the server wrote until it
/// closed the connection or `timeout` passed.
pub fn raw_tls(
    addr: SocketAddr,
    ca: &TestCa,
    bind: Option<IpAddr>,
    request: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    let config = Arc::new(ca.client_config());
    let tcp = connect_from(addr, bind);
    tcp.set_read_timeout(Some(timeout)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(request);
    let _ = tls.flush();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !response_complete(&out) {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Whether `bytes` hold one whole HTTP/1 response (head, and as many body
/// bytes as `Content-Length` says), so a kept-alive connection need not be
/// waited out.
pub fn response_complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) => bytes.len() >= end + 4 + n,
        None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
    }
}

/// A TCP connection from `bind` (any loopback address) to `addr`.
pub fn connect_from(addr: SocketAddr, bind: Option<IpAddr>) -> TcpStream {
    match bind {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            socket.connect(&addr.into()).unwrap();
            socket.into()
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let line = BufReader::new(response).lines().next()?.ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Runs `visitord` with `args` to completion; returns (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A TLS connection to `addr` for `server_name` (HTTP/1.1 only), after
/// sending `prefix` in clear (a PROXY protocol header, or nothing).
pub fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    server_name: &str,
    prefix: &[u8],
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let config = Arc::new(ca.client_config());
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(prefix)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends one HTTP/1.1 request (it should say `Connection: close`) and
/// reads the response to the end: (status, head, body).
pub fn http_exchange(stream: &mut impl ReadWrite, request: &str) -> (u16, String, Vec<u8>) {
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // rustls reports a peer that closes without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading the response: {e}"),
        }
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = raw_status(&out).unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// Read + Write, for `http_exchange` over TCP or TLS.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A value of the server's Prometheus exposition, 0 when the series is
/// absent.
pub fn metric(s: &Server, series: &str) -> f64 {
    s.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
