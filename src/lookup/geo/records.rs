//! The serde record structs a lookup decodes (GeoIP2 City/Country, and the
//! flat ip-location-db and GeoLite2-ASN layout), with their small
//! deserialisers, turned into a [`Location`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::location::Location;

/// GeoIP2 City/Country record, only the fields visitord answers with.
#[derive(Deserialize)]
pub(super) struct CityRecord<'a> {
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
    pub(super) fn location(self) -> Location<'a> {
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
pub(super) struct FlatRecord<'a> {
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
    pub(super) fn location(self) -> Location<'a> {
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
mod tests {
    use super::*;

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
}
