//! Configuration: the TOML surface (`Raw*`, serde) and the typed, validated
//! `Config` / `Projects` the rest of the program runs on (DESIGN §4).
//!
//! Parse, don't validate: whatever `Config::load` returns is what runs. Every
//! error names the file, the key and the reason, e.g.
//! `projects.toml: project[2].domains[0]: "*.": empty domain after wildcard`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::origin::DomainPattern;
use crate::sites::{RawSite, SiteConfig};

/// Longest accepted project id (DESIGN §4: `[A-Za-z0-9_-]{1,64}`).
pub const MAX_PROJECT_ID_LEN: usize = 64;

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
    pub(crate) fn invalid(file: &Path, key: impl Into<String>, reason: impl fmt::Display) -> Self {
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

// ---------------------------------------------------------------------------
// The TOML surface.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    api: RawApi,
    geo: RawGeo,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    user_agent: RawUserAgent,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    site: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_requests_per_minute_per_ip")]
    requests_per_minute_per_ip: u32,
    #[serde(default = "default_max_connections_per_ip")]
    max_connections_per_ip: u32,
    #[serde(default = "default_request_header_timeout", with = "humantime_serde")]
    request_header_timeout: Duration,
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    keepalive_timeout: Duration,
    #[serde(default = "default_keepalive_requests")]
    keepalive_requests: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            requests_per_minute_per_ip: default_requests_per_minute_per_ip(),
            max_connections_per_ip: default_max_connections_per_ip(),
            request_header_timeout: default_request_header_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
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

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive_requests() -> u32 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    grace_period: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: default_threads(),
            grace_period: default_grace_period(),
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
struct RawListen {
    addr: SocketAddr,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    redirect_https_port: Option<u16>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Vec<RawCertificate>,
    #[serde(default = "default_hsts")]
    hsts: String,
}

fn default_hsts() -> String {
    "max-age=63072000".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default = "default_api_path")]
    path: String,
    #[serde(default = "default_projects")]
    projects: PathBuf,
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
struct RawGeo {
    databases: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_metrics_addr")]
    addr: SocketAddr,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            addr: default_metrics_addr(),
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
struct RawUserAgent {
    #[serde(default)]
    regexes: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProjects {
    #[serde(default)]
    project: Vec<RawProject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    id: String,
    domains: Vec<String>,
    #[serde(default)]
    requests_per_minute: u32,
}

// ---------------------------------------------------------------------------
// The typed configuration.

/// `visitord.toml`, validated, with every path resolved from the file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    pub server: Server,
    pub listeners: Vec<Listener>,
    /// Absent when no listener terminates TLS.
    pub tls: Option<Tls>,
    pub api: Api,
    pub geo: Geo,
    pub client_ip: ClientIp,
    pub metrics: Option<Metrics>,
    pub user_agent: UserAgent,
    pub limits: Limits,
    /// `[[site]]` tables, in file order; names not resolved yet (see
    /// `sites::Sites::build`).
    pub sites: Vec<SiteConfig>,
}

/// `[limits]`: abuse limits (0 disables a count or a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// API requests per minute from one client address.
    pub requests_per_minute_per_ip: u32,
    /// Concurrent connections from one peer address (trusted proxies are
    /// exempt).
    pub max_connections_per_ip: u32,
    /// Time allowed for a whole HTTP/1 request head, from its first byte.
    pub request_header_timeout: Duration,
    /// How long an idle kept-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Requests served on one HTTP/1 connection before it is closed.
    pub keepalive_requests: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    /// Every connection starts with a PROXY protocol (v1 or v2) header
    /// naming the client; TLS listeners only.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Terminates TLS; serves the API, health and sites.
    Tls,
    /// Plain HTTP that answers `308` to `https://HOST:port/...` (health excepted).
    Redirect { https_port: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub certificates: Vec<CertificateFiles>,
    /// The `Strict-Transport-Security` value sent on TLS answers; `None` when
    /// configured as `""`.
    pub hsts: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    /// Always starts and ends with `/`; requests for this path, or the path
    /// without its trailing slash, are API requests.
    pub path: String,
    pub projects: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Geo {
    pub databases: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientIp {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserAgent {
    /// A uap-core `regexes.yaml`; `None` uses the copy built into the binary.
    pub regexes: Option<PathBuf>,
}

/// A project id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(String);

impl ProjectId {
    /// Accepts exactly the ids DESIGN §4 allows.
    pub fn parse(s: &str) -> Option<ProjectId> {
        is_valid_project_id(s).then(|| ProjectId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[A-Za-z0-9_-]{1,64}`, checked without allocating (used per request).
pub fn is_valid_project_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PROJECT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One project of `projects.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: ProjectId,
    pub domains: Vec<DomainPattern>,
    /// Requests per minute for the whole project; 0: no limit.
    pub requests_per_minute: u32,
}

/// `projects.toml`, validated: ids unique, domains parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projects {
    /// File order, for listings and metrics.
    list: Vec<Project>,
    by_id: HashMap<String, usize>,
}

impl Projects {
    pub fn get(&self, id: &str) -> Option<&Project> {
        self.find(id).map(|(_, p)| p)
    }

    /// The project and its index in file order (see [`Projects::at`]).
    pub fn find(&self, id: &str) -> Option<(usize, &Project)> {
        self.by_id
            .get(id)
            .and_then(|&i| Some((i, self.list.get(i)?)))
    }

    /// The project at `index` in file order.
    pub fn at(&self, index: usize) -> Option<&Project> {
        self.list.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Project> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Loading.

impl Config {
    /// Reads and validates `visitord.toml`. Referenced files (projects,
    /// databases, certificates) are resolved but not opened here.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = read(file)?;
        Config::parse(file, &text)
    }

    /// Validates `text` as if read from `file` (paths resolve from its folder).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(file, text)?;
        let base = file.parent().unwrap_or_else(|| Path::new(""));
        let resolve = |p: &Path| base.join(p);

        if raw.server.threads == 0 || raw.server.threads > 1024 {
            return Err(ConfigError::invalid(
                file,
                "server.threads",
                format!("{} is out of range 1..=1024", raw.server.threads),
            ));
        }
        if raw.server.grace_period > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                file,
                "server.grace_period",
                "longer than 1h",
            ));
        }

        let listeners = listeners(file, &raw.listen)?;
        let needs_tls = listeners.iter().any(|l| l.kind == ListenerKind::Tls);
        let tls =
            match (raw.tls, needs_tls) {
                (Some(tls), _) => Some(tls_settings(file, tls, &resolve)?),
                (None, true) => return Err(ConfigError::invalid(
                    file,
                    "tls",
                    "missing: a listener has `tls = true` but no [tls] certificates are configured",
                )),
                (None, false) => None,
            };

        let api = Api {
            path: api_path_at(file, "api.path", &raw.api.path)?,
            projects: resolve(&raw.api.projects),
        };

        if raw.geo.databases.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "geo.databases",
                "must list at least one database",
            ));
        }
        let geo = Geo {
            databases: raw.geo.databases.iter().map(|p| resolve(p)).collect(),
        };

