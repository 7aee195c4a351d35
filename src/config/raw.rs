//! The TOML surface of the configuration files: what serde reads
//! (`Raw*`, with the defaults of every key), and reading a file into it
//! with errors that name the file, the key and the reason (docs/design.md §4).
//! Nothing here is used at run time; `config` turns these into the typed
//! values the rest of the program runs on.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A configuration file that could not be loaded: which file, which key, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(file: &Path, key: impl Into<String>, reason: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. } | ConfigError::Invalid { file, .. } => file,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) listen: Vec<RawListen>,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) api: RawApi,
    pub(super) geo: RawGeo,
    #[serde(default)]
    pub(super) client_ip: RawClientIp,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) user_agent: RawUserAgent,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) site: Vec<RawSite>,
    #[serde(default)]
    pub(super) acme: Option<RawAcme>,
    #[serde(default)]
    pub(super) signing: Option<RawSigning>,
}

/// `[signing]`: signed visitor facts (see `config::signing`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSigning {
    pub(super) keys: Vec<PathBuf>,
    #[serde(default = "default_signing_ttl", with = "humantime_serde")]
    pub(super) ttl: Duration,
    /// `""`: `https://` and the first certificate name.
    #[serde(default)]
    pub(super) issuer: String,
}

/// Ten minutes: long enough for a page to send its facts to its backend,
/// short enough that a copied token is soon worthless.
fn default_signing_ttl() -> Duration {
    Duration::from_secs(600)
}

/// `[acme]`: automatic certificates (see `config::acme`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default = "default_acme_directory")]
    pub(super) directory: String,
    #[serde(default)]
    pub(super) directory_ca: Option<PathBuf>,
    #[serde(default = "default_acme_state_dir")]
    pub(super) state_dir: PathBuf,
    #[serde(default = "default_acme_challenge")]
    pub(super) challenge: String,
    #[serde(default, with = "humantime_serde")]
    pub(super) renew_before: Option<Duration>,
    #[serde(default)]
    pub(super) domains: Option<Vec<String>>,
    #[serde(default)]
    pub(super) eab_kid: Option<String>,
    #[serde(default)]
    pub(super) eab_hmac_key: Option<String>,
}

/// Let's Encrypt's production directory.
fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".to_owned()
}

fn default_acme_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/visitord/acme")
}

fn default_acme_challenge() -> String {
    "http-01".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "default_requests_per_minute_per_ip")]
    pub(super) requests_per_minute_per_ip: u32,
    #[serde(default = "default_max_connections_per_ip")]
    pub(super) max_connections_per_ip: u32,
    #[serde(default = "default_request_header_timeout", with = "humantime_serde")]
    pub(super) request_header_timeout: Duration,
    #[serde(default = "default_request_body_timeout", with = "humantime_serde")]
    pub(super) request_body_timeout: Duration,
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub(super) keepalive_timeout: Duration,
    #[serde(default = "default_keepalive_requests")]
    pub(super) keepalive_requests: u32,
    #[serde(default)]
    pub(super) max_connections: Option<u32>,
    #[serde(default = "default_tls_handshake_timeout", with = "humantime_serde")]
    pub(super) tls_handshake_timeout: Duration,
    #[serde(default = "default_ipv4_prefix")]
    pub(super) ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix")]
    pub(super) ipv6_prefix: u8,
    #[serde(default = "default_max_request_head")]
    pub(super) max_request_head: u32,
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub(super) send_timeout: Duration,
    /// `""`: no shared store, project limits count per node.
    #[serde(default)]
    pub(super) shared_store: String,
    #[serde(default)]
    pub(super) shared_store_password_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) shared_store_ca: Option<PathBuf>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            requests_per_minute_per_ip: default_requests_per_minute_per_ip(),
            max_connections_per_ip: default_max_connections_per_ip(),
            request_header_timeout: default_request_header_timeout(),
            request_body_timeout: default_request_body_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            max_connections: None,
            tls_handshake_timeout: default_tls_handshake_timeout(),
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            max_request_head: default_max_request_head(),
            send_timeout: default_send_timeout(),
            shared_store: String::new(),
            shared_store_password_file: None,
            shared_store_ca: None,
        }
    }
}

/// A page view calls the API once; ten a second from one address leaves
/// room for offices and carrier NAT.
fn default_requests_per_minute_per_ip() -> u32 {
    600
}

/// Browsers open at most six connections per host; this leaves room for
/// many browsers behind one NAT address.
fn default_max_connections_per_ip() -> u32 {
    128
}

fn default_request_header_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Shorter than a site's default `read_timeout` (60s), so that a client
/// that stops sending its body is found out before the upstream, waiting
/// for that body, is blamed.
fn default_request_body_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive_requests() -> u32 {
    1000
}

/// A browser finishes a handshake in one or two round trips; ten seconds
/// covers a slow mobile network and cuts a silent connection five times
/// sooner than Pingora's own 60 s.
fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One address is one client.
fn default_ipv4_prefix() -> u8 {
    32
}

/// A /64 is one subscriber's network (RFC 6177): anyone who has one has
/// 2^64 addresses, so per-address limits would be no limits.
fn default_ipv6_prefix() -> u8 {
    64
}

/// 32 KiB: nginx's default large_client_header_buffers (4 x 8k) holds a
/// head of that size; browsers send 1-2 KiB.
fn default_max_request_head() -> u32 {
    32 * 1024
}

