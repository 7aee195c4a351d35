//! One opened database file: reading and checking it, what was opened
//! ([`DatabaseInfo`]), and looking an address up in it through its record
//! cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use maxminddb::{MaxMindDbError, Metadata, Reader};
use quick_cache::sync::Cache;

use super::cache::CachedRecord;
use super::error::GeoError;
use super::location::Location;
use super::records::{CityRecord, FlatRecord};
use super::shape::{shape_from_records, shape_from_type, Shape};

/// What was opened, for `visitord check`, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// The file, as configured.
    pub path: PathBuf,
    /// The file stem, bounded by configuration, so usable as a metric label.
    pub name: String,
    /// How its records are laid out.
    pub shape: Shape,
    /// The metadata's `database_type` (`GeoLite2-City`, `city ipv4`, …).
    pub database_type: String,
    /// When the vendor built it, in seconds since the Unix epoch.
    pub build_epoch: u64,
    /// 4 for an IPv4-only tree, 6 for one holding both families.
    pub ip_version: u16,
    /// Search-tree size, a cheap fingerprint of which build is loaded.
    pub node_count: u32,
}

/// One opened database file and its record cache.
pub(super) struct Database {
    /// The whole file in memory, not mapped: operators replace databases by
    /// writing the file, possibly in place, and a mapping whose file changes
    /// or shrinks under a lookup reads garbage or dies of SIGBUS. A reload
    /// reads the new file; requests keep the old bytes until they finish.
    reader: Reader<Bytes>,
    /// A second handle on the reader's bytes (shared, not copied): cached
    /// records point into them.
    pub(super) bytes: Bytes,
    shape: Shape,
    ip_version: u16,
    /// False for an IPv6 tree with nothing under `::/96`, such as the IPv6
    /// half of ip-location-db's split files: IPv4 addresses skip it instead
    /// of walking its tree to an empty record on every request.
    pub(super) has_ipv4: bool,
    /// Decoded records by data-section offset. It lives and dies with this
    /// database's bytes, so a reloaded file starts with an empty cache.
    pub(super) records: Cache<usize, CachedRecord>,
}

/// How many decoded records each database keeps (about 150 bytes each).
/// Traffic concentrates on far fewer records than addresses: a city
/// database has one record per place, shared by all of its networks.
const RECORD_CACHE_ENTRIES: usize = 8192;

/// Addresses looked up at open across both families and many /8s: each must
/// decode without error, so a file corrupt where traffic will look is
/// refused before it serves.
fn probe_addresses() -> impl Iterator<Item = IpAddr> {
    let v4 = (0..=255u8)
        .step_by(7)
        .map(|first| IpAddr::V4(Ipv4Addr::new(first, 129, 64, 33)));
    let v6 = [
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888),
        Ipv6Addr::new(0x2a00, 0x1450, 0x4001, 0x80e, 0, 0, 0, 0x200e),
        Ipv6Addr::new(0x2400, 0xcb00, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2600, 0x1f18, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2c0f, 0xfb50, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2803, 0x9810, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2002, 0x0808, 0x0808, 0, 0, 0, 0, 1),
    ]
    .map(IpAddr::V6);
    v4.chain(v6)
}

/// The spec caps the metadata section, marker included, at 128 KiB.
const METADATA_MAX_LEN: usize = 128 * 1024;
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

impl Database {
    pub(super) fn open(path: &Path) -> Result<(Database, DatabaseInfo), GeoError> {
        let bytes = crate::lookup::input::read(path, None).map_err(|source| GeoError::Read {
            path: path.to_owned(),
            source,
        })?;
        Database::from_bytes(path, bytes)
    }

