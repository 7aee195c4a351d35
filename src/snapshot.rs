//! One immutable world: configuration, projects, databases, user-agent rules
//! and certificates, loaded and validated together (DESIGN §6).
//!
//! A request takes the current snapshot once (`Shared::load_full`) and uses it
//! to the end, so it never sees half of an old state and half of a new one.
//! `check`, `run`, `lookup` and every reload go through `Snapshot::load`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::agent::{AgentError, AgentParser};
use crate::config::{Config, ConfigError, Projects};
use crate::geo::{GeoDb, GeoError};
use crate::tls::{Certificates, TlsError};

/// The holder every request, handshake and reload shares.
pub type Shared = Arc<ArcSwap<Snapshot>>;

/// What a snapshot failed on. Each variant's message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    pub agents: AgentParser,
    pub certificates: Certificates,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Loads and validates everything `config_file` names.
    pub fn load(config_file: &Path, generation: u64) -> Result<Snapshot, LoadError> {
        let config = Config::load(config_file)?;
        let projects = Projects::load(&config.api.projects)?;
        let certificates = match &config.tls {
            Some(tls) => Certificates::load(&tls.certificates)?,
            None => Certificates::default(),
        };
        let geo = GeoDb::open(&config.geo.databases)?;
        let agents = match &config.user_agent.regexes {
            Some(path) => AgentParser::from_file(path)?,
            None => AgentParser::builtin()?,
        };
        Ok(Snapshot {
            generation,
            config,
            projects,
            geo,
            agents,
            certificates,
            loaded_at: SystemTime::now(),
        })
    }

    /// Every file this snapshot was built from; reload watches their folders.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let c = &self.config;
        let mut files = vec![c.file.clone(), c.api.projects.clone()];
        files.extend(c.geo.databases.iter().cloned());
        if let Some(tls) = &c.tls {
            for pair in &tls.certificates {
                files.push(pair.cert.clone());
                files.push(pair.key.clone());
            }
        }
        files.extend(c.user_agent.regexes.iter().cloned());
        files
    }
}
