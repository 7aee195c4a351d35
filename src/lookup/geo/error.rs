//! Why a database file was refused: [`GeoError`].

use std::path::{Path, PathBuf};

/// Why a database file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read.
    #[error("{}: cannot read file: {source}", path.display())]
    Read {
        /// The file, as configured.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a usable MaxMind DB (empty, corrupt, truncated, …).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file, as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid MaxMind DB whose records are none of the shapes visitord reads.
    #[error(
        "{}: unrecognised database (database_type {database_type:?}): expected GeoIP2/GeoLite2 \
         City or Country, GeoLite2 ASN, or ip-location-db records",
        path.display()
    )]
    UnknownShape {
        /// The file, as configured.
        path: PathBuf,
        /// The metadata's `database_type`, which did not tell either.
        database_type: String,
    },
}

impl GeoError {
    /// The database file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            GeoError::Read { path, .. }
            | GeoError::Invalid { path, .. }
            | GeoError::UnknownShape { path, .. } => path,
        }
    }
}