    /// Checks `bytes`, read from `path`, and recognises its shape.
    pub(super) fn from_bytes(
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<(Database, DatabaseInfo), GeoError> {
        let invalid = |reason: String| GeoError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if let Some(reason) = not_maxmind(&bytes) {
            return Err(invalid(reason.into()));
        }
        // from_source checks the metadata (format version 2, ip_version 4 or
        // 6, node_count > 0, record_size 24/28/32) and that the search tree
        // fits in the file.
        let bytes = Bytes::from(bytes);
        let reader = Reader::from_source(bytes.clone())
            .map_err(|e| invalid(format!("not a valid MaxMind DB file: {e}")))?;
        let shape = shape_of(path, &reader)?;
        let info = DatabaseInfo::of(path, reader.metadata(), shape);
        let has_ipv4 =
            has_ipv4_data(&reader).map_err(|e| invalid(format!("probe lookup failed: {e}")))?;
        let database = Database {
            ip_version: info.ip_version,
            reader,
            bytes,
            shape,
            has_ipv4,
            records: Cache::new(RECORD_CACHE_ENTRIES),
        };
        for ip in probe_addresses() {
            // The address is not a client's, but errors never carry addresses.
            database
                .find(ip)
                .map_err(|e| invalid(format!("probe lookup failed: {e}")))?;
        }
        Ok((database, info))
    }

    /// This database's record for `ip`, or `None` when it has none.
    pub(super) fn find(&self, ip: IpAddr) -> Result<Option<Location<'_>>, MaxMindDbError> {
        let can_answer = match ip {
            IpAddr::V4(_) => self.has_ipv4,
            IpAddr::V6(_) => self.ip_version != 4,
        };
        if !can_answer {
            return Ok(None);
        }
        let result = self.reader.lookup(ip)?;
        let Some(offset) = result.offset() else {
            return Ok(None);
        };
        if let Some(location) = self
            .records
            .get(&offset)
            .and_then(|cached| cached.location(&self.bytes))
        {
            return Ok(Some(location));
        }
        let location = match self.shape {
            Shape::City => result.decode::<CityRecord<'_>>()?.map(CityRecord::location),
            Shape::Asn | Shape::Flat => {
                result.decode::<FlatRecord<'_>>()?.map(FlatRecord::location)
            }
        };
        if let Some(cached) = location.and_then(|l| CachedRecord::of(&l, &self.bytes)) {
            self.records.insert(offset, cached);
        }
        Ok(location)
    }
}

impl DatabaseInfo {
    fn of(path: &Path, metadata: &Metadata, shape: Shape) -> DatabaseInfo {
        DatabaseInfo {
            path: path.to_owned(),
            name: path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default(),
            shape,
            database_type: metadata.database_type.clone(),
            build_epoch: metadata.build_epoch,
            ip_version: metadata.ip_version,
            node_count: metadata.node_count,
        }
    }
}

/// Why `bytes` cannot be a MaxMind DB file, found without parsing it: the
/// metadata marker must be within the last 128 KiB.
fn not_maxmind(bytes: &[u8]) -> Option<&'static str> {
    if bytes.is_empty() {
        return Some("empty file");
    }
    let tail = &bytes[bytes.len().saturating_sub(METADATA_MAX_LEN)..];
    if !tail
        .windows(METADATA_MARKER.len())
        .any(|w| w == METADATA_MARKER)
    {
        return Some("not a MaxMind DB file (metadata marker not found)");
    }
    None
}

/// How the records are laid out: from `database_type` when it is a known
/// one, else from the records themselves.
fn shape_of(path: &Path, reader: &Reader<Bytes>) -> Result<Shape, GeoError> {
    let database_type = &reader.metadata().database_type;
    if let Some(shape) = shape_from_type(database_type) {
        return Ok(shape);
    }
    shape_from_records(reader)
        .map_err(|e| GeoError::Invalid {
            path: path.to_owned(),
            reason: format!("corrupt record: {e}"),
        })?
        .ok_or_else(|| GeoError::UnknownShape {
            path: path.to_owned(),
            database_type: database_type.clone(),
        })
}

/// Whether any IPv4 address can have a record: the empty network that
/// holds `0.0.0.0` is not all of IPv4 (`0.0.0.0/0`, or `::/96` or wider in
/// an IPv6 tree). Conservative: any data, or any split of the IPv4 space,
/// says yes.
fn has_ipv4_data(reader: &Reader<Bytes>) -> Result<bool, MaxMindDbError> {
    let first = reader.lookup(IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
    if first.has_data() {
        return Ok(true);
    }
    let network = first.network()?;
    Ok(if network.is_ipv4() {
        network.prefix() > 0
    } else {
        network.prefix() > 96
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_must_be_in_the_last_128_kib() {
        assert_eq!(not_maxmind(b""), Some("empty file"));
        let mut bytes = METADATA_MARKER.to_vec();
        bytes.resize(METADATA_MAX_LEN, 0);
        assert_eq!(
            not_maxmind(&bytes),
            None,
            "the marker opens the last 128 KiB"
        );
        bytes.push(0);
        assert_eq!(
            not_maxmind(&bytes),
            Some("not a MaxMind DB file (metadata marker not found)")
        );
    }
}
