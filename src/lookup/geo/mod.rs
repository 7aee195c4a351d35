//! Geo databases: open MaxMind DB files, recognise their shape, and look an
//! address up in all of them, merging the answers (docs/design.md §4 `[geo]`, §5).
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

mod cache;
mod database;
mod error;
mod location;
mod records;
mod shape;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use self::database::Database;
pub use self::database::DatabaseInfo;
pub use self::error::GeoError;
pub use self::location::Location;
pub use self::shape::Shape;

#[cfg(test)]
#[path = "../../../tests/common/mmdb.rs"]
mod mmdb_writer;

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
        // Callers unwrap IPv4-mapped addresses already (docs/design.md §3); doing
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::cache::CachedRecord;
    use super::mmdb_writer::{
        asn_record, city_record, encode, flat_country_record, flat_record, CityFields, Layout,
        MmdbWriter, Value,
    };
    use super::*;
    use maxminddb::Reader;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::path::Path;
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
