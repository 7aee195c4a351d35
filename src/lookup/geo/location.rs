//! [`Location`]: everything the databases know about one address, and how
//! the answers of several databases merge into one.

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
    pub(super) fn merge(&mut self, other: Location<'a>) {
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
    pub(super) fn strings(&self) -> [&'a str; STRING_FIELDS] {
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
    pub(super) fn strings_mut(&mut self) -> [&mut &'a str; STRING_FIELDS] {
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

    pub(super) fn is_complete(&self) -> bool {
        self.strings().iter().all(|s| !s.is_empty())
            && self.latitude.is_some()
            && self.asn != 0
            && self.is_eu.is_some()
    }
}

/// How many string fields a [`Location`] has.
pub(super) const STRING_FIELDS: usize = 9;

#[cfg(test)]
mod tests {
    use super::*;

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
}