        let sites = crate::sites::parse_sites(file, raw.site, &resolve)?;

        let metrics = raw.metrics.enabled.then_some(Metrics {
            addr: raw.metrics.addr,
        });
        if let Some(m) = metrics {
            if let Some(l) = listeners.iter().find(|l| l.addr == m.addr) {
                return Err(ConfigError::invalid(
                    file,
                    "metrics.addr",
                    format!("{} is also a [[listen]] address", l.addr),
                ));
            }
        }

        Ok(Config {
            file: file.to_path_buf(),
            server: Server {
                threads: raw.server.threads,
                grace_period: raw.server.grace_period,
            },
            listeners,
            tls,
            api,
            geo,
            client_ip: ClientIp {
                trusted_proxies: raw.client_ip.trusted_proxies,
            },
            metrics,
            user_agent: UserAgent {
                regexes: raw.user_agent.regexes.as_deref().map(resolve),
            },
            limits: limits(file, &raw.limits)?,
            sites,
        })
    }
}

impl Config {
    /// Every file a snapshot built from this configuration reads.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.file.clone(), self.api.projects.clone()];
        files.extend(self.geo.databases.iter().cloned());
        if let Some(tls) = &self.tls {
            for pair in &tls.certificates {
                files.push(pair.cert.clone());
                files.push(pair.key.clone());
            }
        }
        files.extend(self.user_agent.regexes.iter().cloned());
        files.extend(self.sites.iter().filter_map(|s| s.upstream_ca.clone()));
        files
    }
}

