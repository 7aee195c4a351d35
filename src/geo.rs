//! Geo databases: open MaxMind DB files, recognise their shape, and look an
//! address up in all of them, merging the answers (DESIGN.md §4 `[geo]`, §5).
//!
//! Three shapes are understood:
//! - [`Shape::City`]: GeoIP2/GeoLite2 City and Country, and the files DB-IP
//!   and IPinfo publish in that layout (`country.iso_code`, `city.names.en`, …);
//! - [`Shape::Asn`]: GeoLite2-ASN (`autonomous_system_number`, …);
//! - [`Shape::Flat`]: ip-location-db (`country_code`, `state1`, `city`, …,
//!   all at the top level), including its split IPv4-only and IPv6-only files.
//!
//! Records are decoded into small borrowed structs holding only the fields
//! visitord answers with, so a lookup allocates nothing. Many addresses share
//! one record, so each database also keeps recently decoded records, keyed by
//! the record's offset in the file (never by address).

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use maxminddb::{MaxMindDbError, Reader, WithinOptions};
use quick_cache::sync::Cache;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

#[cfg(test)]
#[path = "../tests/common/mmdb.rs"]
mod mmdb_writer;

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

/// The record layout of a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// GeoIP2/GeoLite2 City or Country: nested `country.iso_code` and friends.
    City,
    /// GeoLite2 ASN: `autonomous_system_number`, `autonomous_system_organization`.
    Asn,
    /// ip-location-db: `country_code`, `state1`, `city`, … at the top level.
    Flat,
}

impl Shape {
    /// A short lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::City => "city",
            Shape::Asn => "asn",
            Shape::Flat => "flat",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// Everything the databases know about one address. Strings borrow from the
/// database bytes; an unknown value is `""`, `None` or `0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Location<'a> {
    /// ISO 3166-1 alpha-2, as the database spells it.
    pub country_code: &'a str,
    /// English name, when the database has one (City shape only).
    pub country_name: &'a str,
    /// ISO 3166-2 subdivision code without the country prefix (`ENG`).
    pub region_code: &'a str,
    /// English subdivision name (`England`), or ip-location-db's `state1`.
    pub region_name: &'a str,
    /// English city name.
    pub city: &'a str,
    /// Two-letter continent code (`EU`), City shape only.
    pub continent_code: &'a str,
    /// IANA time zone (`Europe/London`).
    pub timezone: &'a str,
    /// Postal code, often only its first part (`EC4N`).
    pub postal_code: &'a str,
    /// Name of the autonomous system's organisation.
    pub as_organization: &'a str,
    /// Set together with `longitude`, always from the same database.
    pub latitude: Option<f64>,
    /// Set together with `latitude`.
    pub longitude: Option<f64>,
    /// Autonomous system number; 0 when unknown.
    pub asn: u32,
    /// GeoIP2's `is_in_european_union`. GeoIP2 writes it only when true, so
    /// `None` means "not stated", not "not in the EU".
    pub is_eu: Option<bool>,
}

impl<'a> Location<'a> {
    /// Fills every field still empty from `other`.
    fn merge(&mut self, other: Location<'a>) {
        fn fill<'a>(slot: &mut &'a str, value: &'a str) {
            if slot.is_empty() {
                *slot = value;
            }
        }
        fill(&mut self.country_code, other.country_code);
        fill(&mut self.country_name, other.country_name);
        fill(&mut self.region_code, other.region_code);
        fill(&mut self.region_name, other.region_name);
        fill(&mut self.city, other.city);
        fill(&mut self.continent_code, other.continent_code);
        fill(&mut self.timezone, other.timezone);
        fill(&mut self.postal_code, other.postal_code);
        fill(&mut self.as_organization, other.as_organization);
        // A latitude from one database with a longitude from another would
        // be a point nobody claimed, so the pair moves together.
        if self.latitude.is_none() && self.longitude.is_none() {
            if let (Some(lat), Some(long)) = (other.latitude, other.longitude) {
                self.latitude = Some(lat);
                self.longitude = Some(long);
            }
        }
        if self.asn == 0 {
            self.asn = other.asn;
        }
        if self.is_eu.is_none() {
            self.is_eu = other.is_eu;
        }
    }

    /// The string fields, in declaration order.
    fn strings(&self) -> [&'a str; STRING_FIELDS] {
        [
            self.country_code,
            self.country_name,
            self.region_code,
            self.region_name,
            self.city,
            self.continent_code,
            self.timezone,
            self.postal_code,
            self.as_organization,
        ]
    }

    /// The same fields as [`Location::strings`], to fill.
    fn strings_mut(&mut self) -> [&mut &'a str; STRING_FIELDS] {
        [
            &mut self.country_code,
            &mut self.country_name,
            &mut self.region_code,
            &mut self.region_name,
            &mut self.city,
            &mut self.continent_code,
            &mut self.timezone,
            &mut self.postal_code,
            &mut self.as_organization,
        ]
    }

    fn is_complete(&self) -> bool {
        self.strings().iter().all(|s| !s.is_empty())
            && self.latitude.is_some()
            && self.asn != 0
            && self.is_eu.is_some()
    }
}

/// The configured databases, in order.
pub struct GeoDb {
    databases: Vec<Database>,
    infos: Vec<DatabaseInfo>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("databases", &self.infos)
            .finish()
    }
}

struct Database {
    /// The whole file in memory, not mapped: operators replace databases by
    /// writing the file, possibly in place, and a mapping whose file changes
    /// or shrinks under a lookup reads garbage or dies of SIGBUS. A reload
    /// reads the new file; requests keep the old bytes until they finish.
    reader: Reader<Bytes>,
    /// A second handle on the reader's bytes (shared, not copied): cached
    /// records point into them.
    bytes: Bytes,
    shape: Shape,
    ip_version: u16,
    /// False for an IPv6 tree with nothing under `::/96`, such as the IPv6
    /// half of ip-location-db's split files: IPv4 addresses skip it instead
    /// of walking its tree to an empty record on every request.
    has_ipv4: bool,
    /// Decoded records by data-section offset. It lives and dies with this
    /// database's bytes, so a reloaded file starts with an empty cache.
    records: Cache<usize, CachedRecord>,
}

/// How many decoded records each database keeps (about 150 bytes each).
/// Traffic concentrates on far fewer records than addresses: a city
/// database has one record per place, shared by all of its networks.
const RECORD_CACHE_ENTRIES: usize = 8192;

impl GeoDb {
    /// Opens and checks every file, in order. An empty list gives a database
    /// that knows nothing. Any file that cannot be used refuses the whole set,
    /// so a reload keeps the previous one.
    pub fn open(paths: &[PathBuf]) -> Result<GeoDb, GeoError> {
        let mut databases = Vec::with_capacity(paths.len());
        let mut infos = Vec::with_capacity(paths.len());
        for path in paths {
            let (database, info) = Database::open(path)?;
            databases.push(database);
            infos.push(info);
        }
        Ok(GeoDb { databases, infos })
    }

