//! One world per request: configuration, projects, databases, user-agent
//! rules, certificates and sites (resolved upstreams, their peer
//! templates), loaded and validated together (docs/design.md §6) and never changed
//! after. Beside these inputs a snapshot carries what requests write into
//! while it serves, named for what they are: its `recorders` (metric
//! handles, per-project usage) and its `origin_cache`. Publishing its
//! gauges is `publish`'s.
//!
//! A request takes the current snapshot once (`Shared::load_full`) and uses it
//! to the end, so it never sees half of an old state and half of a new one.
//! `check`, `run`, `lookup` and every reload build it the same way:
//! `Config::load`, then [`Snapshot::build`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

pub mod publish;

use crate::certs::acme::{self, client::AcmeError};
use crate::certs::signing::{self, Signing};
use crate::certs::tls::{CertSource, Certificates, TlsError};
use crate::config::{CertificateFiles, Config, ConfigError, Projects};
use crate::lookup::agent::{Agent, AgentError, AgentParser};
use crate::lookup::geo::{GeoDb, GeoError};
use crate::observe::metrics::{RequestMetrics, SiteMetrics};
use crate::observe::metrics_access::MetricsToken;
use crate::observe::usage::Usage;
use crate::origin::AllowedOrigins;
use crate::shared_store::StoreSettings;
use crate::sites::upstream::Peers;
use crate::sites::Sites;
use crate::visitor::Visitor;

/// The holder every request, handshake and reload shares.
pub type Shared = Arc<ArcSwap<Snapshot>>;

/// What a snapshot failed on. Each variant's message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Projects(ConfigError),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// A file the configuration names, refused: the configuration file and
    /// the key that names it, then the file's own error.
    #[error("{}: {key}: {error}", config.display())]
    Referenced {
        config: PathBuf,
        key: String,
        error: Box<LoadError>,
    },
    #[error(transparent)]
    Signing(ConfigError),
}

impl LoadError {
    /// A bounded label for metrics: which kind of input failed.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Config(_) => "config",
            LoadError::Projects(_) => "projects",
            LoadError::Geo(_) => "geo",
            LoadError::Agent(_) => "user_agent",
            LoadError::Tls(_) => "tls",
            LoadError::Acme(_) => "acme",
            LoadError::Signing(_) => "signing",
            LoadError::Referenced { error, .. } => error.kind(),
        }
    }

    /// This error, about the file `config`'s `key` names.
    fn named_by(self, config: &Config, key: impl Into<String>) -> LoadError {
        LoadError::Referenced {
            config: config.file.clone(),
            key: key.into(),
            error: Box::new(self),
        }
    }
}

/// What requests write into while a snapshot serves: handles resolved on
/// first use, and counters that carry over to the next snapshot.
#[derive(Debug)]
pub struct Recorders {
    /// Request metric handles for this snapshot's routes and projects.
    pub requests: RequestMetrics,
    /// `visitord_site_requests_total` handles, by site index.
    pub sites: SiteMetrics,
    /// Per-project usage for the dashboard, by project index; the
    /// counters carry over from the previous snapshot by project id.
    pub usage: Usage,
}

