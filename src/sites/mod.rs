//! The sites of one snapshot (`[[site]]` in visitord.toml), ready to
//! serve: upstream names resolved, CA files read, the host lookup, round
//! robin over healthy upstreams, and the health state, which is shared by
//! address with the next snapshot.
//!
//! Resolving and reading happen when a snapshot is built, so a name that
//! does not resolve or a CA that does not parse refuses the snapshot like
//! any other bad input, and a reload re-resolves. The Pingora side lives in
//! `upstream` (peer templates) and `health_checks` (the probes).

pub mod upstream;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::certs::ca::read_ca;
use crate::config::{ConfigError, SiteConfig, UpstreamAddr};
use crate::origin::DomainPattern;

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
        let mut targets = Targets::new(previous);
        let mut sites = Sites::default();
        for (i, config) in configs.iter().enumerate() {
            let label = config.label();
            let ca = site_ca(file, i, config)?;
            let upstreams = site_upstreams(file, i, config, &label, &mut targets)?;
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
        sites.targets = targets.list;
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

    /// The site for a request's host, normalised by `host::parse_authority`
    /// (lowercase, no port, no trailing dot): exact names first, then the
    /// longest matching wildcard. No allocation.
    pub fn find(&self, host: &str) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(&i) = self.wildcard.get(rest) {
                return Some(i);
            }
        }
        None
    }
}

/// The health targets of the sites being built: one per address, with
/// the strictest settings of the sites using it.
struct Targets {
    /// Every address's health, carried over from the previous snapshot.
    health: HashMap<SocketAddr, Arc<Health>>,
    /// Address -> its place in `list`.
    index: HashMap<SocketAddr, usize>,
    list: Vec<HealthTarget>,
}

impl Targets {
    fn new(previous: Option<&Sites>) -> Targets {
        let health = previous
            .map(|p| {
                p.targets
                    .iter()
                    .map(|t| (t.addr, Arc::clone(&t.health)))
                    .collect()
            })
            .unwrap_or_default();
        Targets {
            health,
            index: HashMap::new(),
            list: Vec::new(),
        }
    }

    /// The health of `addr`, now probed at least as often and as strictly
    /// as `config` asks; `label` names it when it is new.
    fn add(&mut self, addr: SocketAddr, config: &SiteConfig, label: String) -> Arc<Health> {
        let health = Arc::clone(self.health.entry(addr).or_default());
        match self.index.get(&addr) {
            Some(&t) => {
                let t = &mut self.list[t];
                t.interval = t.interval.min(config.health_check_interval);
                t.timeout = t.timeout.min(config.timeouts.connect);
            }
            None => {
                self.index.insert(addr, self.list.len());
                self.list.push(HealthTarget {
                    addr,
                    health: Arc::clone(&health),
                    interval: config.health_check_interval,
                    timeout: config.timeouts.connect,
                    label,
                });
            }
        }
        health
    }
}

/// The certificates of site `i`'s `upstream_ca`, read and checked.
fn site_ca(
    file: &Path,
    i: usize,
    config: &SiteConfig,
) -> Result<Option<Arc<[CertificateDer<'static>]>>, ConfigError> {
    let Some(path) = &config.upstream_ca else {
        return Ok(None);
    };
    let ca = read_ca(path).map_err(|e| {
        ConfigError::invalid(
            file,
            format!("site[{i}].upstream_ca"),
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(Some(Arc::from(ca.certs)))
}

/// Site `i`'s upstreams: every address each name resolves to, once.
fn site_upstreams(
    file: &Path,
    i: usize,
    config: &SiteConfig,
    label: &str,
    targets: &mut Targets,
) -> Result<Vec<Upstream>, ConfigError> {
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
            let spec = u.to_string();
            let health = targets.add(
                addr,
                config,
                format!("site {label}: upstream {spec} ({addr})"),
            );
            upstreams.push(Upstream {
                sni: config
                    .upstream_sni
                    .clone()
                    .unwrap_or_else(|| u.host.clone()),
                spec,
                addr,
                health,
            });
        }
    }
    Ok(upstreams)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::config::test_sites;

    const FILE: &str = "/etc/visitord/visitord.toml";

    fn sites(texts: &[&str]) -> Sites {
        Sites::build(Path::new(FILE), &test_sites(texts), None).unwrap()
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
            (".example.com", None),
        ];
        for (raw, want) in cases {
            let found = crate::net::host::parse_authority(raw.as_bytes())
                .ok()
                .and_then(|a| s.find(a.host.as_str()));
            assert_eq!(found, *want, "{raw:?}");
        }
        assert_eq!(Sites::default().find("example.com"), None);
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
        let configs = test_sites(&texts);
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
        let configs = test_sites(&[
            "hosts = [\"a.com\"]\nupstreams = [\"127.0.0.1:1\", \"nonexistent.invalid:80\"]",
        ]);
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
            let mut configs = test_sites(&[&format!(
                "hosts = [\"a.com\"]\nupstreams = [\"a.test:1\"]\nupstream_tls = true\nupstream_ca = {:?}",
                path.display().to_string()
            )]);
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
}
