//! One immutable world: configuration, projects, databases, user-agent rules,
//! certificates and sites (resolved upstreams, their peer templates),
//! loaded and validated together (DESIGN §6).
//!
//! A request takes the current snapshot once (`Shared::load_full`) and uses it
//! to the end, so it never sees half of an old state and half of a new one.
//! `check`, `run`, `lookup` and every reload go through `Snapshot::load`.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::agent::{AgentError, AgentParser};
use crate::config::{Config, ConfigError, Projects};
use crate::geo::{GeoDb, GeoError};
use crate::metrics::RequestMetrics;
use crate::origin::AllowedOrigins;
use crate::sites::Sites;
use crate::tls::{Certificates, TlsError};
use crate::upstream::Peers;

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
        }
    }
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
    pub certificates: Certificates,
    /// `[[site]]`s with resolved upstreams; upstream health carries over
    /// from the previous snapshot by address.
    pub sites: Sites,
    /// One Pingora peer template per upstream of `sites`, same order.
    pub peers: Peers,
    /// `tls.hsts` ready to send (config checked it is header-safe).
    pub hsts: Option<HeaderValue>,
    /// Request metric handles for this snapshot's routes and projects.
    pub request_metrics: RequestMetrics,
    /// `Origin`s already allowed, per project of this snapshot.
    pub allowed_origins: AllowedOrigins,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Loads and validates everything `config_file` names.
    pub fn load(config_file: &Path, generation: u64) -> Result<Snapshot, LoadError> {
        Snapshot::load_after(config_file, generation, None)
    }

    /// Like `load`, reusing parts of `previous` whose files did not change.
    pub fn load_after(
        config_file: &Path,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, LoadError> {
        let config = Config::load(config_file)?;
        let projects = Projects::load(&config.api.projects).map_err(LoadError::Projects)?;
        let sites = Sites::build(&config.file, &config.sites, previous.map(|p| &p.sites))?;
        let peers = Peers::build(&sites);
        let certificates = match &config.tls {
            Some(tls) => Certificates::load(&tls.certificates)?,
            None => Certificates::default(),
        };
        let geo = GeoDb::open(&config.geo.databases)?;
        let agents_stamp = config.user_agent.regexes.as_deref().and_then(FileStamp::of);
        let reusable = previous.filter(|p| {
            p.config.user_agent.regexes == config.user_agent.regexes
                && p.agents_stamp == agents_stamp
        });
        let agents = match (reusable, &config.user_agent.regexes) {
            (Some(p), _) => p.agents.clone(),
            (None, Some(path)) => Arc::new(AgentParser::from_file(path)?),
            (None, None) => Arc::new(AgentParser::builtin()?),
        };
        // Build the country table now rather than on the first request.
        let _ = crate::country::lookup("US");
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_deref())
            .and_then(|v| HeaderValue::from_str(v).ok());
        let request_metrics = RequestMetrics::new(projects.len());
        Ok(Snapshot {
            generation,
            config,
            projects,
            geo,
            agents,
            agents_stamp,
            certificates,
            sites,
            peers,
            hsts,
            request_metrics,
            allowed_origins: AllowedOrigins::new(),
            loaded_at: SystemTime::now(),
        })
    }

    /// Every file this snapshot was built from; reload watches their folders.
    pub fn source_files(&self) -> Vec<PathBuf> {
        self.config.source_files()
    }
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