impl Projects {
    /// Reads and validates `projects.toml`.
    pub fn load(file: &Path) -> Result<Projects, ConfigError> {
        let text = read(file)?;
        Projects::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Projects, ConfigError> {
        let raw: RawProjects = parse_toml(file, text)?;
        let mut list = Vec::with_capacity(raw.project.len());
        let mut by_id = HashMap::with_capacity(raw.project.len());
        for (i, p) in raw.project.into_iter().enumerate() {
            let id = ProjectId::parse(&p.id).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    format!("project[{i}].id"),
                    format!("{:?}: must match [A-Za-z0-9_-]{{1,64}}", p.id),
                )
            })?;
            if by_id.insert(p.id.clone(), i).is_some() {
                return Err(ConfigError::invalid(
                    file,
                    format!("project[{i}].id"),
                    format!("{:?}: duplicate project id", p.id),
                ));
            }
            if p.domains.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    format!("project[{i}].domains"),
                    "must list at least one domain",
                ));
            }
            let domains = p
                .domains
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    DomainPattern::parse(d).map_err(|e| {
                        ConfigError::invalid(file, format!("project[{i}].domains[{j}]"), e)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            list.push(Project {
                id,
                domains,
                requests_per_minute: p.requests_per_minute,
            });
        }
        Ok(Projects { list, by_id })
    }
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// Deserializes TOML, reporting the dotted key path of the first error and,
/// for syntax errors, the line and column.
fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
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
    ConfigError::invalid(
        file,
        position.unwrap_or_else(|| "(syntax)".to_owned()),
        e.message(),
    )
}

fn listeners(file: &Path, raw: &[RawListen]) -> Result<Vec<Listener>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "listen",
            "at least one [[listen]] is required",
        ));
    }
    let mut out: Vec<Listener> = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        let kind = match (l.tls, l.redirect_https_port) {
            (true, None) => ListenerKind::Tls,
            (true, Some(_)) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("listen[{i}].redirect_https_port"),
                    "only a plain (tls = false) listener can redirect",
                ))
            }
            (false, Some(0)) => {
                return Err(ConfigError::invalid(
                    file,
                    format!("listen[{i}].redirect_https_port"),
                    "port 0 is not a port",
                ))
            }
            (false, Some(port)) => ListenerKind::Redirect { https_port: port },
            // The API is HTTPS-only: a plain listener exists only to send
            // browsers to HTTPS (and to answer health checks).
            (false, None) => return Err(ConfigError::invalid(
                file,
                format!("listen[{i}]"),
                "a plain listener must set redirect_https_port (the API is served over TLS only)",
            )),
        };
        // Pingora runs its pre-TLS hook only on TLS endpoints
        // (pingora-core 0.9.1 src/listeners/mod.rs, `UninitializedStream::handshake`).
        if l.proxy_protocol && kind != ListenerKind::Tls {
            return Err(ConfigError::invalid(
                file,
                format!("listen[{i}].proxy_protocol"),
                "only a TLS (tls = true) listener can take the PROXY protocol",
            ));
        }
        if out.iter().any(|o| o.addr == l.addr) {
            return Err(ConfigError::invalid(
                file,
                format!("listen[{i}].addr"),
                format!("{} is listed twice", l.addr),
            ));
        }
        out.push(Listener {
            addr: l.addr,
            kind,
            proxy_protocol: l.proxy_protocol,
        });
    }
    Ok(out)
}

fn tls_settings(
    file: &Path,
    raw: RawTls,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Tls, ConfigError> {
    if raw.certificates.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "tls.certificates",
            "must list at least one { cert, key } pair",
        ));
    }
    let hsts = raw.hsts.trim();
    if !hsts.is_empty() && !is_header_safe(hsts) {
        return Err(ConfigError::invalid(
            file,
            "tls.hsts",
            "not a valid header value",
        ));
    }
    Ok(Tls {
        certificates: raw
            .certificates
            .iter()
            .map(|c| CertificateFiles {
                cert: resolve(&c.cert),
                key: resolve(&c.key),
            })
            .collect(),
        hsts: (!hsts.is_empty()).then(|| hsts.to_owned()),
    })
}

