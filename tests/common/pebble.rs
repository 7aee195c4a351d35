//! A real ACME server for the certificate tests: Let's Encrypt's `pebble`
//! (Debian package `pebble`, installed by `scripts/test`), with
//! `pebble-challtestsrv` as its DNS server answering 127.0.0.1 for every
//! name. Both run on free ports; pebble's own HTTPS certificate comes from
//! the test's CA, which visitord is told to trust with `acme.directory_ca`.
//! Pebble's CA is new at every start; `root()` fetches it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, TestCa};

/// What pebble is told beyond its ports.
#[derive(Default, Clone)]
pub struct PebbleOptions {
    /// `certificateValidityPeriod`, seconds (pebble's default: 5 years).
    pub validity_secs: Option<u64>,
    /// Names pebble refuses with `rejectedIdentifier`.
    pub blocklist: Vec<String>,
    /// External account binding required, with this key id and MAC key
    /// (base64url).
    pub eab: Option<(String, String)>,
}

/// Ports chosen before anything starts, so visitord's configuration can
/// name the directory and pebble's can name visitord's listeners.
#[derive(Clone, Copy)]
pub struct PebblePorts {
    pub acme: u16,
    pub management: u16,
    pub dns: u16,
    pub dns_management: u16,
}

impl PebblePorts {
    pub fn new() -> PebblePorts {
        PebblePorts {
            acme: free_port(),
            management: free_port(),
            dns: free_port(),
            dns_management: free_port(),
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme)
    }
}

/// A running pebble and its DNS server; both killed on drop.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Option<Child>,
    pub ports: PebblePorts,
    dir: PathBuf,
    ca_pem: String,
}

fn require(binary: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()));
    assert!(
        found,
        "{binary} is not installed: scripts/test installs the Debian package `pebble`"
    );
}

fn wait_for_port(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Starts pebble in `dir`, validating HTTP-01 on `http_port` and
    /// TLS-ALPN-01 on `tls_port` of 127.0.0.1 (visitord's listeners).
    pub fn start(
        dir: &Path,
        ports: PebblePorts,
        http_port: u16,
        tls_port: u16,
        ca: &TestCa,
        options: &PebbleOptions,
    ) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = ca.leaf(dir, "pebble", &["127.0.0.1", "localhost"]);

        let dns_log = dir.join("challtestsrv.log");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
            .args([
                "-management",
                &format!("127.0.0.1:{}", ports.dns_management),
            ])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(Stdio::from(std::fs::File::create(&dns_log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut pebble = Pebble {
            pebble: None,
            dns: Some(dns),
            ports,
            dir: dir.to_path_buf(),
            ca_pem: ca.pem.clone(),
        };
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], ports.dns_management)),
            "pebble-challtestsrv",
            &dns_log,
        );

        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", ports.acme),
            "managementListenAddress": format!("127.0.0.1:{}", ports.management),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
        });
        if let Some(secs) = options.validity_secs {
            config["certificateValidityPeriod"] = secs.into();
        }
        if !options.blocklist.is_empty() {
            config["domainBlocklist"] = options.blocklist.clone().into();
        }
        if let Some((kid, key)) = &options.eab {
            config["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_file = dir.join("pebble.json");
        std::fs::write(
            &config_file,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": config })).unwrap(),
        )
        .unwrap();
        pebble.pebble = Some(pebble.spawn_pebble());
        pebble
    }

    fn spawn_pebble(&self) -> Child {
        let log = self.log_file();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.ports.dns)])
            // No random sleeps before validating; no nonces refused at
            // random: quick and deterministic.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Never reuse an authorization: every order is validated.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], self.ports.acme)),
            "pebble",
            &log,
        );
        child
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("pebble.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// How many orders pebble has created since it started.
    pub fn orders(&self) -> usize {
        self.logs().matches("Added order").count()
    }

    /// Stops pebble (the CA is down); `restart` brings up a new CA on the
    /// same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PEM of pebble's root (issuer of the intermediate that signs).
    pub fn root(&self) -> String {
        let client = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(super::TestCa::client_config_for(&self.ca_pem))
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client
            .get(format!(
                "https://127.0.0.1:{}/roots/0",
                self.ports.management
            ))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut child) = self.dns.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.logs());
        }
    }
}