#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the snapshot loaded at start, +1 for each reload that succeeded.
    pub generation: u64,
    pub config: Config,
    pub projects: Projects,
    pub geo: GeoDb,
    /// Shared with the previous snapshot while the rules file is unchanged:
    /// compiling uap-core's rules is the slowest part of a rebuild, and the
    /// parse cache survives the reload that way.
    pub agents: Arc<AgentParser>,
    /// The rules file's identity when it was read (`None`: built-in rules).
    agents_stamp: Option<FileStamp>,
    /// File pairs first, then the ACME certificates of `acme.managed`.
    pub certificates: Certificates,
    /// `[acme]`'s names: which ACME manages, which a file pair covers.
    pub acme: Option<acme::Plan>,
    /// `[[site]]`s with resolved upstreams; upstream health carries over
    /// from the previous snapshot by address.
    pub sites: Sites,
    /// One Pingora peer template per upstream of `sites`, same order.
    pub peers: Peers,
    /// Where requests are counted while this snapshot serves.
    pub recorders: Recorders,
    /// The bearer token of `metrics.token_file`, read with the rest.
    pub metrics_token: Option<MetricsToken>,
    /// A cache of the `Origin`s already allowed, per project of this
    /// snapshot; requests fill it.
    pub origin_cache: AllowedOrigins,
    /// `[limits] shared_store` with its password and CA read; `None`:
    /// project limits count per node.
    pub shared_store: Option<Arc<StoreSettings>>,
    /// `[signing]` with its keys read; `None`: no project is signed.
    pub signing: Option<Signing>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Loads the configuration, then everything it names.
    pub fn load(config_file: &Path, generation: u64) -> Result<Snapshot, LoadError> {
        Snapshot::build(Config::load(config_file)?, generation, None)
    }

    /// Loads and validates everything `config` names, reusing parts of
    /// `previous` whose files did not change.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, LoadError> {
        let projects = load_projects(&config)?;
        let sites = Sites::build(&config.file, &config.sites, previous.map(|p| &p.sites))?;
        let peers = Peers::build(&sites);
        let mut certificates = match &config.tls {
            Some(tls) => Certificates::load(&tls.certificates)
                .map_err(|e| certificate_key(&config, &tls.certificates, e))?,
            None => Certificates::default(),
        };
        let metrics_token = read_metrics_token(&config)?;
        let acme = match &config.acme {
            Some(a) => Some(load_acme(&config, a, &mut certificates)?),
            None => None,
        };
        let signing = load_signing(&config, &projects, &certificates, acme.as_ref())?;
        let geo = open_geo(&config)?;
        let agents_stamp = config.user_agent.regexes.as_deref().and_then(FileStamp::of);
        let agents = agent_rules(&config, agents_stamp, previous)?;
        let shared_store = match &config.limits.shared_store {
            Some(store) => Some(Arc::new(StoreSettings::load(&config.file, store)?)),
            None => None,
        };
        crate::lookup::country::warm_up();
        let recorders = Recorders {
            requests: RequestMetrics::new(projects.len()),
            sites: SiteMetrics::new(sites.iter().map(|s| s.label.clone()).collect()),
            usage: Usage::new(
                projects.iter().map(|p| p.id.as_str()),
                previous.map(|p| &p.recorders.usage),
            ),
        };
        Ok(Snapshot {
            generation,
            config,
            projects,
            geo,
            agents,
            agents_stamp,
            certificates,
            acme,
            sites,
            peers,
            recorders,
            metrics_token,
            origin_cache: AllowedOrigins::new(),
            shared_store,
            signing,
            loaded_at: SystemTime::now(),
        })
    }

    /// Every file this snapshot was built from; reload watches their folders.
    /// ACME certificates count whether or not they exist yet: the first one
    /// for a name is picked up like a renewed one.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files = self.config.source_files();
        if let Some(plan) = &self.acme {
            files.extend(plan.managed.iter().map(|n| plan.store.bundle_file(n)));
        }
        files
    }

    /// What the databases and the user-agent rules say about a client: the
    /// one lookup the API, the sites and `visitord lookup` share.
    pub fn visitor(&self, ip: IpAddr, user_agent: &str) -> Visitor<'_> {
        self.visitor_in_part(ip, user_agent, true, true)
    }

    /// [`Snapshot::visitor`] with only the lookups a caller needs: the
    /// databases (`location`), the user-agent rules (`agent`); what is left
    /// out is unknown.
    pub fn visitor_in_part(
        &self,
        ip: IpAddr,
        user_agent: &str,
        location: bool,
        agent: bool,
    ) -> Visitor<'_> {
        let ip = ip.to_canonical();
        Visitor {
            ip,
            location: if location {
                self.geo.lookup(ip)
            } else {
                Default::default()
            },
            agent: if agent {
                self.agents.parse(user_agent)
            } else {
                Agent::unknown_shared()
            },
        }
    }
}

