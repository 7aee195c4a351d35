//! Configuration (docs/design.md §4): the typed, validated `Config` the rest of the
//! program runs on, made from the TOML surface in `raw`. `projects.toml` is
//! `projects`, `[[site]]` tables are `site`.
//!
//! Parse, don't validate: whatever `Config::load` returns is what runs. Every
//! error names the file, the key and the reason, e.g.
//! `projects.toml: project[2].domains[0]: "*.": empty domain after wildcard`.
//! Nothing here opens the files a configuration names; the snapshot does.

mod acme;
mod api_path;
mod projects;
mod raw;
mod signing;
mod site;
mod store_url;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;

pub use acme::{acme_name, Acme, Challenge, ExternalAccount};
pub use api_path::{ApiPath, JWKS_FILE};
pub use projects::{is_valid_project_id, Project, ProjectId, Projects, MAX_PROJECT_ID_LEN};
pub use raw::{ConfigError, UnknownCountry};
pub use signing::Signing;
pub use site::{CountryRule, SiteConfig, Timeouts, UpstreamAddr, VisitorHeader, VisitorHeaderSet};
pub use store_url::StoreUrl;

use crate::limits::ClientPrefixes;
use crate::net::client_ip::TrustedProxies;
use crate::net::host::{normalize, Unicode};
use crate::observe::metrics_access::{is_loopback, AllowList};
use raw::{parse_toml, read, RawConfig, RawGeo, RawLimits, RawListen, RawMetrics, RawTls};

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
    pub client_ip: ClientIpConfig,
    pub metrics: Option<Metrics>,
    pub user_agent: UserAgent,
    pub limits: Limits,
    /// `[[site]]` tables, in file order; names not resolved yet (see
    /// `sites::Sites::build`).
    pub sites: Vec<SiteConfig>,
    /// `[acme]`: automatic certificates; `None` when not configured.
    pub acme: Option<Acme>,
    /// `[signing]`: signed visitor facts; `None` when not configured.
    pub signing: Option<Signing>,
}

/// `[limits]`: abuse limits (0 disables a count or a timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// API requests per minute from one client address.
    pub requests_per_minute_per_ip: u32,
    /// Concurrent connections from one peer address (trusted proxies are
    /// exempt).
    pub max_connections_per_ip: u32,
    /// Time allowed for a whole HTTP/1 request head, from its first byte.
    pub request_header_timeout: Duration,
    /// Longest pause in an HTTP/1 request body sent to a site.
    pub request_body_timeout: Duration,
    /// How long an idle kept-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Requests served on one HTTP/1 connection before it is closed.
    pub keepalive_requests: u32,
    /// Open connections in all, counted from accept (before TLS); `None`:
    /// sized from the open-file limit at start (`limits::max_connections_for`).
    pub max_connections: Option<u32>,
    /// Time allowed from accept to a finished TLS handshake (the PROXY
    /// protocol header included).
    pub tls_handshake_timeout: Duration,
    /// Which addresses count as one client for the per-client limits.
    pub client_prefixes: ClientPrefixes,
    /// Longest HTTP/1 request head (request line and headers), in bytes.
    pub max_request_head: usize,
    /// How long an answer may wait to be written to a client that does not
    /// take it (an HTTP/2 flow-control window left at zero, a full socket)
    /// before its stream or connection is reset; `None`: no limit.
    pub send_timeout: Option<Duration>,
    /// Where a fleet adds up its project counts; `None`: per node.
    pub shared_store: Option<SharedStore>,
}