    /// What was opened, in the configured order.
    pub fn databases(&self) -> &[DatabaseInfo] {
        &self.infos
    }

    /// Looks `ip` up in every database in order; the first non-empty value of
    /// each field wins. A database that cannot answer for this address (an
    /// IPv6 address in an IPv4-only file, or a record that fails to decode
    /// because the file is corrupt there) contributes nothing; this never
    /// fails and never panics.
    pub fn lookup(&self, ip: IpAddr) -> Location<'_> {
        // Callers unwrap IPv4-mapped addresses already (DESIGN.md §3); doing
        // it again is cheap and keeps IPv4-only files answering.
        let ip = ip.to_canonical();
        let mut location = Location::default();
        for database in &self.databases {
            if let Ok(Some(found)) = database.find(ip) {
                location.merge(found);
                if location.is_complete() {
                    break;
                }
            }
        }
        location
    }
}

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

/// How many networks shape detection walks before giving up, so a hostile
/// tree (nodes shared to make the walk exponential) cannot hang the open.
const DETECT_MAX_NETWORKS: usize = 4096;
/// How many records with data shape detection looks at.
const DETECT_MAX_RECORDS: usize = 32;
/// The spec caps the metadata section, marker included, at 128 KiB.
const METADATA_MAX_LEN: usize = 128 * 1024;
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

impl Database {
    fn open(path: &Path) -> Result<(Database, DatabaseInfo), GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
            path: path.to_owned(),
            source,
        })?;
        Database::from_bytes(path, bytes)
    }

    /// Checks `bytes`, read from `path`, and recognises its shape.
    fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<(Database, DatabaseInfo), GeoError> {
        let invalid = |reason: String| GeoError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if bytes.is_empty() {
            return Err(invalid("empty file".into()));
        }
        let tail = &bytes[bytes.len().saturating_sub(METADATA_MAX_LEN)..];
        if !tail
            .windows(METADATA_MARKER.len())
            .any(|w| w == METADATA_MARKER)
        {
            return Err(invalid(
                "not a MaxMind DB file (metadata marker not found)".into(),
            ));
        }
        // from_source checks the metadata (format version 2, ip_version 4 or
        // 6, node_count > 0, record_size 24/28/32) and that the search tree
        // fits in the file.
        let bytes = Bytes::from(bytes);
        let reader = Reader::from_source(bytes.clone())
            .map_err(|e| invalid(format!("not a valid MaxMind DB file: {e}")))?;
        let metadata = reader.metadata();
        let shape = match shape_from_type(&metadata.database_type) {
            Some(shape) => shape,
            None => shape_from_records(&reader)
                .map_err(|e| invalid(format!("corrupt record: {e}")))?
                .ok_or_else(|| GeoError::UnknownShape {
                    path: path.to_owned(),
                    database_type: metadata.database_type.clone(),
                })?,
        };
        let info = DatabaseInfo {
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
        };
        let has_ipv4 =
            has_ipv4_data(&reader).map_err(|e| invalid(format!("probe lookup failed: {e}")))?;
        let database = Database {
            ip_version: metadata.ip_version,
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
    fn find(&self, ip: IpAddr) -> Result<Option<Location<'_>>, MaxMindDbError> {
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

/// A decoded [`Location`] that can be kept beside the bytes it came from:
/// its strings, which the decoder borrowed from the database, as ranges of
/// those bytes.
#[derive(Debug, Clone, Copy)]
struct CachedRecord {
    /// In [`Location::strings`] order.
    strings: [Span; STRING_FIELDS],
    latitude: Option<f64>,
    longitude: Option<f64>,
    asn: u32,
    is_eu: Option<bool>,
}

/// `start..start + len` of the database bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

const STRING_FIELDS: usize = 9;

impl CachedRecord {
    /// `None` when a string is not a slice of `bytes` (or lies beyond
    /// 4 GiB): such a record is simply not cached.
    fn of(location: &Location<'_>, bytes: &[u8]) -> Option<CachedRecord> {
        let base = bytes.as_ptr() as usize;
        let span = |s: &str| -> Option<Span> {
            if s.is_empty() {
                return Some(Span::default());
            }
            let start = (s.as_ptr() as usize).checked_sub(base)?;
            if start.checked_add(s.len())? > bytes.len() {
                return None;
            }
            Some(Span {
                start: u32::try_from(start).ok()?,
                len: u32::try_from(s.len()).ok()?,
            })
        };
        let mut strings = [Span::default(); STRING_FIELDS];
        for (slot, s) in strings.iter_mut().zip(location.strings()) {
            *slot = span(s)?;
        }
        Some(CachedRecord {
            strings,
            latitude: location.latitude,
            longitude: location.longitude,
            asn: location.asn,
            is_eu: location.is_eu,
        })
    }

    /// The location again, its strings re-borrowed from `bytes` (checked
    /// again, so a mismatch gives `None`, never a wrong string).
    fn location<'a>(&self, bytes: &'a [u8]) -> Option<Location<'a>> {
        let mut location = Location {
            latitude: self.latitude,
            longitude: self.longitude,
            asn: self.asn,
            is_eu: self.is_eu,
            ..Location::default()
        };
        for (field, span) in location.strings_mut().into_iter().zip(&self.strings) {
            if span.len == 0 {
                continue;
            }
            let start = span.start as usize;
            let raw = bytes.get(start..start + span.len as usize)?;
            *field = std::str::from_utf8(raw).ok()?;
        }
        Some(location)
    }
}

/// Shapes of the vendors' own files, whose `database_type` names them
/// (`GeoLite2-City`, `GeoIP2-Country`, `DBIP-ASN-Lite`, …). Anything else
/// (ip-location-db writes `city ipv4`, `country ipvAll`) is decided by its
/// records.
fn shape_from_type(database_type: &str) -> Option<Shape> {
    let t = database_type.to_ascii_lowercase();
    if !["geoip2-", "geolite2-", "dbip-"]
        .iter()
        .any(|vendor| t.starts_with(vendor))
    {
        return None;
    }
    // City before ASN: `GeoIP2-City-ISP-Org` carries city records.
    if t.contains("city") || t.contains("country") || t.contains("enterprise") {
        Some(Shape::City)
    } else if t.contains("asn") || t.contains("isp") {
        Some(Shape::Asn)
    } else {
        None
    }
}