/// The token of `metrics.token_file`, when configured.
fn read_metrics_token(config: &Config) -> Result<Option<MetricsToken>, ConfigError> {
    let Some(path) = config.metrics.as_ref().and_then(|m| m.token_file.as_ref()) else {
        return Ok(None);
    };
    MetricsToken::read(path).map(Some).map_err(|e| {
        ConfigError::invalid(
            &config.file,
            "metrics.token_file",
            format!("{}: {e}", path.display()),
        )
    })
}

/// The projects file; one that cannot be read is `api.projects`'s error
/// (one that can is named by its own keys).
fn load_projects(config: &Config) -> Result<Projects, LoadError> {
    Projects::load(&config.api.projects).map_err(|e| match e {
        ConfigError::Read { .. } => LoadError::Projects(e).named_by(config, "api.projects"),
        ConfigError::Invalid { .. } => LoadError::Projects(e),
    })
}

/// The databases; a refused one is named by its `geo.databases[i]`.
fn open_geo(config: &Config) -> Result<GeoDb, LoadError> {
    GeoDb::open(&config.geo.databases).map_err(|e| {
        let i = config.geo.databases.iter().position(|p| p == e.path());
        let key = i.map_or("geo.databases".to_owned(), |i| {
            format!("geo.databases[{i}]")
        });
        LoadError::from(e).named_by(config, key)
    })
}

/// The user-agent rules of `user_agent.regexes`.
fn load_agents(config: &Config, path: &Path) -> Result<AgentParser, LoadError> {
    AgentParser::from_file(path)
        .map_err(|e| LoadError::from(e).named_by(config, "user_agent.regexes"))
}

/// A `[tls] certificates` pair refused, under the key naming the file it is
/// about (`tls.certificates[i].cert` or `.key`; a key that does not match
/// its certificate is the key's error).
fn certificate_key(config: &Config, pairs: &[CertificateFiles], e: TlsError) -> LoadError {
    let key = e.file().and_then(|file| {
        pairs.iter().enumerate().find_map(|(i, pair)| {
            if pair.key == file {
                Some(format!("tls.certificates[{i}].key"))
            } else if pair.cert == file {
                Some(format!("tls.certificates[{i}].cert"))
            } else {
                None
            }
        })
    });
    let key = key.unwrap_or_else(|| "tls.certificates".to_owned());
    LoadError::from(e).named_by(config, key)
}

/// The user-agent rules: the previous snapshot's while their file is
/// unchanged, else compiled anew.
fn agent_rules(
    config: &Config,
    stamp: Option<FileStamp>,
    previous: Option<&Snapshot>,
) -> Result<Arc<AgentParser>, LoadError> {
    let reusable = previous.filter(|p| {
        p.config.user_agent.regexes == config.user_agent.regexes && p.agents_stamp == stamp
    });
    Ok(match (reusable, &config.user_agent.regexes) {
        (Some(p), _) => p.agents.clone(),
        (None, Some(path)) => Arc::new(load_agents(config, path)?),
        (None, None) => Arc::new(AgentParser::builtin()?),
    })
}

/// `[signing]`'s keys, and its issuer (`https://` and the first
/// certificate name unless set). A `signed` project needs `[signing]`.
fn load_signing(
    config: &Config,
    projects: &Projects,
    certificates: &Certificates,
    acme: Option<&acme::Plan>,
) -> Result<Option<Signing>, LoadError> {
    let Some(settings) = &config.signing else {
        return match projects.iter().position(|p| p.signed) {
            Some(i) => Err(LoadError::Projects(ConfigError::invalid(
                &config.api.projects,
                format!("project[{i}].signed"),
                format!("{} has no [signing] keys", config.file.display()),
            ))),
            None => Ok(None),
        };
    };
    let names = certificates
        .iter()
        .filter(|c| c.source == CertSource::File)
        .flat_map(|c| c.names.iter())
        .chain(acme.iter().flat_map(|p| p.managed.iter()))
        .map(String::as_str);
    let Some(issuer) = settings
        .issuer
        .clone()
        .or_else(|| signing::default_issuer(names))
    else {
        return Err(LoadError::Signing(ConfigError::invalid(
            &config.file,
            "signing.issuer",
            "not set, and no certificate name to make it from: set it",
        )));
    };
    Signing::load(&config.file, settings, issuer)
        .map(Some)
        .map_err(LoadError::Signing)
}