/// `[limits] shared_store*`: the Redis or Valkey server of a fleet
/// (docs/fleet.md). The files are read by the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedStore {
    pub url: StoreUrl,
    /// A file holding the password (`AUTH`), never the URL.
    pub password_file: Option<PathBuf>,
    /// PEM certificates to verify a TLS store by, instead of the system's.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub grace_period: Duration,
    /// The Unix socket over which `run --upgrade` takes the listening
    /// sockets of the instance running on this configuration; absolute.
    pub upgrade_socket: PathBuf,
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
    pub hsts: Option<HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub path: ApiPath,
    pub projects: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Geo {
    pub databases: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientIpConfig {
    pub trusted_proxies: TrustedProxies,
}

/// `[metrics]`: the listener of `/metrics`, the dashboard and
/// `/status.json`, and who may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub addr: SocketAddr,
    /// Peers allowed to connect; empty: any (with a token, or on loopback).
    pub allow: AllowList,
    /// A file holding the bearer token every request must present; read
    /// by the snapshot, so a new token takes effect on reload.
    pub token_file: Option<PathBuf>,
    /// Host names (normalised) answered without a token besides loopback
    /// names and addresses and the listener's own address; any other
    /// `Host` is refused unless a token is configured (DNS rebinding).
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserAgent {
    /// A uap-core `regexes.yaml`; `None` uses the copy built into the binary.
    pub regexes: Option<PathBuf>,
}

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

        let server = server(file, raw.server)?;
        let listeners = listeners(file, &raw.listen)?;
        let tls = tls(file, raw.tls, &listeners, &resolve, raw.acme.is_some())?;
        let api = Api {
            path: ApiPath::parse(&raw.api.path)
                .map_err(|reason| ConfigError::invalid(file, "api.path", reason))?,
            projects: resolve(&raw.api.projects),
        };
        let geo = geo(file, &raw.geo, &resolve)?;
        let sites = site::parse_sites(file, raw.site, &resolve)?;
        let acme = match raw.acme {
            Some(a) => Some(acme::parse_acme(file, a, &resolve, &listeners, &sites)?),
            None => None,
        };
        let metrics = match raw.metrics.enabled {
            true => Some(metrics(file, raw.metrics, &resolve, &listeners)?),
            false => None,
        };

        Ok(Config {
            file: file.to_path_buf(),
            server,
            listeners,
            tls,
            api,
            geo,
            client_ip: ClientIpConfig {
                trusted_proxies: TrustedProxies::new(raw.client_ip.trusted_proxies),
            },
            metrics,
            user_agent: UserAgent {
                regexes: raw.user_agent.regexes.as_deref().map(resolve),
            },
            limits: limits(file, &raw.limits, &resolve)?,
            sites,
            acme,
            signing: signing::parse_signing(file, raw.signing, &resolve)?,
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
        if let Some(store) = &self.limits.shared_store {
            files.extend(store.password_file.iter().cloned());
            files.extend(store.ca.iter().cloned());
        }
        files.extend(self.metrics.iter().filter_map(|m| m.token_file.clone()));
        files.extend(self.signing.iter().flat_map(|s| s.keys.iter().cloned()));
        files
    }
}

/// `[tls]`, required when a listener terminates TLS unless `[acme]` can
/// supply every certificate.
fn tls(
    file: &Path,
    raw: Option<RawTls>,
    listeners: &[Listener],
    resolve: &dyn Fn(&Path) -> PathBuf,
    has_acme: bool,
) -> Result<Option<Tls>, ConfigError> {
    let needs_tls = listeners.iter().any(|l| l.kind == ListenerKind::Tls);
    match (raw, needs_tls) {
        (Some(tls), _) => Ok(Some(tls_settings(file, tls, resolve, has_acme)?)),
        // Every certificate may come from ACME; HSTS keeps its default.
        (None, true) if has_acme => Ok(Some(Tls {
            certificates: Vec::new(),
            hsts: Some(HeaderValue::from_static(raw::DEFAULT_HSTS)),
        })),
        (None, true) => Err(ConfigError::invalid(
            file,
            "tls",
            "missing: a listener has `tls = true` but no [tls] certificates (or [acme]) are configured",
        )),
        (None, false) => Ok(None),
    }
}

fn geo(file: &Path, raw: &RawGeo, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<Geo, ConfigError> {
    if raw.databases.is_empty() {
        return Err(ConfigError::invalid(
            file,
            "geo.databases",
            "must list at least one database",
        ));
    }
    Ok(Geo {
        databases: raw.databases.iter().map(|p| resolve(p)).collect(),
    })
}

/// `[metrics]`: off loopback, the listener needs an allow list or a token
/// (or both), so that only Prometheus and the operator can read it.
fn metrics(
    file: &Path,
    raw: RawMetrics,
    resolve: &dyn Fn(&Path) -> PathBuf,
    listeners: &[Listener],
) -> Result<Metrics, ConfigError> {
    let token_file = raw
        .token_file
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| resolve(&p));
    if raw.allow.is_empty() && token_file.is_none() && !is_loopback(raw.addr.ip()) {
        return Err(ConfigError::invalid(
            file,
            "metrics.addr",
            format!(
                "{} is not a loopback address: set metrics.allow (the networks \
                 Prometheus scrapes from) or metrics.token_file (a bearer token), \
                 or both, so that only they can read metrics and the dashboard",
                raw.addr
            ),
        ));
    }
    if let Some(l) = listeners.iter().find(|l| l.addr == raw.addr) {
        return Err(ConfigError::invalid(
            file,
            "metrics.addr",
            format!("{} is also a [[listen]] address", l.addr),
        ));
    }
    let hosts = raw
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            normalize(h, Unicode::ToPunycode)
                .map(|host| host.as_str().to_owned())
                .map_err(|e| ConfigError::invalid(file, format!("metrics.hosts[{i}]"), e))
        })
        .collect::<Result<_, _>>()?;
    Ok(Metrics {
        addr: raw.addr,
        allow: AllowList::new(raw.allow),
        token_file,
        hosts,
    })
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
    has_acme: bool,
) -> Result<Tls, ConfigError> {
    if raw.certificates.is_empty() && !has_acme {
        return Err(ConfigError::invalid(
            file,
            "tls.certificates",
            "must list at least one { cert, key } pair (or configure [acme])",
        ));
    }
    let hsts = raw.hsts.trim();
    let hsts = match hsts {
        "" => None,
        value => Some(
            HeaderValue::from_str(value)
                .map_err(|_| ConfigError::invalid(file, "tls.hsts", "not a valid header value"))?,
        ),
    };
    Ok(Tls {
        certificates: raw
            .certificates
            .iter()
            .map(|c| CertificateFiles {
                cert: resolve(&c.cert),
                key: resolve(&c.key),
            })
            .collect(),
        hsts,
    })
}