/// An API mount path (`api.path`, `site[i].api_path`): absolute, of
/// `[A-Za-z0-9/-_.~]`, not `/`; a trailing `/` is added.
fn limits(file: &Path, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let hour = Duration::from_secs(3600);
    for (key, value) in [
        ("limits.request_header_timeout", raw.request_header_timeout),
        ("limits.keepalive_timeout", raw.keepalive_timeout),
    ] {
        if value > hour {
            return Err(ConfigError::invalid(file, key, "longer than 1h"));
        }
    }
    Ok(Limits {
        requests_per_minute_per_ip: raw.requests_per_minute_per_ip,
        max_connections_per_ip: raw.max_connections_per_ip,
        request_header_timeout: raw.request_header_timeout,
        keepalive_timeout: raw.keepalive_timeout,
        keepalive_requests: raw.keepalive_requests,
    })
}

pub(crate) fn api_path_at(file: &Path, key: &str, path: &str) -> Result<String, ConfigError> {
    let valid_chars = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !path.starts_with('/') || !valid_chars || path.contains("//") || path.len() > 256 {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("{path:?}: must be an absolute path of [A-Za-z0-9/-_.~]"),
        ));
    }
    if path == "/" {
        return Err(ConfigError::invalid(
            file,
            key,
            "\"/\" would shadow /healthz and every site",
        ));
    }
    let mut p = path.to_owned();
    if !p.ends_with('/') {
        p.push('/');
    }
    Ok(p)
}

fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
threads = 2
grace_period = "5s"

[[listen]]
addr = "127.0.0.1:8443"
tls = true
[[listen]]
addr = "127.0.0.1:8080"
redirect_https_port = 8443

[tls]
certificates = [{ cert = "tls/a.crt", key = "tls/a.key" }]

[api]
path = "/api/"
projects = "projects.toml"

[geo]
databases = ["../geo-db/x.mmdb"]

[client_ip]
trusted_proxies = ["127.0.0.0/8", "::1/128"]

