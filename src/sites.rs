//! Sites visitord stands in front of (`[[site]]` in visitord.toml): their
//! configuration, the Host → site lookup, the choice of upstream and its
//! health, country rules, and the `X-Visitor-*` and forwarding headers the
//! upstream receives.
//!
//! Plain data and functions. The Pingora side lives in `proxy.rs` (the
//! request phases) and `upstream.rs` (peer templates, health checks).
//!
//! Lifecycle: `visitord.toml` is parsed into [`SiteConfig`]s (no I/O, so
//! `Config::parse` stays pure); [`Sites::build`] then resolves upstream
//! names and reads CA files when a snapshot is built, so a name that does
//! not resolve or a CA that does not parse refuses the snapshot like any
//! other bad input, and a reload re-resolves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::api::{self, Answer, VisitorData};
use crate::config::ConfigError;
use crate::origin::DomainPattern;

// ---------------------------------------------------------------------------
// Configuration.

/// One `[[site]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    hosts: Vec<String>,
    upstreams: Vec<String>,
    #[serde(default)]
    upstream_tls: bool,
    #[serde(default)]
    upstream_sni: Option<String>,
    #[serde(default)]
    upstream_ca: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    read_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    write_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_health_check_interval", with = "humantime_serde")]
    health_check_interval: Duration,
    #[serde(default)]
    api_path: Option<String>,
    #[serde(default)]
    allow_countries: Option<Vec<String>>,
    #[serde(default)]
    deny_countries: Option<Vec<String>>,
    #[serde(default)]
    unknown_country: UnknownCountry,
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

/// Longest timeout accepted; anything longer is a typo or a unit mix-up.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Health checks more often than this only load the upstream.
const MIN_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const MAX_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// What to do with a visitor whose country the databases do not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCountry {
    #[default]
    Allow,
    Deny,
}