fn limits(
    file: &Path,
    raw: &RawLimits,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Limits, ConfigError> {
    if let Some((key, reason)) = limits_problem(raw) {
        return Err(ConfigError::invalid(file, key, reason));
    }
    Ok(Limits {
        requests_per_minute_per_ip: raw.requests_per_minute_per_ip,
        max_connections_per_ip: raw.max_connections_per_ip,
        request_header_timeout: raw.request_header_timeout,
        request_body_timeout: raw.request_body_timeout,
        keepalive_timeout: raw.keepalive_timeout,
        keepalive_requests: raw.keepalive_requests,
        max_connections: raw.max_connections,
        tls_handshake_timeout: raw.tls_handshake_timeout,
        client_prefixes: ClientPrefixes {
            v4: raw.ipv4_prefix,
            v6: raw.ipv6_prefix,
        },
        max_request_head: raw.max_request_head as usize,
        send_timeout: Some(raw.send_timeout).filter(|d| !d.is_zero()),
        shared_store: shared_store(file, raw, resolve)?,
    })
}

/// The first `[limits]` value out of range, as its key and the reason: one
/// row per rule, checked in this order.
fn limits_problem(raw: &RawLimits) -> Option<(&'static str, &'static str)> {
    let hour = Duration::from_secs(3600);
    let handshake = raw.tls_handshake_timeout;
    let rules = [
        (
            "limits.request_header_timeout",
            raw.request_header_timeout > hour,
            "longer than 1h",
        ),
        (
            "limits.keepalive_timeout",
            raw.keepalive_timeout > hour,
            "longer than 1h",
        ),
        (
            "limits.send_timeout",
            raw.send_timeout > hour,
            "longer than 1h",
        ),
        (
            "limits.request_body_timeout",
            raw.request_body_timeout > hour,
            "longer than 1h",
        ),
        (
            "limits.tls_handshake_timeout",
            handshake.is_zero() || handshake > Duration::from_secs(60),
            "must be more than 0s and at most 60s",
        ),
        (
            "limits.ipv4_prefix",
            raw.ipv4_prefix > 32,
            "must be 0 to 32",
        ),
        (
            "limits.ipv6_prefix",
            raw.ipv6_prefix > 128,
            "must be 0 to 128",
        ),
        (
            "limits.max_connections",
            raw.max_connections == Some(0),
            "0 would refuse every connection (leave it out for the default)",
        ),
        // Smaller than a request line with a few headers is a typo; Pingora
        // reads at most 1 MiB anyway.
        (
            "limits.max_request_head",
            !(1024..=1024 * 1024).contains(&raw.max_request_head),
            "must be 1024 to 1048576 bytes",
        ),
    ];
    rules
        .into_iter()
        .find(|&(_, broken, _)| broken)
        .map(|(key, _, reason)| (key, reason))
}

fn shared_store(
    file: &Path,
    raw: &RawLimits,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<SharedStore>, ConfigError> {
    if raw.shared_store.is_empty() {
        for (key, set) in [
            (
                "limits.shared_store_password_file",
                raw.shared_store_password_file.is_some(),
            ),
            ("limits.shared_store_ca", raw.shared_store_ca.is_some()),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    file,
                    key,
                    "set without limits.shared_store",
                ));
            }
        }
        return Ok(None);
    }
    let url = StoreUrl::parse(&raw.shared_store)
        .map_err(|reason| ConfigError::invalid(file, "limits.shared_store", reason))?;
    if raw.shared_store_ca.is_some() && !url.is_tls() {
        return Err(ConfigError::invalid(
            file,
            "limits.shared_store_ca",
            "only a TLS store (rediss://, valkeys://) is verified by a CA",
        ));
    }
    Ok(Some(SharedStore {
        url,
        password_file: raw.shared_store_password_file.as_deref().map(resolve),
        ca: raw.shared_store_ca.as_deref().map(resolve),
    }))
}

