//! The record layouts visitord reads ([`Shape`]) and how a database's
//! shape is recognised: from its metadata `database_type`, else from the
//! keys of its first records.

use std::fmt;

use bytes::Bytes;
use maxminddb::{MaxMindDbError, Reader, WithinOptions};
use serde::de::IgnoredAny;
use serde::Deserialize;

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

/// How many networks shape detection walks before giving up, so a hostile
/// tree (nodes shared to make the walk exponential) cannot hang the open.
const DETECT_MAX_NETWORKS: usize = 4096;
/// How many records with data shape detection looks at.
const DETECT_MAX_RECORDS: usize = 32;

/// Shapes of the vendors' own files, whose `database_type` names them
/// (`GeoLite2-City`, `GeoIP2-Country`, `DBIP-ASN-Lite`, …). Anything else
/// (ip-location-db writes `city ipv4`, `country ipvAll`) is decided by its
/// records.
pub(super) fn shape_from_type(database_type: &str) -> Option<Shape> {
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
pub(super) fn shape_from_records(reader: &Reader<Bytes>) -> Result<Option<Shape>, MaxMindDbError> {
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