/// Splits `[acme]`'s names (a file pair wins) and loads the certificates
/// ACME keeps for the others; a name without one (or with an expired one)
/// waits. A damaged file is an error, as for a file pair: the previous
/// snapshot keeps serving.
fn load_acme(
    whole: &Config,
    config: &crate::config::Acme,
    certificates: &mut Certificates,
) -> Result<acme::Plan, LoadError> {
    if let Some(ca) = &config.directory_ca {
        acme::client::read_roots(ca)
            .map_err(|e| LoadError::from(e).named_by(whole, "acme.directory_ca"))?;
    }
    let plan = acme::plan(config, certificates);
    for name in &plan.managed {
        let bundle = plan.store.bundle_file(name);
        if bundle.exists() {
            certificates.add_acme(name, &bundle)?;
        } else {
            certificates.wait_for(name);
        }
    }
    Ok(plan)
}

/// Identifies a file's content without reading it: a rename-over or an
/// in-place write changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::observe::verdict::Verdict;
    use std::time::Instant;

    /// A folder with a projects file (`ids`) and a configuration over the
    /// shipped country database; `extra` is appended to it.
    fn config(dir: &Path, ids: &[&str], extra: &str) -> Config {
        let projects: String = ids
            .iter()
            .map(|id| format!("[[project]]\nid = \"{id}\"\ndomains = [\"example.com\"]\n"))
            .collect();
        std::fs::write(dir.join("projects.toml"), projects).unwrap();
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("geo-db/iptoasn-country.mmdb");
        let text = format!(
            "[[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n\
             [api]\nprojects = \"projects.toml\"\n[geo]\ndatabases = [{db:?}]\n{extra}"
        );
        Config::parse(&dir.join("visitord.toml"), &text).unwrap()
    }

    #[test]
    fn a_build_loads_what_the_configuration_names() {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshot::build(config(dir.path(), &["a", "b"], ""), 1, None).unwrap();
        assert_eq!(snap.generation, 1);
        assert_eq!(snap.projects.len(), 2);
        assert_eq!(snap.geo.databases().len(), 1);
        assert!(snap.sites.iter().next().is_none());
        let v = snap.visitor("8.8.8.8".parse().unwrap(), "");
        assert_eq!(v.data().country_code, "US");
        assert!(snap
            .source_files()
            .contains(&dir.path().join("projects.toml")));
    }

    #[test]
    fn a_bad_input_is_refused_with_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), &["a"], "");
        std::fs::write(
            dir.path().join("projects.toml"),
            "[[project]]\nid = \"a b\"\n",
        )
        .unwrap();
        let e = Snapshot::build(c.clone(), 1, None).unwrap_err();
        assert_eq!(e.kind(), "projects");
        assert!(e.to_string().contains("projects.toml"), "{e}");
        c = config(dir.path(), &["a"], "");
        c.geo.databases = vec![dir.path().join("missing.mmdb")];
        let e = Snapshot::build(c, 1, None).unwrap_err();
        assert_eq!(e.kind(), "geo");
        assert!(e.to_string().contains("missing.mmdb"), "{e}");
    }

    /// What carries over from the previous snapshot: the compiled rules
    /// while their file is unchanged, and usage by project id.
    #[test]
    fn a_rebuild_reuses_what_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let first = Snapshot::build(config(dir.path(), &["a", "b"], ""), 1, None).unwrap();
        let at = Instant::now();
        let for_b = Verdict {
            project: Some(1),
            refused: None,
        };
        first.recorders.usage.record(at, 200, &for_b);
        let second = Snapshot::build(config(dir.path(), &["b"], ""), 2, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.agents, &second.agents));
        let usage = second.recorders.usage.projects(at);
        assert_eq!(usage[0].0, "b");
        assert_eq!(usage[0].1.requests_last_hour, 1);
        assert_eq!(second.generation, 2);
    }
}