/// Top-level keys that tell the shapes apart; values are skipped.
#[derive(Deserialize)]
struct ShapeKeys {
    country: Option<IgnoredAny>,
    registered_country: Option<IgnoredAny>,
    continent: Option<IgnoredAny>,
    location: Option<IgnoredAny>,
    subdivisions: Option<IgnoredAny>,
    postal: Option<IgnoredAny>,
    country_code: Option<IgnoredAny>,
    state1: Option<IgnoredAny>,
    autonomous_system_number: Option<IgnoredAny>,
}

impl ShapeKeys {
    fn shape(&self) -> Option<Shape> {
        let city = [
            &self.country,
            &self.registered_country,
            &self.continent,
            &self.location,
            &self.subdivisions,
            &self.postal,
        ];
        if city.iter().any(|key| key.is_some()) {
            Some(Shape::City)
        } else if self.country_code.is_some() || self.state1.is_some() {
            Some(Shape::Flat)
        } else if self.autonomous_system_number.is_some() {
            Some(Shape::Asn)
        } else {
            None
        }
    }
}

/// The shape of the first records that have a telling key, walking the tree
/// from its lowest address.
fn shape_from_records(reader: &Reader<Bytes>) -> Result<Option<Shape>, MaxMindDbError> {
    // Counting empty networks too bounds the walk: between two yielded
    // networks the iterator descends at most one path of the tree.
    let options = WithinOptions::default().include_networks_without_data();
    let mut records = 0;
    for network in reader.networks(options)?.take(DETECT_MAX_NETWORKS) {
        let Some(keys) = network?.decode::<ShapeKeys>()? else {
            continue;
        };
        if let Some(shape) = keys.shape() {
            return Ok(Some(shape));
        }
        records += 1;
        if records == DETECT_MAX_RECORDS {
            break;
        }
    }
    Ok(None)
}

/// GeoIP2 City/Country record, only the fields visitord answers with.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    country: Option<CountryRecord<'a>>,
    #[serde(borrow)]
    continent: Option<ContinentRecord<'a>>,
    /// Only the first (largest) subdivision: GeoIP2 orders them outermost
    /// first, England before Greater London.
    #[serde(borrow)]
    subdivisions: Option<First<SubdivisionRecord<'a>>>,
    #[serde(borrow)]
    city: Option<NamedRecord<'a>>,
    #[serde(borrow)]
    location: Option<LocationRecord<'a>>,
    #[serde(borrow)]
    postal: Option<PostalRecord<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct NamedRecord<'a> {
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    names: Option<Names<'a>>,
    is_in_european_union: Option<bool>,
}

#[derive(Deserialize)]
struct ContinentRecord<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct SubdivisionRecord<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct LocationRecord<'a> {
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
    #[serde(borrow)]
    time_zone: Option<&'a str>,
}

#[derive(Deserialize)]
struct PostalRecord<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

fn english<'a>(names: Option<Names<'a>>) -> &'a str {
    names.and_then(|n| n.en).unwrap_or_default()
}

impl<'a> CityRecord<'a> {
    fn location(self) -> Location<'a> {
        let country = self.country;
        let subdivision = self.subdivisions.and_then(|s| s.0);
        let (latitude, longitude, timezone) = match self.location {
            Some(l) => (l.latitude, l.longitude, l.time_zone),
            None => (None, None, None),
        };
        let (latitude, longitude) = coordinates(latitude, longitude);
        Location {
            country_code: country
                .as_ref()
                .and_then(|c| c.iso_code)
                .unwrap_or_default(),
            is_eu: country.as_ref().and_then(|c| c.is_in_european_union),
            country_name: english(country.and_then(|c| c.names)),
            region_code: subdivision
                .as_ref()
                .and_then(|s| s.iso_code)
                .map(without_country_prefix)
                .unwrap_or_default(),
            region_name: english(subdivision.and_then(|s| s.names)),
            city: english(self.city.and_then(|c| c.names)),
            continent_code: self.continent.and_then(|c| c.code).unwrap_or_default(),
            timezone: timezone.unwrap_or_default(),
            postal_code: self.postal.and_then(|p| p.code).unwrap_or_default(),
            latitude,
            longitude,
            asn: 0,
            as_organization: "",
        }
    }
}

/// ip-location-db and GeoLite2-ASN records: everything at the top level.
/// One struct serves both shapes; keys a file lacks stay `None`.
#[derive(Deserialize)]
struct FlatRecord<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    /// A subdivision name, not a code.
    #[serde(borrow)]
    state1: Option<&'a str>,
    #[serde(borrow)]
    city: Option<&'a str>,
    #[serde(borrow)]
    postcode: Option<&'a str>,
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
    #[serde(borrow)]
    timezone: Option<&'a str>,
    autonomous_system_number: Option<AsNumber>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

impl<'a> FlatRecord<'a> {
    fn location(self) -> Location<'a> {
        let (latitude, longitude) = coordinates(self.latitude, self.longitude);
        Location {
            country_code: self.country_code.unwrap_or_default(),
            region_name: self.state1.unwrap_or_default(),
            city: self.city.unwrap_or_default(),
            postal_code: self.postcode.unwrap_or_default(),
            timezone: self.timezone.unwrap_or_default(),
            latitude,
            longitude,
            asn: self.autonomous_system_number.map_or(0, |n| n.0),
            as_organization: self.autonomous_system_organization.unwrap_or_default(),
            ..Location::default()
        }
    }
}

/// Strips an ISO 3166-2 country prefix (`GB-ENG` → `ENG`); GeoIP2 stores the
/// bare code already, some other databases do not.
fn without_country_prefix(code: &str) -> &str {
    match code.split_once('-') {
        Some((country, rest))
            if country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            rest
        }
        _ => code,
    }
}

/// Both coordinates, or neither when either is missing or off the globe.
fn coordinates(
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
) -> (Option<f64>, Option<f64>) {
    match (latitude, longitude) {
        (Some(Coordinate(lat)), Some(Coordinate(long)))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&long) =>
        {
            (Some(lat), Some(long))
        }
        _ => (None, None),
    }
}

/// A coordinate stored as `double` (GeoIP2) or `float` (ip-location-db);
/// maxminddb's typed `f64` accepts only the former.
struct Coordinate(f64);

impl<'de> Deserialize<'de> for Coordinate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CoordinateVisitor;
        impl Visitor<'_> for CoordinateVisitor {
            type Value = Coordinate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a double or float coordinate")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Coordinate, E> {
                Ok(Coordinate(v))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Coordinate, E> {
                Ok(Coordinate(widen(v)))
            }
        }
        deserializer.deserialize_any(CoordinateVisitor)
    }
}