/// `[server]`.
fn server(file: &Path, raw: raw::RawServer) -> Result<Server, ConfigError> {
    if raw.threads == 0 || raw.threads > 1024 {
        return Err(ConfigError::invalid(
            file,
            "server.threads",
            format!("{} is out of range 1..=1024", raw.threads),
        ));
    }
    if raw.grace_period > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            file,
            "server.grace_period",
            "longer than 1h",
        ));
    }
    let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY");
    Ok(Server {
        threads: raw.threads,
        grace_period: raw.grace_period,
        upgrade_socket: upgrade_socket(file, raw.upgrade_socket.as_deref(), runtime_dir)?,
    })
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes
/// on Linux, with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `server.upgrade_socket`: a given path resolves from the config's folder.
/// Unset: `upgrade.sock` in systemd's runtime directory
/// (`RuntimeDirectory=`, passed as `$RUNTIME_DIRECTORY`), else beside the
/// config file, so instances on different configurations (tests in
/// temporary folders) never meet. Made absolute here, because the running
/// instance recognises the new one by the exact path it bound.
fn upgrade_socket(
    file: &Path,
    given: Option<&Path>,
    runtime_dir: Option<std::ffi::OsString>,
) -> Result<PathBuf, ConfigError> {
    let key = "server.upgrade_socket";
    let base = file.parent().unwrap_or_else(|| Path::new(""));
    let path = match (given, runtime_dir) {
        (Some(p), _) => base.join(p),
        (None, Some(dirs)) => {
            // Several directories are separated by colons; the first is ours.
            let dirs = dirs.to_string_lossy().into_owned();
            let first = dirs.split(':').next().unwrap_or_default().to_owned();
            PathBuf::from(first).join("upgrade.sock")
        }
        (None, None) => base.join("upgrade.sock"),
    };
    let path = std::path::absolute(&path)
        .map_err(|e| ConfigError::invalid(file, key, format!("{}: {e}", path.display())))?;
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(ConfigError::invalid(
            file,
            key,
            format!(
                "{}: {length} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// The `[[site]]`s of a minimal configuration with these tables (the
/// text of each, without its `[[site]]` line), as other modules' tests
/// build them. Paths resolve from `/etc/visitord`.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
pub(crate) fn test_sites(tables: &[&str]) -> Vec<SiteConfig> {
    let mut text = String::from(
        "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = true\n\
         [tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\" }]\n\
         [geo]\ndatabases = [\"x.mmdb\"]\n",
    );
    for table in tables {
        text.push_str("[[site]]\n");
        text.push_str(table);
        text.push('\n');
    }
    Config::parse(Path::new("/etc/visitord/visitord.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .sites
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
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
        assert_eq!(tls.hsts, Some(HeaderValue::from_static("max-age=63072000")));
        assert_eq!(c.api.projects, PathBuf::from("/etc/visitord/projects.toml"));
        assert_eq!(
            c.geo.databases,
            vec![PathBuf::from("/etc/visitord/../geo-db/x.mmdb")]
        );
        assert_eq!(
            c.client_ip.trusted_proxies,
            TrustedProxies::new(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
        );
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
    fn upgrade_socket_defaults_and_resolves() {
        let file = Path::new("/etc/visitord/visitord.toml");
        let beside = upgrade_socket(file, None, None).unwrap();
        assert_eq!(beside, Path::new("/etc/visitord/upgrade.sock"));
        let runtime = upgrade_socket(file, None, Some("/run/visitord:/run/other".into())).unwrap();
        assert_eq!(runtime, Path::new("/run/visitord/upgrade.sock"));
        let given = upgrade_socket(file, Some(Path::new("x/u.sock")), Some("/run/v".into()));
        assert_eq!(given.unwrap(), Path::new("/etc/visitord/x/u.sock"));
        // A relative config file still gives an absolute socket path.
        let relative = upgrade_socket(Path::new("conf/visitord.toml"), None, None).unwrap();
        assert!(relative.is_absolute(), "{}", relative.display());
        assert!(relative.ends_with("conf/upgrade.sock"));
    }

    #[test]
    fn an_upgrade_socket_path_too_long_names_key() {
        let long = format!("/{}/u.sock", "d".repeat(120));
        let e = error(&GOOD.replace(
            "grace_period = \"5s\"",
            &format!("grace_period = \"5s\"\nupgrade_socket = {long:?}"),
        ));
        assert!(e.contains("server.upgrade_socket"), "{e}");
        assert!(e.contains("at most 107"), "{e}");
    }

    #[test]
    fn zero_threads_is_refused() {
        let e = error(&GOOD.replace("threads = 2", "threads = 0"));
        assert!(e.contains("server.threads: 0 is out of range"), "{e}");
    }

    #[test]
    fn a_bare_address_is_a_network_of_itself() {
        let c = parse(&GOOD.replace("\"::1/128\"", "\"::1\", \"192.168.1.1\"")).unwrap();
        let t = &c.client_ip.trusted_proxies;
        assert!(t.contains("192.168.1.1".parse().unwrap()));
        assert!(!t.contains("192.168.1.2".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("::2".parse().unwrap()));
    }

    #[test]
    fn metrics_allow_takes_a_bare_address_too() {
        let c = parse(&format!("{GOOD}allow = [\"10.0.0.1\"]\n")).unwrap();
        let m = c.metrics.unwrap();
        assert!(m.allow.contains("10.0.0.1".parse().unwrap()));
        assert!(!m.allow.contains("10.0.0.2".parse().unwrap()));
        let e = error(&format!("{GOOD}allow = [\"10.0.0.0/33\"]\n"));
        assert!(
            e.contains("metrics.allow[0]: \"10.0.0.0/33\": prefix length"),
            "{e}"
        );
    }

    #[test]
    fn bad_networks_say_which_half_is_wrong() {
        for (value, reason) in [
            (
                "10.0.0.0/33",
                "prefix length \"33\" is not a number from 0 to 32",
            ),
            (
                "::/129",
                "prefix length \"129\" is not a number from 0 to 128",
            ),
            (
                "10.0.0.0/",
                "prefix length \"\" is not a number from 0 to 32",
            ),
            ("10.0.0/8", "\"10.0.0\" is not an IP address"),
            ("example.com", "not an IP address or network"),
        ] {
            let e = error(&GOOD.replace("\"::1/128\"", &format!("{value:?}")));
            assert!(
                e.contains(&format!(
                    "client_ip.trusted_proxies[1]: {value:?}: {reason}"
                )),
                "{value}: {e}"
            );
        }
    }

    /// `deny_unknown_fields` on every table, not only the top level.
    #[test]
    fn an_unknown_key_in_any_table_is_named() {
        let site = "[[site]]\nhosts = [\"a.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\n";
        let acme = "[acme]\nemail = \"a@example.com\"\ndomains = [\"a.example.com\"]\n";
        let with_tables = format!("{GOOD}[user_agent]\n[limits]\n{site}{acme}");
        for (table, header) in [
            ("server", "[server]\n"),
            ("listen[0]", "[[listen]]\n"),
            ("tls", "[tls]\n"),
            ("api", "[api]\n"),
            ("geo", "[geo]\n"),
            ("client_ip", "[client_ip]\n"),
            ("metrics", "[metrics]\n"),
            ("user_agent", "[user_agent]\n"),
            ("limits", "[limits]\n"),
            ("site[0]", "[[site]]\n"),
            ("acme", "[acme]\n"),
        ] {
            let text = with_tables.replacen(header, &format!("{header}bogus = 1\n"), 1);
            let e = error(&text);
            assert!(
                e.contains(&format!("{table}.bogus: unknown field `bogus`")),
                "{table}: {e}"
            );
        }
        let e = error(&GOOD.replace("key = \"tls/a.key\" }", "key = \"tls/a.key\", bogus = 1 }"));
        assert!(
            e.contains("tls.certificates[0].bogus: unknown field"),
            "{e}"
        );
    }

    /// docs/hardening.md's table: which keys take `0` (or `"0s"`) and
    /// what each range is.
    #[test]
    fn limits_take_zero_and_ranges_as_documented() {
        let limits = |body: &str| parse(&format!("{GOOD}\n[limits]\n{body}\n"));
        for zero in [
            "requests_per_minute_per_ip = 0",
            "max_connections_per_ip = 0",
            "keepalive_requests = 0",
            "keepalive_timeout = \"0s\"",
            "request_header_timeout = \"0s\"",
            "max_request_head = 1024",
            "max_request_head = 1048576",
            "max_connections = 1",
        ] {
            assert!(limits(zero).is_ok(), "{zero}");
        }
        for (refused, reason) in [
            (
                "max_connections = 0",
                "limits.max_connections: 0 would refuse",
            ),
            (
                "max_request_head = 0",
                "limits.max_request_head: must be 1024 to 1048576",
            ),
            (
                "max_request_head = 1023",
                "limits.max_request_head: must be 1024 to 1048576",
            ),
            (
                "max_request_head = 1048577",
                "limits.max_request_head: must be 1024 to 1048576",
            ),
            (
                "tls_handshake_timeout = \"0s\"",
                "limits.tls_handshake_timeout: must be more",
            ),
            ("ipv4_prefix = 33", "limits.ipv4_prefix: must be 0 to 32"),
        ] {
            let e = limits(refused).expect_err(refused).to_string();
            assert!(e.contains(reason), "{refused}: {e}");
        }
        let e = error(&GOOD.replace("threads = 2", "threads = 1025"));
        assert!(
            e.contains("server.threads: 1025 is out of range 1..=1024"),
            "{e}"
        );
        assert!(parse(&GOOD.replace("threads = 2", "threads = 1024")).is_ok());
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let e = error(&GOOD.replace("threads = 2", "threads = 2\nthreads = 3"));
        assert!(e.contains("duplicate key `threads`"), "{e}");
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
        assert_eq!(c.api.path.as_str(), "/v1/visitor/");
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
        assert_eq!(c.limits.request_body_timeout, Duration::from_secs(10));
        let e = error(&format!(
            "{GOOD}\n[limits]\nrequest_body_timeout = \"61m\"\n"
        ));
        assert!(
            e.contains("limits.request_body_timeout: longer than 1h"),
            "{e}"
        );
        let e = error(&format!(
            "{GOOD}\n[limits]\nrequests_per_minute_per_ip = -1\n"
        ));
        assert!(e.contains("limits.requests_per_minute_per_ip"), "{e}");
    }

    #[test]
    fn each_limits_rule_names_its_key() {
        let cases = [
            (
                "request_header_timeout = \"61m\"",
                "limits.request_header_timeout: longer than 1h",
            ),
            (
                "keepalive_timeout = \"2h\"",
                "limits.keepalive_timeout: longer than 1h",
            ),
            (
                "tls_handshake_timeout = \"0s\"",
                "limits.tls_handshake_timeout: must be more than 0s",
            ),
            (
                "tls_handshake_timeout = \"61s\"",
                "limits.tls_handshake_timeout: must be more than 0s",
            ),
            ("ipv4_prefix = 33", "limits.ipv4_prefix: must be 0 to 32"),
            ("ipv6_prefix = 129", "limits.ipv6_prefix: must be 0 to 128"),
            (
                "max_connections = 0",
                "limits.max_connections: 0 would refuse every connection",
            ),
            (
                "max_request_head = 1023",
                "limits.max_request_head: must be 1024 to 1048576 bytes",
            ),
            (
                "max_request_head = 1048577",
                "limits.max_request_head: must be 1024 to 1048576 bytes",
            ),
            // Two broken values: the first rule in the table is reported.
            (
                "ipv6_prefix = 129\nkeepalive_timeout = \"2h\"",
                "limits.keepalive_timeout:",
            ),
        ];
        for (line, want) in cases {
            let e = error(&format!("{GOOD}\n[limits]\n{line}\n"));
            assert!(e.contains(want), "{line}\n  got: {e}\n want: {want}");
        }
        let edges = "ipv4_prefix = 32\nipv6_prefix = 128\ntls_handshake_timeout = \"60s\"\n\
                     max_request_head = 1024\nkeepalive_timeout = \"1h\"";
        parse(&format!("{GOOD}\n[limits]\n{edges}\n")).unwrap();
    }

    #[test]
    fn a_shared_store_is_optional_and_checked() {
        assert_eq!(parse(GOOD).unwrap().limits.shared_store, None);
        let c = parse(&format!(
            "{GOOD}\n[limits]\nshared_store = \"rediss://store.internal:6380/0\"\n\
             shared_store_password_file = \"secrets/store\"\nshared_store_ca = \"tls/store-ca.pem\"\n"
        ))
        .unwrap();
        let store = c.limits.shared_store.clone().unwrap();
        assert_eq!(store.url.as_str(), "rediss://store.internal:6380/0");
        assert_eq!(
            store.password_file,
            Some(PathBuf::from("/etc/visitord/secrets/store"))
        );
        let files = c.source_files();
        assert!(files.contains(&PathBuf::from("/etc/visitord/secrets/store")));
        assert!(files.contains(&PathBuf::from("/etc/visitord/tls/store-ca.pem")));
        let e = error(&format!(
            "{GOOD}\n[limits]\nshared_store = \"redis://:hunter2@store:6379\"\n"
        ));
        assert!(
            e.contains("limits.shared_store: a password in the URL"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = error(&format!(
            "{GOOD}\n[limits]\nshared_store = \"redis://store:6379\"\nshared_store_ca = \"ca.pem\"\n"
        ));
        assert!(
            e.contains("limits.shared_store_ca: only a TLS store"),
            "{e}"
        );
        let e = error(&format!(
            "{GOOD}\n[limits]\nshared_store_password_file = \"secret\"\n"
        ));
        assert!(
            e.contains("limits.shared_store_password_file: set without"),
            "{e}"
        );
    }

    #[test]
    fn metrics_off_loopback_need_an_allow_list_or_a_token() {
        let text = |metrics: &str| GOOD.replace("addr = \"127.0.0.1:9180\"", metrics);
        let e = error(&text("addr = \"0.0.0.0:9180\""));
        assert!(
            e.contains("metrics.addr: 0.0.0.0:9180 is not a loopback address: set metrics.allow"),
            "{e}"
        );
        let e = error(&text("addr = \"[::]:9180\"\ntoken_file = \"\""));
        assert!(e.contains("metrics.addr"), "{e}");
        for loopback in ["127.0.0.2:9180", "[::1]:9180", "[::ffff:127.0.0.1]:9180"] {
            parse(&text(&format!("addr = \"{loopback}\""))).unwrap();
        }
        let c = parse(&text("addr = \"0.0.0.0:9180\"\nallow = [\"10.0.0.0/8\"]")).unwrap();
        let m = c.metrics.unwrap();
        assert!(m.allow.contains("10.9.9.9".parse().unwrap()));
        assert_eq!(m.token_file, None);
        let c = parse(&text(
            "addr = \"0.0.0.0:9180\"\ntoken_file = \"metrics.token\"",
        ))
        .unwrap();
        let token = PathBuf::from("/etc/visitord/metrics.token");
        assert_eq!(
            c.metrics.as_ref().unwrap().token_file.as_ref(),
            Some(&token)
        );
        assert!(c.source_files().contains(&token), "a new token reloads");
        let e = error(&text("addr = \"0.0.0.0:9180\"\nallow = [\"10.0.0.0/33\"]"));
        assert!(e.contains("metrics.allow"), "{e}");
    }

    #[test]
    fn metrics_hosts_are_normalised_names() {
        let text =
            |hosts: &str| GOOD.replace("[metrics]\n", &format!("[metrics]\nhosts = {hosts}\n"));
        let c = parse(&text(
            r#"["Metrics.Example.", "bücher.example", "10.0.0.5"]"#,
        ))
        .unwrap();
        assert_eq!(
            c.metrics.unwrap().hosts,
            ["metrics.example", "xn--bcher-kva.example", "10.0.0.5"]
        );
        let e = error(&text(r#"["ok.example", "a b"]"#));
        assert!(e.contains("metrics.hosts[1]"), "{e}");
        assert_eq!(
            parse(GOOD).unwrap().metrics.unwrap().hosts,
            Vec::<String>::new()
        );
    }

    #[test]
    fn send_timeout_has_a_default_and_zero_turns_it_off() {
        assert_eq!(
            parse(GOOD).unwrap().limits.send_timeout,
            Some(Duration::from_secs(20))
        );
        let c = parse(&format!("{GOOD}\n[limits]\nsend_timeout = \"0s\"\n")).unwrap();
        assert_eq!(c.limits.send_timeout, None);
        let e = error(&format!("{GOOD}\n[limits]\nsend_timeout = \"2h\"\n"));
        assert!(e.contains("limits.send_timeout: longer than 1h"), "{e}");
    }

    #[test]
    fn metrics_can_be_disabled() {
        let c = parse(&GOOD.replace("[metrics]\n", "[metrics]\nenabled = false\n")).unwrap();
        assert_eq!(c.metrics, None);
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
}