/// Long enough for a slow network, short enough that a client that stops
/// reading (an HTTP/2 window left at zero) gives its streams and upstream
/// connections back soon.
fn default_send_timeout() -> Duration {
    Duration::from_secs(20)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_threads")]
    pub(super) threads: usize,
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub(super) grace_period: Duration,
    /// Where a new instance (`run --upgrade`) receives the listening
    /// sockets; `None`: see `Config::parse`.
    #[serde(default)]
    pub(super) upgrade_socket: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: default_threads(),
            grace_period: default_grace_period(),
            upgrade_socket: None,
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn default_grace_period() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) addr: SocketAddr,
    #[serde(default)]
    pub(super) tls: bool,
    #[serde(default)]
    pub(super) redirect_https_port: Option<u16>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// May be empty only when `[acme]` provides the certificates.
    #[serde(default)]
    pub(super) certificates: Vec<RawCertificate>,
    #[serde(default = "default_hsts")]
    pub(super) hsts: String,
}

pub(super) const DEFAULT_HSTS: &str = "max-age=63072000";

fn default_hsts() -> String {
    DEFAULT_HSTS.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    #[serde(default = "default_api_path")]
    pub(super) path: String,
    #[serde(default = "default_projects")]
    pub(super) projects: PathBuf,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            path: default_api_path(),
            projects: default_projects(),
        }
    }
}

fn default_api_path() -> String {
    "/api/".to_owned()
}

fn default_projects() -> PathBuf {
    PathBuf::from("projects.toml")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGeo {
    pub(super) databases: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientIp {
    #[serde(default, deserialize_with = "networks")]
    pub(super) trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_metrics_addr")]
    pub(super) addr: SocketAddr,
    #[serde(default, deserialize_with = "networks")]
    pub(super) allow: Vec<IpNet>,
    /// `""` is the same as no token.
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    /// Host names answered without a token, besides loopback ones.
    #[serde(default)]
    pub(super) hosts: Vec<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            addr: default_metrics_addr(),
            allow: Vec::new(),
            token_file: None,
            hosts: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserAgent {
    #[serde(default)]
    pub(super) regexes: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProjects {
    #[serde(default)]
    pub(super) project: Vec<RawProject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub(super) id: String,
    pub(super) domains: Vec<String>,
    #[serde(default)]
    pub(super) requests_per_minute: u32,
    #[serde(default)]
    pub(super) signed: bool,
}

/// One `[[site]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    pub(super) hosts: Vec<String>,
    pub(super) upstreams: Vec<String>,
    #[serde(default)]
    pub(super) upstream_tls: bool,
    #[serde(default)]
    pub(super) upstream_sni: Option<String>,
    #[serde(default)]
    pub(super) upstream_ca: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(super) connect_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub(super) read_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub(super) write_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub(super) idle_timeout: Duration,
    #[serde(default = "default_health_check_interval", with = "humantime_serde")]
    pub(super) health_check_interval: Duration,
    #[serde(default)]
    pub(super) api_path: Option<String>,
    #[serde(default)]
    pub(super) allow_countries: Option<Vec<String>>,
    #[serde(default)]
    pub(super) deny_countries: Option<Vec<String>>,
    #[serde(default)]
    pub(super) unknown_country: UnknownCountry,
    #[serde(default)]
    pub(super) pass_underscore_headers: bool,
    #[serde(default)]
    pub(super) preserve_header_case: bool,
    #[serde(default)]
    pub(super) visitor_headers: Option<Vec<String>>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_io_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_health_check_interval() -> Duration {
    Duration::from_secs(5)
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or a bare
/// address for itself alone (`/32` or `/128`). A bad value says which half
/// is wrong rather than the address parser's "invalid IP address syntax".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network(IpNet);

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return s
                .parse::<std::net::IpAddr>()
                .map(|ip| Network(IpNet::from(ip)))
                .map_err(|_| {
                    format!("{s:?}: not an IP address or network (CIDR: address/prefix)")
                });
        };
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = prefix
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| {
                format!("{s:?}: prefix length {prefix:?} is not a number from 0 to {max}")
            })?;
        IpNet::new(ip, len)
            .map(Network)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A list of [`Network`]s.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let list = Vec::<Network>::deserialize(d)?;
    Ok(list.into_iter().map(|n| n.0).collect())
}

/// What to do with a visitor whose country the databases do not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCountry {
    #[default]
    Allow,
    Deny,
}

/// Reads a TOML file: a regular file of at most 16 MiB, opened without
/// blocking (`lookup::input`).
pub(super) fn read(file: &Path) -> Result<String, ConfigError> {
    crate::lookup::input::read_to_string(file, Some(crate::lookup::input::TOML_LIMIT)).map_err(
        |source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        },
    )
}

/// Deserializes TOML, reporting the dotted key path of the first error and,
/// for syntax errors, the line and column.
pub(super) fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(file, text, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let key = if path == "." {
            "(top level)".to_owned()
        } else {
            path
        };
        ConfigError::invalid(file, key, inner.message())
    })
}

fn syntax_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    // Byte offsets come from the parser; `get` keeps a bad one from panicking.
    let position = e
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        });
    // The parser's "duplicate key" points at the key but does not say it.
    let duplicate = e
        .span()
        .and_then(|span| text.get(span))
        .filter(|key| e.message() == "duplicate key" && !key.is_empty());
    let reason = match duplicate {
        Some(key) => format!("duplicate key `{}`", key.trim()),
        None => e.message().to_owned(),
    };
    ConfigError::invalid(
        file,
        position.unwrap_or_else(|| "(syntax)".to_owned()),
        reason,
    )
}