/// The shortest decimal that rounds to `v`, as an `f64`.
///
/// ip-location-db stores coordinates as 32-bit floats made from decimal
/// source data (51.5142). Widened bit for bit they become 51.514198303…,
/// which the API would print as `51.514198`; the shortest decimal that maps
/// to the same float is the value the source had. Dividing an integer-valued
/// double by an exact power of ten rounds once, so each candidate is the
/// double nearest that decimal.
fn widen(v: f32) -> f64 {
    let wide = f64::from(v);
    let mut scale = 1.0;
    for _ in 0..=9 {
        let candidate = (wide * scale).round() / scale;
        if candidate as f32 == v {
            return candidate;
        }
        scale *= 10.0;
    }
    wide
}

/// An AS number stored in any unsigned width that fits 32 bits.
struct AsNumber(u32);

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AsNumberVisitor;
        impl Visitor<'_> for AsNumberVisitor {
            type Value = AsNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned 32-bit AS number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AsNumber, E> {
                u32::try_from(v)
                    .map(AsNumber)
                    .map_err(|_| E::custom("AS number above 2^32"))
            }
        }
        deserializer.deserialize_any(AsNumberVisitor)
    }
}

/// The first element of an array; the rest are skipped without allocating.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element()?;
                // The decoder reads the array in place: the rest must be
                // consumed for the keys after it to be read.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(PhantomData))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::mmdb_writer::{
        asn_record, city_record, encode, flat_country_record, flat_record, CityFields, Layout,
        MmdbWriter, Value,
    };
    use super::*;
    use std::collections::BTreeMap;
    use tempfile::TempDir;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    fn write(dir: &TempDir, name: &str, writer: &MmdbWriter) -> PathBuf {
        let path = dir.path().join(name);
        writer.write(&path).unwrap();
        path
    }

    fn write_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn open(paths: &[PathBuf]) -> GeoDb {
        GeoDb::open(paths).unwrap()
    }

    const LONDON: CityFields<'static> = CityFields {
        country_code: "GB",
        country_name: "United Kingdom",
        is_eu: None,
        continent_code: "EU",
        subdivision_code: "ENG",
        subdivision_name: "England",
        city: "London",
        latitude: Some(51.5142),
        longitude: Some(-0.0931),
        time_zone: "Europe/London",
        postal_code: "EC4N",
    };

    const PARIS: CityFields<'static> = CityFields {
        country_code: "FR",
        country_name: "France",
        is_eu: Some(true),
        continent_code: "EU",
        subdivision_code: "FR-IDF",
        subdivision_name: "Île-de-France",
        city: "Paris",
        latitude: Some(48.8566),
        longitude: Some(2.3522),
        time_zone: "Europe/Paris",
        postal_code: "75001",
    };

    fn london() -> Location<'static> {
        Location {
            country_code: "GB",
            country_name: "United Kingdom",
            region_code: "ENG",
            region_name: "England",
            city: "London",
            continent_code: "EU",
            timezone: "Europe/London",
            postal_code: "EC4N",
            as_organization: "",
            latitude: Some(51.5142),
            longitude: Some(-0.0931),
            asn: 0,
            is_eu: None,
        }
    }

    fn city_db() -> MmdbWriter {
        let mut w = MmdbWriter::new("GeoIP2-City", 6);
        w.insert(net("81.2.69.0/24"), city_record(&LONDON));
        w.insert(net("2a02:c7c::/32"), city_record(&PARIS));
        w.insert(
            net("2.125.160.0/24"),
            city_record(&CityFields {
                subdivision_code: "GB-ENG",
                ..LONDON
            }),
        );
        w
    }

    // --- the fixture writer ------------------------------------------------

    #[derive(Debug, PartialEq, Deserialize)]
    struct AllTypes {
        short: String,
        medium: String,
        long: String,
        longer: String,
        double: f64,
        float: f32,
        zero: u32,
        small: u16,
        big: u64,
        yes: bool,
        no: bool,
        list: Vec<u32>,
        map: BTreeMap<String, String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct N {
        n: u32,
    }

    #[test]
    fn writer_output_reads_back_with_maxminddb() {
        let all = AllTypes {
            short: "é".into(),
            medium: "m".repeat(100),
            long: "l".repeat(300),
            longer: "x".repeat(70_000),
            double: -0.0931,
            float: 51.5142,
            zero: 0,
            small: 513,
            big: u64::MAX - 1,
            yes: true,
            no: false,
            list: vec![1, 256, 70_000],
            map: BTreeMap::from([("en".into(), "London".into())]),
        };
        let value = Value::map([
            ("short", Value::str(&all.short)),
            ("medium", Value::str(&all.medium)),
            ("long", Value::str(&all.long)),
            ("longer", Value::str(&all.longer)),
            ("double", Value::Double(all.double)),
            ("float", Value::Float(all.float)),
            ("zero", Value::U32(0)),
            ("small", Value::U16(all.small)),
            ("big", Value::U64(all.big)),
            ("yes", Value::Bool(true)),
            ("no", Value::Bool(false)),
            (
                "list",
                Value::Array(all.list.iter().map(|&n| Value::U32(n)).collect()),
            ),
            ("map", Value::map([("en", Value::str("London"))])),
        ]);
        for ip_version in [4u16, 6] {
            for bits in [24u16, 28, 32] {
                let mut w = MmdbWriter::new("Test-Types", ip_version)
                    .record_size(bits)
                    .build_epoch(1_234_567_890);
                w.insert(net("10.0.0.0/8"), Value::map([("n", Value::U32(1))]));
                w.insert(net("10.1.0.0/16"), value.clone());
                // A wider network inserted later replaces what it covers.
                w.insert(net("172.16.5.0/24"), Value::map([("n", Value::U32(7))]));
                w.insert(net("172.16.0.0/12"), Value::map([("n", Value::U32(2))]));
                if ip_version == 6 {
                    w.insert(net("2001:db8::/32"), Value::map([("n", Value::U32(3))]));
                }
                let reader = Reader::from_source(w.to_bytes()).unwrap();
                reader.verify().unwrap();
                let m = reader.metadata();
                assert_eq!(
                    (m.database_type.as_str(), m.ip_version, m.record_size),
                    ("Test-Types", ip_version, bits)
                );
                assert_eq!(m.build_epoch, 1_234_567_890);
                assert_eq!(m.languages, ["en"]);
                let n = |addr: &str| {
                    reader
                        .lookup(ip(addr))
                        .unwrap()
                        .decode::<N>()
                        .unwrap()
                        .map(|n| n.n)
                };
                let got: Option<AllTypes> =
                    reader.lookup(ip("10.1.2.3")).unwrap().decode().unwrap();
                assert_eq!(got.as_ref(), Some(&all), "v{ip_version} {bits}");
                assert_eq!(n("10.2.0.1"), Some(1));
                assert_eq!(n("172.16.5.1"), Some(2));
                assert_eq!(n("11.0.0.1"), None);
                if ip_version == 6 {
                    assert_eq!(n("2001:db8::1"), Some(3));
                    assert_eq!(n("2001:db9::1"), None);
                }
            }
        }
    }

    #[test]
    fn writer_picks_the_smallest_record_size_that_fits() {
        let mut w = MmdbWriter::new("Test", 4);
        w.insert(net("10.0.0.0/8"), Value::map([("n", Value::U32(1))]));
        let reader = Reader::from_source(w.to_bytes()).unwrap();
        assert_eq!(reader.metadata().record_size, 24);
        // 8 bits of tree for a /8 in an IPv4 tree.
        assert_eq!(reader.metadata().node_count, 8);
    }

    // --- shapes and field mapping ------------------------------------------

    #[test]
    fn city_fields_map_to_location() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "city.mmdb", &city_db())]);
        assert_eq!(db.lookup(ip("81.2.69.142")), london());
        assert_eq!(
            db.lookup(ip("2a02:c7c:1234::1")),
            Location {
                country_code: "FR",
                country_name: "France",
                region_code: "IDF",
                region_name: "Île-de-France",
                city: "Paris",
                continent_code: "EU",
                timezone: "Europe/Paris",
                postal_code: "75001",
                as_organization: "",
                latitude: Some(48.8566),
                longitude: Some(2.3522),
                asn: 0,
                is_eu: Some(true),
            }
        );
        // GB-ENG stored with its country prefix answers as ENG.
        assert_eq!(db.lookup(ip("2.125.160.216")), london());
        assert_eq!(db.lookup(ip("8.8.8.8")), Location::default());
        assert_eq!(db.lookup(ip("2001:db8::1")), Location::default());
    }

    #[test]
    fn country_database_fills_country_fields_only() {
        let mut w = MmdbWriter::new("GeoLite2-Country", 6);
        w.insert(
            net("5.9.0.0/16"),
            city_record(&CityFields {
                country_code: "DE",
                country_name: "Germany",
                is_eu: Some(true),
                continent_code: "EU",
                ..CityFields::default()
            }),
        );
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "country.mmdb", &w)]);
        assert_eq!(db.databases()[0].shape, Shape::City);
        assert_eq!(
            db.lookup(ip("5.9.1.1")),
            Location {
                country_code: "DE",
                country_name: "Germany",
                continent_code: "EU",
                is_eu: Some(true),
                ..Location::default()
            }
        );
    }

    #[test]
    fn asn_fields_map_to_location() {
        let mut w = MmdbWriter::new("GeoLite2-ASN", 6);
        w.insert(net("8.8.8.0/24"), asn_record(15169, "GOOGLE"));
        w.insert(net("2001:4860::/32"), asn_record(15169, "GOOGLE"));
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "asn.mmdb", &w)]);
        assert_eq!(db.databases()[0].shape, Shape::Asn);
        let google = Location {
            asn: 15169,
            as_organization: "GOOGLE",
            ..Location::default()
        };
        assert_eq!(db.lookup(ip("8.8.8.8")), google);
        assert_eq!(db.lookup(ip("2001:4860:4860::8888")), google);
    }

    fn flat_london() -> Value {
        flat_record(
            "GB",
            "England",
            "London",
            51.5142,
            -0.0931,
            "EC4N",
            "Europe/London",
        )
    }

    fn flat_paris() -> Value {
        flat_record("FR", "Île-de-France", "Paris", 48.8566, 2.3522, "", "")
    }

    #[test]
    fn flat_fields_map_to_location() {
        let mut w = MmdbWriter::new("city ipv4", 4);
        w.insert(net("81.2.69.0/24"), flat_london());
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "dbip-city-ipv4.mmdb", &w)]);
        assert_eq!(db.databases()[0].shape, Shape::Flat);
        assert_eq!(
            db.lookup(ip("81.2.69.142")),
            Location {
                country_code: "GB",
                region_name: "England",
                city: "London",
                timezone: "Europe/London",
                postal_code: "EC4N",
                latitude: Some(51.5142),
                longitude: Some(-0.0931),
                ..Location::default()
            }
        );
    }

    #[test]
    fn split_ipv4_and_ipv6_flat_files_answer_both_families() {
        let mut v4 = MmdbWriter::new("city ipv4", 4);
        v4.insert(net("81.2.69.0/24"), flat_london());
        let mut v6 = MmdbWriter::new("city ipv6", 6);
        v6.insert(net("2a02:c7c::/32"), flat_paris());
        let dir = tempfile::tempdir().unwrap();
        let v4 = write(&dir, "dbip-city-ipv4.mmdb", &v4);
        let v6 = write(&dir, "dbip-city-ipv6.mmdb", &v6);
        for paths in [[v4.clone(), v6.clone()], [v6.clone(), v4.clone()]] {
            let db = open(&paths);
            assert!(db.databases().iter().all(|d| d.shape == Shape::Flat));
            assert_eq!(db.lookup(ip("81.2.69.142")).city, "London");
            assert_eq!(db.lookup(ip("::ffff:81.2.69.142")).city, "London");
            assert_eq!(db.lookup(ip("2a02:c7c::1")).city, "Paris");
            assert_eq!(db.lookup(ip("2a02:c7c::1")).region_name, "Île-de-France");
            assert_eq!(db.lookup(ip("2a02:c7c::1")).postal_code, "");
            assert_eq!(db.lookup(ip("1.1.1.1")), Location::default());
        }
    }

    #[test]
    fn first_non_empty_value_per_field_wins_in_configured_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut flat = MmdbWriter::new("country ipvAll", 6);
        // Disagrees with the city database on purpose, to show who wins.
        flat.insert(net("81.2.69.0/24"), flat_country_record("IE"));
        flat.insert(net("1.0.0.0/24"), flat_country_record("AU"));
        let mut asn = MmdbWriter::new("GeoLite2-ASN", 6);
        asn.insert(
            net("81.2.69.0/24"),
            asn_record(20712, "Andrews & Arnold Ltd"),
        );
        let flat = write(&dir, "country.mmdb", &flat);
        let city = write(&dir, "city.mmdb", &city_db());
        let asn = write(&dir, "asn.mmdb", &asn);

        let db = open(&[flat.clone(), city.clone(), asn.clone()]);
        let names: Vec<_> = db.databases().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["country", "city", "asn"]);
        let merged = Location {
            country_code: "IE",
            asn: 20712,
            as_organization: "Andrews & Arnold Ltd",
            ..london()
        };
        assert_eq!(db.lookup(ip("81.2.69.142")), merged);
        assert_eq!(
            db.lookup(ip("1.0.0.1")),
            Location {
                country_code: "AU",
                ..Location::default()
            }
        );

        let db = open(&[city, flat, asn]);
        assert_eq!(
            db.lookup(ip("81.2.69.142")),
            Location {
                country_code: "GB",
                ..merged
            }
        );
    }

    #[test]
    fn merge_keeps_the_first_non_empty_value_of_every_field() {
        let full = Location {
            country_code: "FR",
            country_name: "France",
            region_code: "IDF",
            region_name: "Île-de-France",
            city: "Paris",
            continent_code: "EU",
            timezone: "Europe/Paris",
            postal_code: "75001",
            as_organization: "Free SAS",
            latitude: Some(48.8566),
            longitude: Some(2.3522),
            asn: 12322,
            is_eu: Some(true),
        };
        let partial = Location {
            country_code: "GB",
            city: "London",
            latitude: Some(51.5142),
            longitude: Some(-0.0931),
            asn: 20712,
            is_eu: Some(false),
            ..Location::default()
        };
        let mut merged = partial;
        merged.merge(full);
        assert_eq!(
            merged,
            Location {
                country_code: "GB",
                city: "London",
                latitude: Some(51.5142),
                longitude: Some(-0.0931),
                asn: 20712,
                is_eu: Some(false),
                ..full
            }
        );
        // Nothing overwrites with emptiness, and an empty start takes all.
        let mut kept = full;
        kept.merge(Location::default());
        assert_eq!(kept, full);
        let mut taken = Location::default();
        taken.merge(full);
        assert_eq!(taken, full);
    }

    #[test]
    fn coordinates_come_as_a_pair_from_one_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut half = MmdbWriter::new("GeoIP2-City", 6);
        half.insert(
            net("81.2.69.0/24"),
            city_record(&CityFields {
                longitude: None,
                ..LONDON
            }),
        );
        let mut off_globe = MmdbWriter::new("GeoIP2-City", 6);
        off_globe.insert(
            net("81.2.69.0/24"),
            city_record(&CityFields {
                latitude: Some(123.0),
                ..LONDON
            }),
        );
        let mut flat = MmdbWriter::new("city ipv4", 4);
        flat.insert(net("81.2.69.0/24"), flat_paris());
        let db = open(&[
            write(&dir, "half.mmdb", &half),
            write(&dir, "off-globe.mmdb", &off_globe),
            write(&dir, "flat.mmdb", &flat),
            // A later full pair does not replace the first one found.
            write(&dir, "city.mmdb", &city_db()),
        ]);
        let found = db.lookup(ip("81.2.69.142"));
        assert_eq!(found.city, "London");
        assert_eq!(
            (found.latitude, found.longitude),
            (Some(48.8566), Some(2.3522))
        );
    }

    #[test]
    fn missing_fields_stay_empty() {
        let mut w = MmdbWriter::new("GeoIP2-City", 6);
        w.insert(
            net("81.2.69.0/24"),
            city_record(&CityFields {
                country_code: "GB",
                subdivision_name: "England",
                ..CityFields::default()
            }),
        );
        // An empty map, as some writers emit for reserved networks.
        w.insert(net("10.0.0.0/8"), Value::Map(vec![]));
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "sparse.mmdb", &w)]);
        assert_eq!(
            db.lookup(ip("81.2.69.1")),
            Location {
                country_code: "GB",
                region_name: "England",
                ..Location::default()
            }
        );
        assert_eq!(db.lookup(ip("10.1.1.1")), Location::default());
    }

    #[test]
    fn ipv6_addresses_skip_ipv4_only_databases() {
        let mut v4 = MmdbWriter::new("GeoIP2-City", 4);
        v4.insert(net("81.2.69.0/24"), city_record(&LONDON));
        let mut asn = MmdbWriter::new("GeoLite2-ASN", 6);
        asn.insert(net("2a02:c7c::/32"), asn_record(8468, "Entanet"));
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[write(&dir, "v4.mmdb", &v4), write(&dir, "asn.mmdb", &asn)]);
        assert_eq!(db.databases()[0].ip_version, 4);
        assert_eq!(db.lookup(ip("2a02:c7c::1")).asn, 8468);
        assert_eq!(db.lookup(ip("2a02:c7c::1")).country_code, "");
        // IPv4-mapped IPv6 is unwrapped, so the IPv4-only file answers.
        assert_eq!(db.lookup(ip("::ffff:81.2.69.142")), london());
    }

    #[test]
    fn ipv4_addresses_skip_ipv6_files_with_nothing_under_96() {
        let dir = tempfile::tempdir().unwrap();
        let mut v6_only = MmdbWriter::new("city ipv6", 6);
        v6_only.insert(net("2a02:c7c::/32"), flat_paris());
        let mut v6_with_v4 = MmdbWriter::new("city ipvAll", 6);
        v6_with_v4.insert(net("2a02:c7c::/32"), flat_paris());
        v6_with_v4.insert(net("81.2.69.0/24"), flat_london());
        let mut v6_zero = MmdbWriter::new("city ipvAll", 6);
        v6_zero.insert(net("0.0.0.0/24"), flat_london());
        let mut v4 = MmdbWriter::new("city ipv4", 4);
        v4.insert(net("81.2.69.0/24"), flat_london());
        let cases = [
            ("v6_only.mmdb", &v6_only, false),
            ("v6_with_v4.mmdb", &v6_with_v4, true),
            ("v6_zero.mmdb", &v6_zero, true),
            ("v4.mmdb", &v4, true),
        ];
        for (name, writer, has_ipv4) in cases {
            let db = open(&[write(&dir, name, writer)]);
            assert_eq!(db.databases[0].has_ipv4, has_ipv4, "{name}");
        }
        let db = open(&[write(&dir, "v6_with_v4.mmdb", &v6_with_v4)]);
        assert_eq!(db.lookup(ip("81.2.69.142")).city, "London");
        let db = open(&[write(&dir, "v6_only.mmdb", &v6_only)]);
        assert_eq!(db.lookup(ip("81.2.69.142")), Location::default());
        assert_eq!(db.lookup(ip("2a02:c7c::1")).city, "Paris");
    }

    #[test]
    fn repeated_records_come_from_the_cache_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut flat = MmdbWriter::new("city ipv4", 4);
        flat.insert(net("81.2.69.0/24"), flat_london());
        let db = open(&[
            write(&dir, "city.mmdb", &city_db()),
            write(&dir, "flat.mmdb", &flat),
        ]);
        let first = db.lookup(ip("81.2.69.142"));
        let cached: Vec<usize> = db.databases.iter().map(|d| d.records.len()).collect();
        // Another address of the same networks: the same records.
        let second = db.lookup(ip("81.2.69.7"));
        assert_eq!(first, second);
        assert_eq!(first, london());
        let after: Vec<usize> = db.databases.iter().map(|d| d.records.len()).collect();
        assert_eq!(cached, after, "no new entries for records already cached");
        assert_eq!(db.lookup(ip("2a02:c7c::1")).city, "Paris");
        assert_eq!(db.lookup(ip("2a02:c7c::1")).city, "Paris");

        // Strings that are not slices of the bytes are not cached.
        let bytes = &db.databases[0].bytes;
        assert!(CachedRecord::of(&london(), bytes).is_none());
        let decoded = db.databases[0].find(ip("81.2.69.1")).unwrap().unwrap();
        let cached = CachedRecord::of(&decoded, bytes).unwrap();
        assert_eq!(cached.location(bytes), Some(decoded));
        assert_eq!(cached.location(b"short"), None);
    }

    #[test]
    fn a_record_that_fails_to_decode_contributes_nothing() {
        let mut broken = MmdbWriter::new("GeoIP2-City", 6);
        broken.insert(net("198.51.100.0/24"), city_record(&LONDON));
        // `country` must be a map: decoding this record fails.
        broken.insert(
            net("203.0.113.0/24"),
            Value::map([("country", Value::str("GB"))]),
        );
        let mut flat = MmdbWriter::new("country ipvAll", 6);
        flat.insert(net("198.51.100.0/24"), flat_country_record("NL"));
        flat.insert(net("203.0.113.0/24"), flat_country_record("NL"));
        let dir = tempfile::tempdir().unwrap();
        let db = open(&[
            write(&dir, "broken.mmdb", &broken),
            write(&dir, "flat.mmdb", &flat),
        ]);
        assert_eq!(db.lookup(ip("198.51.100.7")).country_code, "GB");
        assert_eq!(
            db.lookup(ip("203.0.113.7")),
            Location {
                country_code: "NL",
                ..Location::default()
            }
        );
    }

    #[test]
    fn no_databases_know_nothing() {
        let db = open(&[]);
        assert!(db.databases().is_empty());
        assert_eq!(db.lookup(ip("81.2.69.142")), Location::default());
    }

    #[test]
    fn float_coordinates_widen_to_the_decimal_they_were_made_from() {
        for (stored, wide) in [
            (51.5142f32, 51.5142f64),
            (-0.0931, -0.0931),
            (37.422, 37.422),
            (-122.085, -122.085),
            (0.1234567, 0.1234567),
            (45.5019, 45.5019),
            (0.0, 0.0),
            (-180.0, -180.0),
        ] {
            assert_eq!(widen(stored), wide, "{stored}");
            assert_eq!(widen(stored) as f32, stored);
        }
        // The float just below 0.1 is 0.09999999, not 0.1.
        assert_eq!(widen(f32::from_bits(0x3DCC_CCCB)), 0.09999999);
        // Beyond nine decimals the float is kept bit for bit.
        assert_eq!(widen(1.234_567_8e-5), f64::from(1.234_567_8e-5f32));
        assert!(widen(f32::NAN).is_nan());
    }

    #[test]
    fn country_prefix_is_stripped_from_subdivision_codes() {
        for (stored, answered) in [
            ("ENG", "ENG"),
            ("GB-ENG", "ENG"),
            ("us-ca", "ca"),
            ("FR-75C", "75C"),
            ("ABC-1", "ABC-1"),
            ("1A-X", "1A-X"),
            ("-X", "-X"),
            ("", ""),
        ] {
            assert_eq!(without_country_prefix(stored), answered, "{stored}");
        }
    }

    // --- detection and metadata --------------------------------------------

    #[test]
    fn shape_comes_from_database_type_or_records() {
        let cases: [(&str, Value, Option<Shape>); 14] = [
            ("GeoIP2-City", Value::Map(vec![]), Some(Shape::City)),
            ("GeoLite2-Country", Value::Map(vec![]), Some(Shape::City)),
            ("DBIP-City-Lite", Value::Map(vec![]), Some(Shape::City)),
            ("GeoIP2-Enterprise", Value::Map(vec![]), Some(Shape::City)),
            ("GeoIP2-City-ISP-Org", Value::Map(vec![]), Some(Shape::City)),
            ("GeoIP2-ISP", Value::Map(vec![]), Some(Shape::Asn)),
            ("GeoLite2-ASN", Value::Map(vec![]), Some(Shape::Asn)),
            ("DBIP-ASN-Lite", Value::Map(vec![]), Some(Shape::Asn)),
            ("city ipv4", flat_london(), Some(Shape::Flat)),
            (
                "country ipvAll",
                flat_country_record("US"),
                Some(Shape::Flat),
            ),
            ("asn ipv4", asn_record(1, "x"), Some(Shape::Asn)),
            ("ipinfo location", city_record(&LONDON), Some(Shape::City)),
            (
                "GeoIP2-Anonymous-IP",
                Value::map([("is_vpn", Value::Bool(true))]),
                None,
            ),
            ("mystery", Value::map([("foo", Value::str("bar"))]), None),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (database_type, record, shape) in cases {
            let mut w = MmdbWriter::new(database_type, 4);
            // An empty record first: detection must look past it.
            w.insert(net("1.0.0.0/8"), Value::Map(vec![]));
            w.insert(net("2.0.0.0/8"), record);
            let path = write(&dir, "db.mmdb", &w);
            match (GeoDb::open(std::slice::from_ref(&path)), shape) {
                (Ok(db), Some(shape)) => {
                    assert_eq!(db.databases()[0].shape, shape, "{database_type}")
                }
                (
                    Err(GeoError::UnknownShape {
                        database_type: t, ..
                    }),
                    None,
                ) => {
                    assert_eq!(t, database_type)
                }
                (other, _) => panic!("{database_type}: {other:?}"),
            }
        }
    }

    #[test]
    fn database_info_describes_each_file() {
        let mut w = MmdbWriter::new("city ipv4", 4).build_epoch(1_780_666_922);
        w.insert(net("81.2.69.0/24"), flat_london());
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "dbip-city-ipv4.mmdb", &w);
        let db = open(std::slice::from_ref(&path));
        let node_count = Reader::from_source(w.to_bytes())
            .unwrap()
            .metadata()
            .node_count;
        assert_eq!(
            db.databases(),
            [DatabaseInfo {
                path,
                name: "dbip-city-ipv4".into(),
                shape: Shape::Flat,
                database_type: "city ipv4".into(),
                build_epoch: 1_780_666_922,
                ip_version: 4,
                node_count,
            }]
        );
        assert_eq!(node_count, 24);
    }

    // --- refusing bad files ------------------------------------------------

    /// A database every probe address hits, so corruption anywhere in its
    /// tree or data is seen at open.
    fn probed_db(shape: Shape) -> (Vec<u8>, Layout) {
        let (database_type, london, paris) = match shape {
            Shape::City => ("GeoIP2-City", city_record(&LONDON), city_record(&PARIS)),
            _ => ("city ipvAll", flat_london(), flat_paris()),
        };
        let mut w = MmdbWriter::new(database_type, 6);
        w.insert(net("0.0.0.0/0"), london);
        w.insert(net("2000::/3"), paris.clone());
        w.insert(net("::1/128"), paris);
        w.to_bytes_with_layout()
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    fn with_metadata(good: &[u8], layout: &Layout, change: (&str, Value)) -> Vec<u8> {
        let mut fields = vec![
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1)),
            ("database_type", Value::str("GeoIP2-City")),
            ("ip_version", Value::U16(6)),
            ("languages", Value::Array(vec![])),
            ("description", Value::Map(vec![])),
            ("node_count", Value::U32(0)),
            ("record_size", Value::U16(24)),
        ];
        let node_count = Reader::from_source(good.to_vec())
            .unwrap()
            .metadata()
            .node_count;
        fields[7].1 = Value::U32(node_count);
        for field in &mut fields {
            if field.0 == change.0 {
                field.1 = change.1.clone();
            }
        }
        let mut bytes = good[..layout.metadata.start].to_vec();
        encode(&Value::map(fields), &mut bytes);
        bytes
    }

    #[test]
    fn corrupt_files_are_refused_with_file_and_reason() {
        let (good, layout) = probed_db(Shape::City);
        let (good_flat, flat_layout) = probed_db(Shape::Flat);
        assert!(good.ends_with(&good[layout.metadata.clone()]));
        let flip = |bytes: &[u8], range: std::ops::Range<usize>| {
            let mut bytes = bytes.to_vec();
            bytes[range].iter_mut().for_each(|b| *b ^= 0xFF);
            bytes
        };
        let mut seed = 7;
        let random: Vec<u8> = (0..4096).map(|_| lcg(&mut seed) as u8).collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.mmdb", vec![], "empty file"),
            ("random.mmdb", random, "metadata marker not found"),
            (
                "text.mmdb",
                b"country,city\nGB,London\n".to_vec(),
                "metadata marker not found",
            ),
            (
                "truncated.mmdb",
                good[..good.len() / 2].to_vec(),
                "metadata marker not found",
            ),
            (
                "metadata-cut.mmdb",
                good[..layout.metadata.start + layout.metadata.len() / 2].to_vec(),
                "not a valid MaxMind DB file",
            ),
            (
                "tree-flipped.mmdb",
                flip(&good, layout.tree.clone()),
                "probe lookup failed",
            ),
            (
                "data-flipped.mmdb",
                flip(&good, layout.data.clone()),
                "probe lookup failed",
            ),
            (
                "flat-tree-flipped.mmdb",
                flip(&good_flat, flat_layout.tree.clone()),
                "corrupt record",
            ),
            (
                "flat-data-flipped.mmdb",
                flip(&good_flat, flat_layout.data.clone()),
                "corrupt record",
            ),
            (
                "record-size.mmdb",
                with_metadata(&good, &layout, ("record_size", Value::U16(20))),
                "record_size",
            ),
            (
                "ip-version.mmdb",
                with_metadata(&good, &layout, ("ip_version", Value::U16(5))),
                "ip_version",
            ),
            (
                "node-count-zero.mmdb",
                with_metadata(&good, &layout, ("node_count", Value::U32(0))),
                "node_count",
            ),
            (
                "node-count-huge.mmdb",
                with_metadata(&good, &layout, ("node_count", Value::U32(1 << 30))),
                "search tree extends beyond",
            ),
            (
                "format-version.mmdb",
                with_metadata(
                    &good,
                    &layout,
                    ("binary_format_major_version", Value::U16(3)),
                ),
                "binary_format_major_version",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        // The unmodified files open, so each refusal is the corruption's doing.
        open(&[
            write_bytes(&dir, "good.mmdb", &good),
            write_bytes(&dir, "good-flat.mmdb", &good_flat),
        ]);
        for (name, bytes, reason) in cases {
            let path = write_bytes(&dir, name, &bytes);
            let err = GeoDb::open(std::slice::from_ref(&path)).expect_err(name);
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("{}: ", path.display())),
                "{message}"
            );
            assert!(message.contains(reason), "{name}: {message}");
        }
    }

    #[test]
    fn unreadable_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.mmdb");
        let err = GeoDb::open(std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(&err, GeoError::Read { path: p, .. } if *p == path));
        assert!(err
            .to_string()
            .starts_with(&format!("{}: cannot read file", path.display())));
    }

    #[test]
    fn one_bad_file_refuses_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "city.mmdb", &city_db());
        let bad = write_bytes(&dir, "bad.mmdb", b"not a database");
        let err = GeoDb::open(&[good, bad.clone()]).unwrap_err();
        assert!(matches!(err, GeoError::Invalid { path, .. } if path == bad));
    }

    #[test]
    fn random_damage_never_panics() {
        let (good, _) = probed_db(Shape::City);
        let (good_flat, _) = probed_db(Shape::Flat);
        let addresses = [
            "0.0.0.0",
            "81.2.69.142",
            "255.255.255.255",
            "::",
            "::1",
            "2a02:c7c::1",
            "ffff::1",
        ]
        .map(ip);
        let mut seed = 42;
        let (mut opened, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut bytes = if round % 2 == 0 {
                good.clone()
            } else {
                good_flat.clone()
            };
            for _ in 0..1 + lcg(&mut seed) % 4 {
                let at = lcg(&mut seed) as usize % bytes.len();
                bytes[at] ^= 1 + (lcg(&mut seed) % 255) as u8;
            }
            if round % 10 == 0 {
                let len = lcg(&mut seed) as usize % bytes.len();
                bytes.truncate(len);
            }
            match Database::from_bytes(Path::new("damaged.mmdb"), bytes) {
                Ok((database, info)) => {
                    let db = GeoDb {
                        databases: vec![database],
                        infos: vec![info],
                    };
                    opened += 1;
                    for &address in &addresses {
                        db.lookup(address);
                    }
                }
                Err(_) => refused += 1,
            }
        }
        // Both outcomes happen, so the test exercises lookups on damaged data.
        assert!(
            opened > 100 && refused > 100,
            "{opened} opened, {refused} refused"
        );
    }

    // --- the shipped database ----------------------------------------------

    #[test]
    fn shipped_country_database_answers_both_families() {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/geo-db/iptoasn-country.mmdb"
        ));
        let db = open(&[path]);
        let info = &db.databases()[0];
        assert_eq!((info.shape, info.ip_version), (Shape::Flat, 6));
        assert_eq!(info.name, "iptoasn-country");
        assert_eq!(db.lookup(ip("8.8.8.8")).country_code, "US");
        assert_eq!(db.lookup(ip("2001:4860:4860::8888")).country_code, "US");
        assert_eq!(db.lookup(ip("::ffff:8.8.8.8")).country_code, "US");
    }

    #[test]
    fn geo_db_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GeoDb>();
    }
}