[metrics]
addr = "127.0.0.1:9180"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/visitord/visitord.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn good_config_parses_and_resolves_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.server.grace_period, Duration::from_secs(5));
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].kind, ListenerKind::Tls);
        assert_eq!(
            c.listeners[1].kind,
            ListenerKind::Redirect { https_port: 8443 }
        );
        let tls = c.tls.unwrap();
        assert_eq!(
            tls.certificates[0].cert,
            PathBuf::from("/etc/visitord/tls/a.crt")
        );
        assert_eq!(tls.hsts.as_deref(), Some("max-age=63072000"));
        assert_eq!(c.api.projects, PathBuf::from("/etc/visitord/projects.toml"));
        assert_eq!(
            c.geo.databases,
            vec![PathBuf::from("/etc/visitord/../geo-db/x.mmdb")]
        );
        assert_eq!(c.client_ip.trusted_proxies.len(), 2);
        assert_eq!(c.metrics.unwrap().addr.port(), 9180);
        assert_eq!(c.user_agent.regexes, None);
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let e = error(&GOOD.replace("threads = 2", "threads = 2\nthread = 3"));
        assert!(e.contains("visitord.toml: server"), "{e}");
        assert!(e.contains("unknown field `thread`"), "{e}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let e = error(&format!("{GOOD}\n[bogus]\nx = 1\n"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = error("[server\nthreads = 2");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn bad_listen_addr_names_key() {
        let e = error(&GOOD.replace("127.0.0.1:8080", "localhost:8080"));
        assert!(e.contains("listen[1].addr"), "{e}");
    }

    #[test]
    fn plain_listener_without_redirect_is_refused() {
        let e = error(&GOOD.replace("redirect_https_port = 8443", ""));
        assert!(e.contains("listen[1]: a plain listener"), "{e}");
    }

    #[test]
    fn tls_listener_cannot_redirect() {
        let e = error(&GOOD.replace("tls = true", "tls = true\nredirect_https_port = 1"));
        assert!(e.contains("listen[0].redirect_https_port"), "{e}");
    }

    #[test]
    fn duplicate_listener_is_refused() {
        let e = error(&GOOD.replace("127.0.0.1:8080", "127.0.0.1:8443"));
        assert!(
            e.contains("listen[1].addr: 127.0.0.1:8443 is listed twice"),
            "{e}"
        );
    }

    #[test]
    fn no_listener_is_refused() {
        let text = "[geo]\ndatabases = [\"x.mmdb\"]\n";
        assert!(error(text).contains("listen: at least one"));
    }

    #[test]
    fn tls_listener_needs_certificates() {
        let start = GOOD.find("[tls]").unwrap();
        let end = GOOD.find("[api]").unwrap();
        let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
        assert!(error(&text).contains("tls: missing"));
    }

    #[test]
    fn empty_certificate_list_is_refused() {
        let e = error(&GOOD.replace(
            r#"certificates = [{ cert = "tls/a.crt", key = "tls/a.key" }]"#,
            "certificates = []",
        ));
        assert!(e.contains("tls.certificates: must list"), "{e}");
    }

    #[test]
    fn certificate_without_key_is_refused() {
        let e = error(&GOOD.replace(r#", key = "tls/a.key""#, ""));
        assert!(e.contains("tls.certificates[0]"), "{e}");
        assert!(e.contains("missing field `key`"), "{e}");
    }

    #[test]
    fn empty_hsts_disables_it() {
        let c = parse(&GOOD.replace("[tls]\n", "[tls]\nhsts = \"\"\n")).unwrap();
        assert_eq!(c.tls.unwrap().hsts, None);
    }

    #[test]
    fn hsts_with_newline_is_refused() {
        let e = error(&GOOD.replace("[tls]\n", "[tls]\nhsts = \"max-age=1\\nX: y\"\n"));
        assert!(e.contains("tls.hsts"), "{e}");
    }

    #[test]
    fn bad_grace_period_names_key() {
        let e = error(&GOOD.replace("\"5s\"", "\"soon\""));
        assert!(e.contains("server.grace_period"), "{e}");
    }

    #[test]
    fn zero_threads_is_refused() {
        let e = error(&GOOD.replace("threads = 2", "threads = 0"));
        assert!(e.contains("server.threads: 0 is out of range"), "{e}");
    }

    #[test]
    fn bad_cidr_names_key() {
        let e = error(&GOOD.replace("\"::1/128\"", "\"::1/129\""));
        assert!(e.contains("client_ip.trusted_proxies[1]"), "{e}");
    }

    #[test]
    fn no_database_is_refused() {
        let e = error(&GOOD.replace(r#"databases = ["../geo-db/x.mmdb"]"#, "databases = []"));
        assert!(e.contains("geo.databases: must list"), "{e}");
    }

    #[test]
    fn api_path_gets_trailing_slash_and_is_checked() {
        let c = parse(&GOOD.replace("path = \"/api/\"", "path = \"/v1/visitor\"")).unwrap();
        assert_eq!(c.api.path, "/v1/visitor/");
        let e = error(&GOOD.replace("path = \"/api/\"", "path = \"api\""));
        assert!(e.contains("api.path"), "{e}");
        let e = error(&GOOD.replace("path = \"/api/\"", "path = \"/\""));
        assert!(e.contains("api.path"), "{e}");
    }

    #[test]
    fn metrics_cannot_share_a_listener_address() {
        let e = error(&GOOD.replace("127.0.0.1:9180", "127.0.0.1:8443"));
        assert!(e.contains("metrics.addr"), "{e}");
    }

    #[test]
    fn proxy_protocol_is_for_tls_listeners() {
        let c = parse(&GOOD.replace("tls = true", "tls = true\nproxy_protocol = true")).unwrap();
        assert!(c.listeners[0].proxy_protocol);
        assert!(!c.listeners[1].proxy_protocol);
        let e = error(&GOOD.replace(
            "redirect_https_port = 8443",
            "redirect_https_port = 8443\nproxy_protocol = true",
        ));
        assert!(e.contains("listen[1].proxy_protocol: only a TLS"), "{e}");
    }

    #[test]
    fn sites_are_parsed_and_their_ca_is_watched() {
        let text = format!(
            "{GOOD}\n[[site]]\nhosts = [\"www.example.com\"]\nupstreams = [\"app.internal:443\"]\nupstream_tls = true\nupstream_ca = \"tls/app-ca.pem\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.sites.len(), 1);
        assert!(c
            .source_files()
            .contains(&PathBuf::from("/etc/visitord/tls/app-ca.pem")));
        let e = error(&format!("{text}bogus = 1\n"));
        assert!(e.contains("site[0]"), "{e}");
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = error(&text.replace("app.internal:443", "app.internal"));
        assert!(e.contains("site[0].upstreams[0]"), "{e}");
    }

    #[test]
    fn limits_have_defaults_and_can_be_set() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits.requests_per_minute_per_ip, 600);
        assert_eq!(c.limits.max_connections_per_ip, 128);
        assert_eq!(c.limits.request_header_timeout, Duration::from_secs(10));
        let c = parse(&format!(
            "{GOOD}\n[limits]\nrequests_per_minute_per_ip = 0\nrequest_header_timeout = \"2s\"\n"
        ))
        .unwrap();
        assert_eq!(c.limits.requests_per_minute_per_ip, 0);
        assert_eq!(c.limits.request_header_timeout, Duration::from_secs(2));
        let e = error(&format!("{GOOD}\n[limits]\nkeepalive_timeout = \"2h\"\n"));
        assert!(
            e.contains("limits.keepalive_timeout: longer than 1h"),
            "{e}"
        );
        let e = error(&format!(
            "{GOOD}\n[limits]\nrequests_per_minute_per_ip = -1\n"
        ));
        assert!(e.contains("limits.requests_per_minute_per_ip"), "{e}");
    }

    #[test]
    fn metrics_can_be_disabled() {
        let c = parse(&GOOD.replace("[metrics]\n", "[metrics]\nenabled = false\n")).unwrap();
        assert_eq!(c.metrics, None);
    }

    fn projects(text: &str) -> Result<Projects, ConfigError> {
        Projects::parse(Path::new("projects.toml"), text)
    }

    #[test]
    fn projects_parse() {
        let p = projects(
            r#"
[[project]]
id = "demo"
domains = ["localhost", "example.com", "*.example.com"]
[[project]]
id = "shop_2-x"
domains = ["shop.example.org"]
"#,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("demo").unwrap().domains.len(), 3);
        assert!(p.get("shop_2-x").is_some());
        assert!(p.get("Demo").is_none());
    }

    #[test]
    fn bad_project_id_is_refused() {
        for id in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            let e = projects(&format!(
                "[[project]]\nid = {id:?}\ndomains = [\"a.com\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("projects.toml: project[0].id:"), "{e}");
        }
    }

    #[test]
    fn duplicate_project_is_refused() {
        let e = projects(
            "[[project]]\nid = \"a\"\ndomains = [\"a.com\"]\n[[project]]\nid = \"a\"\ndomains = [\"b.com\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("project[1].id: \"a\": duplicate"), "{e}");
    }

    #[test]
    fn bad_domain_names_index() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = [\"a.com\", \"*.\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("projects.toml: project[0].domains[1]:"),
            "{e}"
        );
    }

    #[test]
    fn project_without_domains_is_refused() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("project[0].domains: must list"), "{e}");
    }

    #[test]
    fn unknown_project_key_is_refused() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = [\"a.com\"]\nsecret = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("project[0]"), "{e}");
        assert!(e.contains("unknown field `secret`"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/visitord.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/visitord.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn project_id_rule() {
        assert!(is_valid_project_id("demo"));
        assert!(is_valid_project_id("A-b_9"));
        assert!(is_valid_project_id(&"x".repeat(64)));
        assert!(!is_valid_project_id(&"x".repeat(65)));
        assert!(!is_valid_project_id(""));
        assert!(!is_valid_project_id("a.b"));
        assert!(!is_valid_project_id("a%20"));
    }
}