/// `allow_countries` / `deny_countries` / `unknown_country` of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryRule {
    list: CountryList,
    unknown: UnknownCountry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CountryList {
    Everyone,
    /// Sorted ISO 3166-1 alpha-2 codes, upper case.
    Allow(Vec<&'static str>),
    Deny(Vec<&'static str>),
}

impl CountryRule {
    /// Admits everyone whose country is known, and unknown ones as `unknown` says.
    pub fn everyone(unknown: UnknownCountry) -> CountryRule {
        CountryRule {
            list: CountryList::Everyone,
            unknown,
        }
    }

    /// Whether a visitor from `country` (upper-case alpha-2 as
    /// `country::lookup` spells it, `""` when unknown) may enter.
    pub fn admits(&self, country: &str) -> bool {
        if country.is_empty() {
            return self.unknown == UnknownCountry::Allow;
        }
        match &self.list {
            CountryList::Everyone => true,
            CountryList::Allow(codes) => codes.binary_search(&country).is_ok(),
            CountryList::Deny(codes) => codes.binary_search(&country).is_err(),
        }
    }
}

/// An upstream as configured: `name:port`, `1.2.3.4:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// A lower-case DNS name, or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl UpstreamAddr {
    pub fn parse(s: &str) -> Result<UpstreamAddr, &'static str> {
        if s.contains("://") || s.contains(['/', '?', '#', '@']) {
            return Err("must be host:port, without scheme or path");
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or("an IPv6 address needs [brackets] and a port")?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "invalid IPv6 address")?;
            (ip, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or("missing :port")?;
            if host.contains(':') {
                return Err("an IPv6 address needs [brackets] and a port");
            }
            (host, port)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or("port must be 1-65535")?;
        let is_ip = host.parse::<IpAddr>().is_ok();
        if !is_ip && !is_dns_name(host) {
            return Err("invalid host name");
        }
        Ok(UpstreamAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The address when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1-63 bytes.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Upstream timeouts. Pingora's own defaults are "none"; each is set on
/// every peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Longest wait for the next bytes from the upstream (the response head,
    /// each body chunk, each WebSocket message).
    pub read: Duration,
    /// Longest wait for one write to the upstream to complete.
    pub write: Duration,
    /// How long an unused upstream connection stays in the pool.
    pub idle: Duration,
}

/// One `[[site]]`, validated; names are not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    pub hosts: Vec<DomainPattern>,
    pub upstreams: Vec<UpstreamAddr>,
    pub upstream_tls: bool,
    /// Set explicitly; otherwise each upstream's host name is its SNI.
    pub upstream_sni: Option<String>,
    /// Resolved from the config file's folder.
    pub upstream_ca: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub health_check_interval: Duration,
    /// Same-origin API mount: starts and ends with `/`.
    pub api_path: Option<String>,
    pub countries: CountryRule,
}

impl SiteConfig {
    /// The first host as written: names the site in logs.
    pub fn label(&self) -> String {
        self.hosts
            .first()
            .map_or_else(String::new, ToString::to_string)
    }

    /// Whether `path` is this site's same-origin API (`/x/` or `/x`).
    pub fn is_api_path(&self, path: &str) -> bool {
        self.api_path
            .as_deref()
            .is_some_and(|p| path == p || Some(path) == p.strip_suffix('/'))
    }
}

/// Validates every `[[site]]`: each on its own, then that no host is
/// claimed twice.
pub fn parse_sites(
    file: &Path,
    raw: Vec<RawSite>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<SiteConfig>, ConfigError> {
    let mut claimed: HashMap<DomainPattern, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let site = parse_site(file, i, r, resolve)?;
        for (j, host) in site.hosts.iter().enumerate() {
            if let Some(k) = claimed.insert(host.clone(), i) {
                let by = if k == i {
                    "listed twice".to_owned()
                } else {
                    format!("already claimed by site[{k}]")
                };
                return Err(ConfigError::invalid(
                    file,
                    format!("site[{i}].hosts[{j}]"),
                    format!("{:?}: {by}", host.to_string()),
                ));
            }
        }
        out.push(site);
    }
    Ok(out)
}

fn parse_site(
    file: &Path,
    i: usize,
    raw: RawSite,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<SiteConfig, ConfigError> {
    let invalid =
        |key: &str, reason: String| ConfigError::invalid(file, format!("site[{i}].{key}"), reason);

    if raw.hosts.is_empty() {
        return Err(invalid("hosts", "must list at least one host".into()));
    }
    let hosts = raw
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| {
            DomainPattern::parse(h).map_err(|e| invalid(&format!("hosts[{j}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    if raw.upstreams.is_empty() {
        return Err(invalid(
            "upstreams",
            "must list at least one host:port".into(),
        ));
    }
    let upstreams = raw
        .upstreams
        .iter()
        .enumerate()
        .map(|(j, u)| {
            UpstreamAddr::parse(u)
                .map_err(|e| invalid(&format!("upstreams[{j}]"), format!("{u:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    if let Some(sni) = &raw.upstream_sni {
        if !raw.upstream_tls {
            return Err(invalid(
                "upstream_sni",
                "only meaningful with upstream_tls = true".into(),
            ));
        }
        // rustls (through Pingora) turns certificate verification off for
        // an empty SNI; never let configuration produce one.
        if sni.is_empty() {
            return Err(invalid(
                "upstream_sni",
                "must not be empty (an empty SNI would turn certificate verification off)".into(),
            ));
        }
        if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
            return Err(invalid(
                "upstream_sni",
                format!("{sni:?}: not a DNS name or IP address"),
            ));
        }
    }
    if raw.upstream_ca.is_some() && !raw.upstream_tls {
        return Err(invalid(
            "upstream_ca",
            "only meaningful with upstream_tls = true".into(),
        ));
    }
    if raw.upstream_tls && raw.upstream_sni.is_none() {
        if let Some(j) = upstreams.iter().position(|u| u.ip().is_some()) {
            return Err(invalid(
                &format!("upstreams[{j}]"),
                format!(
                    "{:?}: an IP address with upstream_tls = true needs upstream_sni, the name its certificate is checked against",
                    raw.upstreams[j]
                ),
            ));
        }
    }

    let timeouts = Timeouts {
        connect: timeout(&invalid, "connect_timeout", raw.connect_timeout)?,
        read: timeout(&invalid, "read_timeout", raw.read_timeout)?,
        write: timeout(&invalid, "write_timeout", raw.write_timeout)?,
        idle: timeout(&invalid, "idle_timeout", raw.idle_timeout)?,
    };
    if !(MIN_HEALTH_CHECK_INTERVAL..=MAX_HEALTH_CHECK_INTERVAL).contains(&raw.health_check_interval)
    {
        return Err(invalid(
            "health_check_interval",
            "must be between 1s and 1h".into(),
        ));
    }

    let api_path = match &raw.api_path {
        Some(p) => Some(crate::config::api_path_at(
            file,
            &format!("site[{i}].api_path"),
            p,
        )?),
        None => None,
    };

    let list = match (raw.allow_countries, raw.deny_countries) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "deny_countries",
                "allow_countries and deny_countries cannot both be set".into(),
            ))
        }
        (Some(codes), None) => {
            CountryList::Allow(country_codes(&invalid, "allow_countries", &codes)?)
        }
        (None, Some(codes)) => {
            CountryList::Deny(country_codes(&invalid, "deny_countries", &codes)?)
        }
        (None, None) => CountryList::Everyone,
    };

    Ok(SiteConfig {
        hosts,
        upstreams,
        upstream_tls: raw.upstream_tls,
        upstream_sni: raw.upstream_sni,
        upstream_ca: raw.upstream_ca.as_deref().map(resolve),
        timeouts,
        health_check_interval: raw.health_check_interval,
        api_path,
        countries: CountryRule {
            list,
            unknown: raw.unknown_country,
        },
    })
}

fn timeout(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    d: Duration,
) -> Result<Duration, ConfigError> {
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(invalid(key, "must be more than 0s and at most 24h".into()));
    }
    Ok(d)
}

fn country_codes(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    codes: &[String],
) -> Result<Vec<&'static str>, ConfigError> {
    if codes.is_empty() {
        return Err(invalid(key, "must list at least one country code".into()));
    }
    let mut out = codes
        .iter()
        .enumerate()
        .map(|(k, c)| {
            crate::country::lookup(c).map(|f| f.code).ok_or_else(|| {
                invalid(
                    &format!("{key}[{k}]"),
                    format!("{c:?}: not an ISO 3166-1 alpha-2 country code"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

// ---------------------------------------------------------------------------
// The sites of one snapshot.

/// Whether an upstream address takes traffic. Shared, by address, between
/// the sites that use it and with the next snapshot, so a reload does not
/// send traffic back to an upstream known to be down.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
}

impl Health {
    /// Unchecked upstreams are presumed up, as in Pingora's load balancer.
    pub fn new() -> Health {
        Health {
            up: AtomicBool::new(true),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a check's result; true when that changed the state.
    pub fn set(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// One resolved upstream address of a site.
#[derive(Debug)]
pub struct Upstream {
    /// As configured (`app.internal:8080`), for logs.
    pub spec: String,
    pub addr: SocketAddr,
    /// Never empty: `upstream_sni`, else the configured host.
    pub sni: String,
    pub health: Arc<Health>,
}

/// A site ready to serve: its configuration and resolved upstreams.
#[derive(Debug)]
pub struct Site {
    pub config: SiteConfig,
    pub label: String,
    /// At least one.
    pub upstreams: Vec<Upstream>,
    /// DER certificates of `upstream_ca`, checked to parse.
    pub ca: Option<Arc<[CertificateDer<'static>]>>,
    next: AtomicUsize,
}

impl Site {
    /// Round robin over the healthy upstreams. When none is healthy, plain
    /// round robin: a stale "down" must not turn into a certain 502.
    pub fn pick(&self) -> Option<usize> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.upstreams[i].health.is_up())
            .or(Some(start % n))
    }

    /// Whether an upstream other than `except` is healthy.
    pub fn another_is_up(&self, except: usize) -> bool {
        self.upstreams
            .iter()
            .enumerate()
            .any(|(i, u)| i != except && u.health.is_up())
    }
}

/// An address to probe, with the strictest settings of the sites using it.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub addr: SocketAddr,
    pub health: Arc<Health>,
    pub interval: Duration,
    pub timeout: Duration,
    /// `site www.example.com: upstream app:8080 (10.0.0.5:8080)`, for logs.
    pub label: String,
}

/// Every site of a snapshot, with the host lookup.
#[derive(Debug, Default)]
pub struct Sites {
    list: Vec<Site>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
    targets: Vec<HealthTarget>,
}

impl Sites {
    /// Resolves upstream names and reads CA files. Health is carried over
    /// from `previous` for addresses it already knew.
    pub fn build(
        file: &Path,
        configs: &[SiteConfig],
        previous: Option<&Sites>,
    ) -> Result<Sites, ConfigError> {
        let mut health: HashMap<SocketAddr, Arc<Health>> = previous
            .map(|p| {
                p.targets
                    .iter()
                    .map(|t| (t.addr, Arc::clone(&t.health)))
                    .collect()
            })
            .unwrap_or_default();
        let mut sites = Sites::default();
        let mut target_index: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            let label = config.label();
            let ca = match &config.upstream_ca {
                Some(path) => Some(read_ca(path).map_err(|e| {
                    ConfigError::invalid(
                        file,
                        format!("site[{i}].upstream_ca"),
                        format!("{}: {e}", path.display()),
                    )
                })?),
                None => None,
            };
            let mut upstreams: Vec<Upstream> = Vec::new();
            for (j, u) in config.upstreams.iter().enumerate() {
                let addrs = resolve_upstream(u).map_err(|e| {
                    ConfigError::invalid(
                        file,
                        format!("site[{i}].upstreams[{j}]"),
                        format!("{:?}: {e}", u.to_string()),
                    )
                })?;
                for addr in addrs {
                    if upstreams.iter().any(|x| x.addr == addr) {
                        continue;
                    }
                    let h = Arc::clone(health.entry(addr).or_default());
                    let spec = u.to_string();
                    let target_label = format!("site {label}: upstream {spec} ({addr})");
                    match target_index.get(&addr) {
                        Some(&t) => {
                            let t = &mut sites.targets[t];
                            t.interval = t.interval.min(config.health_check_interval);
                            t.timeout = t.timeout.min(config.timeouts.connect);
                        }
                        None => {
                            target_index.insert(addr, sites.targets.len());
                            sites.targets.push(HealthTarget {
                                addr,
                                health: Arc::clone(&h),
                                interval: config.health_check_interval,
                                timeout: config.timeouts.connect,
                                label: target_label,
                            });
                        }
                    }
                    upstreams.push(Upstream {
                        sni: config
                            .upstream_sni
                            .clone()
                            .unwrap_or_else(|| u.host.clone()),
                        spec,
                        addr,
                        health: h,
                    });
                }
            }
            for host in &config.hosts {
                match host {
                    DomainPattern::Exact(h) => sites.exact.insert(h.clone(), i),
                    DomainPattern::Wildcard(d) => sites.wildcard.insert(d.clone(), i),
                };
            }
            sites.list.push(Site {
                config: config.clone(),
                label,
                upstreams,
                ca,
                next: AtomicUsize::new(0),
            });
        }
        Ok(sites)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Site> {
        self.list.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.list.iter()
    }

    /// Every distinct upstream address, for the health checker.
    pub fn health_targets(&self) -> &[HealthTarget] {
        &self.targets
    }

    /// The site for a request's `Host` (or `:authority`): exact names
    /// first, then the longest matching wildcard. Case, a port and a
    /// trailing dot are ignored. No allocation.
    pub fn find(&self, host: &[u8]) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        let mut buf = [0u8; 256];
        let name = request_host(host, &mut buf)?;
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(&i) = self.wildcard.get(rest) {
                return Some(i);
            }
        }
        None
    }
}

/// The host of a `Host` value, lower-cased into `buf`, without port or
/// trailing dot. `None` for anything that is not a plain host.
fn request_host<'b>(raw: &[u8], buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let host = if raw.first() == Some(&b'[') {
        let close = raw.iter().position(|&b| b == b']')?;
        let rest = &raw[close + 1..];
        if !(rest.is_empty() || is_port(rest.strip_prefix(b":")?)) {
            return None;
        }
        &raw[..=close]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) if is_port(&raw[colon + 1..]) => &raw[..colon],
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() || !host.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

fn is_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

fn resolve_upstream(u: &UpstreamAddr) -> Result<Vec<SocketAddr>, String> {
    if let Some(ip) = u.ip() {
        return Ok(vec![SocketAddr::new(ip, u.port)]);
    }
    let addrs: Vec<SocketAddr> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect();
    if addrs.is_empty() {
        return Err("cannot resolve: no addresses".into());
    }
    Ok(addrs)
}

/// The certificates of a PEM file, each checked to parse as X.509 and to
/// be usable as a trust anchor (Pingora's per-peer CA would panic or fail
/// on the first request otherwise).
fn read_ca(path: &Path) -> Result<Arc<[CertificateDer<'static>]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (k, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("certificate {k}: not X.509: {e}"))?;
        roots
            .add(c.clone())
            .map_err(|e| format!("certificate {k}: not usable as a CA: {e}"))?;
    }
    Ok(certs.into())
}

// ---------------------------------------------------------------------------
// Headers for the upstream.

/// Every header name visitord writes from the visitor facts, in this order.
pub static VISITOR_HEADERS: [HeaderName; 11] = [
    HeaderName::from_static("x-visitor-country"),
    HeaderName::from_static("x-visitor-region"),
    HeaderName::from_static("x-visitor-city"),
    HeaderName::from_static("x-visitor-lat-long"),
    HeaderName::from_static("x-visitor-timezone"),
    HeaderName::from_static("x-visitor-continent"),
    HeaderName::from_static("x-visitor-currencies"),
    HeaderName::from_static("x-visitor-languages"),
    HeaderName::from_static("x-visitor-browser"),
    HeaderName::from_static("x-visitor-os"),
    HeaderName::from_static("x-visitor-device"),
];

/// Headers a client sends under this prefix never reach the upstream.
pub const VISITOR_HEADER_PREFIX: &str = "x-visitor-";

/// The `X-Visitor-*` values for one visitor, in [`VISITOR_HEADERS`] order.
/// Every header is always present, empty when unknown, so an upstream can
/// tell "unknown" from "not behind visitord".
///
/// Encoding: text is UTF-8 with every byte other than `A-Z a-z 0-9 - . _ ~
/// /` written as `%XX` (upper-case hex), so `decodeURIComponent` and its
/// kin restore it (`São Paulo` → `S%C3%A3o%20Paulo`); lists are such items
/// joined by `,`; `Lat-Long` is `lat,long` with six decimals, as in the API.
pub fn visitor_headers(d: &VisitorData<'_>) -> [HeaderValue; 11] {
    [
        encoded(d.country_code),
        encoded(d.region),
        encoded(d.city),
        HeaderValue::from_str(&d.city_lat_long).unwrap_or_else(|_| empty()),
        encoded(d.timezone),
        encoded(d.continent_code),
        encoded_list(d.currencies.iter().copied()),
        encoded_list(d.languages.iter().map(String::as_str)),
        encoded(d.browser),
        encoded(d.os),
        encoded(d.device_family),
    ]
}

fn empty() -> HeaderValue {
    HeaderValue::from_static("")
}

fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

fn push_encoded(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if is_kept(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `s` percent-encoded as described on [`visitor_headers`].
pub fn encoded(s: &str) -> HeaderValue {
    if s.bytes().all(is_kept) {
        return HeaderValue::from_str(s).unwrap_or_else(|_| empty());
    }
    let mut out = String::with_capacity(s.len() * 3);
    push_encoded(&mut out, s);
    // Only `is_kept` bytes and `%XX` are written: always a valid value.
    HeaderValue::from_str(&out).unwrap_or_else(|_| empty())
}

fn encoded_list<'a>(items: impl Iterator<Item = &'a str>) -> HeaderValue {
    let mut out = String::new();
    for (k, item) in items.enumerate() {
        if k > 0 {
            out.push(',');
        }
        push_encoded(&mut out, item);
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| empty())
}

/// `X-Forwarded-For` for the upstream, as nginx's
/// `$proxy_add_x_forwarded_for` but believing only trusted peers: a
/// trusted peer's chain (`incoming`, every line) is kept and the peer
/// appended; an untrusted peer's chain is the client's own invention and is
/// dropped, leaving the peer, which is then the client. With the PROXY
/// protocol the peer is the address the balancer named.
pub fn forwarded_for<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    incoming: impl Iterator<Item = &'a [u8]>,
) -> HeaderValue {
    let peer = peer.to_canonical();
    let mut out: Vec<u8> = Vec::new();
    if is_trusted(trusted, peer) {
        for line in incoming {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer.to_string().as_bytes());
    HeaderValue::from_bytes(&out)
        .or_else(|_| HeaderValue::from_str(&peer.to_string()))
        .unwrap_or_else(|_| empty())
}

/// Whether forwarding headers from `peer` are believed (`client_ip.rs` rules).
pub fn is_trusted(trusted: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

// ---------------------------------------------------------------------------
// Pages visitors see instead of the site.

const REFUSED_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>403 Forbidden</title></head>\n<body><h1>403 Forbidden</h1><p>This site is not available in your country or region.</p></body></html>\n";
const BAD_GATEWAY_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1><p>The site cannot be reached right now. Please try again in a moment.</p></body></html>\n";
const GATEWAY_TIMEOUT_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>504 Gateway Timeout</title></head>\n<body><h1>504 Gateway Timeout</h1><p>The site took too long to answer. Please try again in a moment.</p></body></html>\n";
const ERROR_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head>\n<body><h1>Error</h1><p>The request could not be completed.</p></body></html>\n";

/// 403 for a visitor the site's country rule refuses.
pub fn refused_page() -> Answer {
    api::page(403, REFUSED_HTML)
}

/// The page for a request that failed on its way to or from the upstream.
pub fn error_page(status: u16) -> Answer {
    let body = match status {
        502 => BAD_GATEWAY_HTML,
        504 => GATEWAY_TIMEOUT_HTML,
        _ => ERROR_HTML,
    };
    api::page(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Agent;
    use crate::geo::Location;

    const FILE: &str = "/etc/visitord/visitord.toml";

    fn raw(text: &str) -> RawSite {
        toml::from_str(text).unwrap()
    }

    fn parse_one(text: &str) -> Result<SiteConfig, ConfigError> {
        parse_sites(Path::new(FILE), vec![raw(text)], &|p| {
            Path::new("/etc/visitord").join(p)
        })
        .map(|mut v| v.remove(0))
    }

    fn error(text: &str) -> String {
        parse_one(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = "hosts = [\"www.example.com\"]\nupstreams = [\"127.0.0.1:8080\"]\n";

    #[test]
    fn defaults() {
        let s = parse_one(MINIMAL).unwrap();
        assert_eq!(
            s.hosts,
            vec![DomainPattern::Exact("www.example.com".into())]
        );
        assert_eq!(
            s.upstreams,
            vec![UpstreamAddr {
                host: "127.0.0.1".into(),
                port: 8080
            }]
        );
        assert!(!s.upstream_tls);
        assert_eq!(s.upstream_sni, None);
        assert_eq!(s.upstream_ca, None);
        assert_eq!(
            s.timeouts,
            Timeouts {
                connect: Duration::from_secs(5),
                read: Duration::from_secs(60),
                write: Duration::from_secs(60),
                idle: Duration::from_secs(60),
            }
        );
        assert_eq!(s.health_check_interval, Duration::from_secs(5));
        assert_eq!(s.api_path, None);
        assert_eq!(s.countries, CountryRule::everyone(UnknownCountry::Allow));
        assert_eq!(s.label(), "www.example.com");
    }

    #[test]
    fn every_key() {
        let s = parse_one(
            r#"
hosts = ["Shop.Example.com.", "*.shop.example.com"]
upstreams = ["App.Internal:8443", "[::1]:9443"]
upstream_tls = true
upstream_sni = "app.internal"
upstream_ca = "ca.pem"
connect_timeout = "2s"
read_timeout = "5m"
write_timeout = "30s"
idle_timeout = "90s"
health_check_interval = "10s"
api_path = "/visitor-api"
allow_countries = ["gb", "DE", "GB"]
unknown_country = "deny"
"#,
        )
        .unwrap();
        assert_eq!(
            s.hosts,
            vec![
                DomainPattern::Exact("shop.example.com".into()),
                DomainPattern::Wildcard("shop.example.com".into())
            ]
        );
        assert_eq!(s.upstreams[0].host, "app.internal");
        assert_eq!(s.upstreams[1].to_string(), "[::1]:9443");
        assert_eq!(s.upstream_ca, Some(PathBuf::from("/etc/visitord/ca.pem")));
        assert_eq!(s.timeouts.read, Duration::from_secs(300));
        assert_eq!(s.api_path.as_deref(), Some("/visitor-api/"));
        assert!(s.is_api_path("/visitor-api/"));
        assert!(s.is_api_path("/visitor-api"));
        assert!(!s.is_api_path("/visitor-api/x"));
        assert!(s.countries.admits("GB"));
        assert!(s.countries.admits("DE"));
        assert!(!s.countries.admits("US"));
        assert!(!s.countries.admits(""));
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("hosts = []\nupstreams = [\"a:1\"]", "site[0].hosts: must list"),
            ("hosts = [\"*.\"]\nupstreams = [\"a:1\"]", "site[0].hosts[0]:"),
            ("hosts = [\"a.com\"]\nupstreams = []", "site[0].upstreams: must list"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a\"]", "site[0].upstreams[0]: \"a\": missing :port"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:0\"]", "port must be 1-65535"),
            ("hosts = [\"a.com\"]\nupstreams = [\"http://a:80\"]", "without scheme"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a b:80\"]", "invalid host name"),
            ("hosts = [\"a.com\"]\nupstreams = [\"::1:80\"]", "needs [brackets]"),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"10.0.0.1:443\"]\nupstream_tls = true",
                "site[0].upstreams[0]: \"10.0.0.1:443\": an IP address with upstream_tls = true needs upstream_sni",
            ),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_tls = true\nupstream_sni = \"\"",
                "site[0].upstream_sni: must not be empty",
            ),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_tls = true\nupstream_sni = \"a b\"",
                "site[0].upstream_sni: \"a b\": not a DNS name",
            ),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_sni = \"a\"", "site[0].upstream_sni: only meaningful"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_ca = \"ca.pem\"", "site[0].upstream_ca: only meaningful"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nconnect_timeout = \"0s\"", "site[0].connect_timeout: must be more than 0s"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nread_timeout = \"25h\"", "site[0].read_timeout:"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nhealth_check_interval = \"100ms\"", "site[0].health_check_interval: must be between"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\napi_path = \"x\"", "site[0].api_path:"),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nallow_countries = [\"GB\"]\ndeny_countries = [\"US\"]",
                "site[0].deny_countries: allow_countries and deny_countries cannot both be set",
            ),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\ndeny_countries = [\"US\", \"XX\"]", "site[0].deny_countries[1]: \"XX\": not an ISO 3166-1"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nallow_countries = []", "site[0].allow_countries: must list"),
        ];
        for (text, want) in cases {
            let e = error(text);
            assert!(e.starts_with(FILE), "{e}");
            assert!(e.contains(want), "{text:?}\n  got: {e}\n want: {want}");
        }
    }

    #[test]
    fn unknown_key_and_bad_enum_are_refused() {
        let e = toml::from_str::<RawSite>("hosts = [\"a\"]\nupstreams = [\"a:1\"]\nupstream = 1")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `upstream`"), "{e}");
        let e = toml::from_str::<RawSite>(
            "hosts = [\"a\"]\nupstreams = [\"a:1\"]\nunknown_country = \"maybe\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn a_host_claimed_twice_is_refused() {
        let two = vec![
            raw(MINIMAL),
            raw("hosts = [\"a.com\", \"WWW.example.com\"]\nupstreams = [\"b:1\"]"),
        ];
        let e = parse_sites(Path::new(FILE), two, &|p| p.to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site[1].hosts[1]: \"www.example.com\": already claimed by site[0]"),
            "{e}"
        );
        let one = vec![raw(
            "hosts = [\"*.a.com\", \"*.A.com\"]\nupstreams = [\"b:1\"]",
        )];
        let e = parse_sites(Path::new(FILE), one, &|p| p.to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site[0].hosts[1]: \"*.a.com\": listed twice"),
            "{e}"
        );
    }

    #[test]
    fn country_rules() {
        let deny = parse_one(&format!("{MINIMAL}deny_countries = [\"US\"]"))
            .unwrap()
            .countries;
        assert!(!deny.admits("US"));
        assert!(deny.admits("GB"));
        assert!(deny.admits(""), "unknown_country defaults to allow");
        let strict = CountryRule::everyone(UnknownCountry::Deny);
        assert!(strict.admits("US"));
        assert!(!strict.admits(""));
    }

    fn sites(texts: &[&str]) -> Sites {
        let raws = texts.iter().map(|t| raw(t)).collect();
        let configs = parse_sites(Path::new(FILE), raws, &|p| p.to_path_buf()).unwrap();
        Sites::build(Path::new(FILE), &configs, None).unwrap()
    }

    #[test]
    fn host_lookup() {
        let s = sites(&[
            "hosts = [\"example.com\", \"*.example.com\"]\nupstreams = [\"127.0.0.1:1\"]",
            "hosts = [\"*.shop.example.com\", \"[::1]\", \"127.0.0.2\"]\nupstreams = [\"127.0.0.1:2\"]",
            "hosts = [\"api.example.com\"]\nupstreams = [\"127.0.0.1:3\"]",
        ]);
        let cases: &[(&str, Option<usize>)] = &[
            ("example.com", Some(0)),
            ("EXAMPLE.com:8443", Some(0)),
            ("example.com.", Some(0)),
            ("www.example.com", Some(0)),
            ("a.b.example.com", Some(0)),
            ("x.shop.example.com", Some(1)),
            ("shop.example.com", Some(0)),
            ("api.example.com", Some(2)),
            ("x.api.example.com", Some(0)),
            ("[::1]:8443", Some(1)),
            ("[::1]", Some(1)),
            ("127.0.0.2:1", Some(1)),
            ("example.org", None),
            ("com", None),
            ("notexample.com", None),
            ("", None),
            ("example.com:", None),
            ("example.com:x", None),
            ("exa mple.com", None),
            ("[::1", None),
            ("[::1]x", None),
        ];
        for (host, want) in cases {
            assert_eq!(s.find(host.as_bytes()), *want, "{host:?}");
        }
        assert_eq!(s.find(&[b'a'; 300]), None);
        assert_eq!(Sites::default().find(b"example.com"), None);
    }

    #[test]
    fn round_robin_skips_what_is_down() {
        let s = sites(&[
            "hosts = [\"a.com\"]\nupstreams = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]",
        ]);
        let site = s.get(0).unwrap();
        let picks: Vec<usize> = (0..6).filter_map(|_| site.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert!(site.upstreams[1].health.set(false));
        assert!(!site.upstreams[1].health.set(false), "no change");
        let picks: Vec<usize> = (0..6).filter_map(|_| site.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
        assert!(site.another_is_up(1));
        site.upstreams[0].health.set(false);
        site.upstreams[2].health.set(false);
        assert!(!site.another_is_up(1));
        let picks: Vec<usize> = (0..3).filter_map(|_| site.pick()).collect();
        let mut sorted = picks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "all down: plain round robin");
    }

    #[test]
    fn health_is_shared_by_address_and_survives_a_rebuild() {
        let texts = [
            "hosts = [\"a.com\"]\nupstreams = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nhealth_check_interval = \"9s\"",
            "hosts = [\"b.com\"]\nupstreams = [\"127.0.0.1:2\"]\nhealth_check_interval = \"3s\"\nconnect_timeout = \"1s\"",
        ];
        let raws = texts.iter().map(|t| raw(t)).collect();
        let configs = parse_sites(Path::new(FILE), raws, &|p| p.to_path_buf()).unwrap();
        let first = Sites::build(Path::new(FILE), &configs, None).unwrap();
        assert_eq!(first.health_targets().len(), 2);
        let shared = &first.health_targets()[1];
        assert_eq!(shared.interval, Duration::from_secs(3));
        assert_eq!(shared.timeout, Duration::from_secs(1));
        assert_eq!(
            shared.label,
            "site a.com: upstream 127.0.0.1:2 (127.0.0.1:2)"
        );
        first.get(1).unwrap().upstreams[0].health.set(false);
        assert!(!first.get(0).unwrap().upstreams[1].health.is_up());
        let second = Sites::build(Path::new(FILE), &configs, Some(&first)).unwrap();
        assert!(!second.get(0).unwrap().upstreams[1].health.is_up());
        assert!(second.get(0).unwrap().upstreams[0].health.is_up());
    }

    #[test]
    fn names_resolve_and_sni_defaults_to_the_host() {
        let s = sites(&["hosts = [\"a.com\"]\nupstreams = [\"localhost:8443\", \"127.0.0.1:1\"]"]);
        let site = s.get(0).unwrap();
        let local = &site.upstreams[0];
        assert_eq!(local.sni, "localhost");
        assert_eq!(local.spec, "localhost:8443");
        assert!(local.addr.ip().is_loopback());
        let s = sites(&["hosts = [\"a.com\"]\nupstreams = [\"127.0.0.1:1\"]\nupstream_tls = true\nupstream_sni = \"app.test\""]);
        assert_eq!(s.get(0).unwrap().upstreams[0].sni, "app.test");
    }

    #[test]
    fn unresolvable_upstream_is_refused_at_build() {
        let configs = parse_sites(
            Path::new(FILE),
            vec![raw(
                "hosts = [\"a.com\"]\nupstreams = [\"127.0.0.1:1\", \"nonexistent.invalid:80\"]",
            )],
            &|p| p.to_path_buf(),
        )
        .unwrap();
        let e = Sites::build(Path::new(FILE), &configs, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site[0].upstreams[1]: \"nonexistent.invalid:80\": cannot resolve"),
            "{e}"
        );
    }

    #[test]
    fn upstream_ca_is_checked_at_build() {
        let dir = tempfile::tempdir().unwrap();
        let build = |content: Option<&str>| {
            let path = dir.path().join("ca.pem");
            match content {
                Some(c) => std::fs::write(&path, c).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
            let configs = parse_sites(
                Path::new(FILE),
                vec![raw(&format!(
                    "hosts = [\"a.com\"]\nupstreams = [\"a.test:1\"]\nupstream_tls = true\nupstream_ca = {:?}",
                    path.display().to_string()
                ))],
                &|p| p.to_path_buf(),
            )
            .unwrap();
            let mut configs = configs;
            // No DNS in unit tests: the name only matters for SNI.
            configs[0].upstreams[0].host = "127.0.0.1".into();
            Sites::build(Path::new(FILE), &configs, None)
        };
        let e = build(None).unwrap_err().to_string();
        assert!(
            e.contains("site[0].upstream_ca:") && e.contains("cannot read"),
            "{e}"
        );
        let e = build(Some("hello")).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let e = build(Some(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("certificate 0"), "{e}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let sites = build(Some(&ca.pem())).unwrap();
        assert_eq!(sites.get(0).unwrap().ca.as_ref().unwrap().len(), 1);
    }

    fn agent() -> Agent {
        Agent {
            browser: "Mobile Safari".into(),
            browser_version: "17.5".into(),
            os: "iOS".into(),
            os_version: "17.5".into(),
            device_brand: "Apple".into(),
            device_model: "iPhone".into(),
            device_family: "iPhone".into(),
        }
    }

    #[test]
    fn visitor_header_values() {
        let loc = Location {
            country_code: "BR",
            region_code: "SP",
            region_name: "São Paulo",
            city: "São Paulo",
            latitude: Some(-23.5475),
            longitude: Some(-46.63611),
            timezone: "America/Sao_Paulo",
            ..Location::default()
        };
        let a = agent();
        let d = api::visitor("200.1.2.3".parse().unwrap(), &loc, &a);
        let values = visitor_headers(&d);
        let got: Vec<(&str, &str)> = VISITOR_HEADERS
            .iter()
            .zip(&values)
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-visitor-country", "BR"),
                ("x-visitor-region", "SP"),
                ("x-visitor-city", "S%C3%A3o%20Paulo"),
                ("x-visitor-lat-long", "-23.547500,-46.636110"),
                ("x-visitor-timezone", "America/Sao_Paulo"),
                ("x-visitor-continent", "SA"),
                ("x-visitor-currencies", "BRL"),
                ("x-visitor-languages", "pt-BR"),
                ("x-visitor-browser", "Mobile%20Safari"),
                ("x-visitor-os", "iOS"),
                ("x-visitor-device", "iPhone"),
            ]
        );
        for name in &VISITOR_HEADERS {
            assert!(name.as_str().starts_with(VISITOR_HEADER_PREFIX));
        }
    }

    #[test]
    fn unknown_visitor_gets_empty_values() {
        let a = Agent::unknown();
        let d = api::visitor("10.0.0.1".parse().unwrap(), &Location::default(), &a);
        let values = visitor_headers(&d);
        let empties = values.iter().filter(|v| v.is_empty()).count();
        assert_eq!(empties, 10, "{values:?}");
        assert_eq!(values[10], "Other");
    }

    #[test]
    fn encoding_is_exact_and_reversible() {
        let cases: &[(&str, &str)] = &[
            ("London", "London"),
            ("", ""),
            ("a b", "a%20b"),
            ("Zürich", "Z%C3%BCrich"),
            ("a,b;c\"d\\e%f+g", "a%2Cb%3Bc%22d%5Ce%25f%2Bg"),
            ("line\r\nX-Evil: 1", "line%0D%0AX-Evil%3A%201"),
            ("\u{7f}\u{0}", "%7F%00"),
            ("A-Z_a.z~0/9", "A-Z_a.z~0/9"),
            ("東京", "%E6%9D%B1%E4%BA%AC"),
        ];
        for (input, want) in cases {
            let v = encoded(input);
            assert_eq!(v.to_str().unwrap(), *want, "{input:?}");
            assert_eq!(percent_decode(want), *input);
        }
        assert_eq!(
            encoded_list(["en-GB", "cy GB"].into_iter())
                .to_str()
                .unwrap(),
            "en-GB,cy%20GB"
        );
        assert_eq!(encoded_list(std::iter::empty()).to_str().unwrap(), "");
    }

    /// A test-only decoder, to show the encoding round-trips.
    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarded_for_trusts_only_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ff = |peer: &str, lines: &[&str]| {
            forwarded_for(
                peer.parse().unwrap(),
                &trusted,
                lines.iter().map(|l| l.as_bytes()),
            )
            .to_str()
            .unwrap()
            .to_owned()
        };
        assert_eq!(
            ff("81.2.69.142", &["1.2.3.4"]),
            "81.2.69.142",
            "untrusted: dropped"
        );
        assert_eq!(ff("81.2.69.142", &[]), "81.2.69.142");
        assert_eq!(ff("10.0.0.1", &["81.2.69.142"]), "81.2.69.142, 10.0.0.1");
        assert_eq!(
            ff("10.0.0.1", &["1.1.1.1, 81.2.69.142", " ", "10.0.0.9 "]),
            "1.1.1.1, 81.2.69.142, 10.0.0.9, 10.0.0.1"
        );
        assert_eq!(ff("10.0.0.1", &[]), "10.0.0.1");
        assert_eq!(ff("::ffff:10.0.0.1", &["8.8.8.8"]), "8.8.8.8, 10.0.0.1");
        assert_eq!(ff("2001:db8::1", &[]), "2001:db8::1");
    }

    #[test]
    fn pages_are_small_html_without_details() {
        for (a, status) in [
            (refused_page(), 403),
            (error_page(502), 502),
            (error_page(504), 504),
            (error_page(500), 500),
        ] {
            assert_eq!(a.status, status);
            assert_eq!(a.content_type, "text/html; charset=utf-8");
            let body = std::str::from_utf8(&a.body).unwrap();
            assert!(body.starts_with("<!doctype html>"), "{body}");
            assert!(body.len() < 512);
            assert!(
                body.contains(&status.to_string()) || status == 500,
                "{body}"
            );
        }
    }
}
