//! The visitor: what the databases, the country data and the user agent
//! say about one client address (docs/design.md §3), and the two ways it leaves
//! visitord: the API's `data` object, and the `X-Visitor-*` headers a site
//! behind visitord receives.

pub mod claims;
pub mod header_buf;
pub mod json;

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use http::header::HeaderName;
use serde::Serialize;

use crate::config::{VisitorHeader, VisitorHeaderSet};
use crate::lookup::agent::Agent;
use crate::lookup::country;
use crate::lookup::geo::Location;
use header_buf::{HeaderBuf, Mark};
use json::ShortText;

/// One visitor as looked up: the address, what the databases hold for it,
/// and its parsed user agent. [`Visitor::data`] borrows from it.
#[derive(Debug)]
pub struct Visitor<'db> {
    pub ip: IpAddr,
    pub location: Location<'db>,
    pub agent: Arc<Agent>,
}

impl Visitor<'_> {
    pub fn data(&self) -> VisitorData<'_> {
        visitor(self.ip, &self.location, &self.agent)
    }
}

/// The `data` object: VisitorAPI's 15 fields, then our extensions.
/// Strings are `""` when unknown, arrays `[]`, numbers `0`; never null.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VisitorData<'a> {
    pub ip_address: ShortText,
    pub country_code: &'a str,
    pub country_name: &'a str,
    pub currencies: &'a [&'static str],
    pub languages: &'a [String],
    pub region: &'a str,
    pub region_name: &'a str,
    pub city: &'a str,
    pub city_lat_long: ShortText,
    pub browser: &'a str,
    pub browser_version: &'a str,
    pub os: &'a str,
    pub os_version: &'a str,
    pub device_brand: &'a str,
    pub device_model: &'a str,
    pub device_family: &'a str,
    pub continent_code: &'a str,
    pub timezone: &'a str,
    pub postal_code: &'a str,
    #[serde(rename = "isEU")]
    pub is_eu: bool,
    pub asn: u32,
    pub as_organization: &'a str,
}

/// Combines the database answer, country facts and user agent.
pub fn visitor<'a>(ip: IpAddr, loc: &Location<'a>, agent: &'a Agent) -> VisitorData<'a> {
    let facts = country::lookup(loc.country_code);
    let country_code = facts.map_or("", |f| f.code);
    VisitorData {
        ip_address: ShortText::ip(ip.to_canonical()),
        country_code,
        country_name: facts.map_or(loc.country_name, |f| f.name),
        currencies: facts.map_or(&[], |f| &f.currencies[..]),
        languages: facts.map_or(&[], |f| &f.languages[..]),
        region: if loc.region_code.is_empty() {
            loc.region_name
        } else {
            loc.region_code
        },
        region_name: loc.region_name,
        city: loc.city,
        city_lat_long: match (loc.latitude, loc.longitude) {
            (Some(lat), Some(long)) => ShortText::lat_long(lat, long),
            _ => ShortText::new(),
        },
        browser: &agent.browser,
        browser_version: &agent.browser_version,
        os: &agent.os,
        os_version: &agent.os_version,
        device_brand: &agent.device_brand,
        device_model: &agent.device_model,
        device_family: &agent.device_family,
        continent_code: if loc.continent_code.is_empty() {
            facts.map_or("", |f| f.continent_code)
        } else {
            loc.continent_code
        },
        timezone: loc.timezone,
        postal_code: loc.postal_code,
        is_eu: loc.is_eu.unwrap_or(facts.is_some_and(|f| f.is_eu)),
        asn: loc.asn,
        as_organization: loc.as_organization,
    }
}

/// `{"status":200,"result":"success","data":{...}}` in one buffer, written
/// by hand: the same bytes `serde_json` would write for `VisitorData`, in
/// its field order, at a fraction of the cost (`json` module).
pub fn success_body(d: &VisitorData<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    out.extend_from_slice(br#"{"status":200,"result":"success","data":{"ipAddress":"#);
    json::push_str(&mut out, &d.ip_address);
    push_facts(&mut out, d);
    out.extend_from_slice(b"}}");
    out
}

/// [`success_body`] with `"token"` last in `data`: `token` appends the
/// token's characters, which must need no JSON escaping (a compact JWS is
/// base64url and dots). `extra` is room for the token.
pub fn signed_body<E>(
    d: &VisitorData<'_>,
    extra: usize,
    token: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut out = Vec::with_capacity(768 + extra);
    out.extend_from_slice(br#"{"status":200,"result":"success","data":{"ipAddress":"#);
    json::push_str(&mut out, &d.ip_address);
    push_facts(&mut out, d);
    out.extend_from_slice(br#","token":""#);
    token(&mut out)?;
    out.extend_from_slice(br#""}}"#);
    Ok(out)
}

/// Every field of `data` after the address, each with its leading comma:
/// the answer's and the token's claims share it, so a claim always has
/// the answer's name and value.
pub(crate) fn push_facts(out: &mut Vec<u8>, d: &VisitorData<'_>) {
    let strings = |out: &mut Vec<u8>, fields: &[(&[u8], &str)]| {
        for (key, value) in fields {
            out.extend_from_slice(key);
            json::push_str(out, value);
        }
    };
    strings(
        out,
        &[
            (br#","countryCode":"#, d.country_code),
            (br#","countryName":"#, d.country_name),
        ],
    );
    out.extend_from_slice(br#","currencies":"#);
    json::push_str_array(out, d.currencies.iter().copied());
    out.extend_from_slice(br#","languages":"#);
    json::push_str_array(out, d.languages.iter().map(String::as_str));
    strings(
        out,
        &[
            (br#","region":"#, d.region),
            (br#","regionName":"#, d.region_name),
            (br#","city":"#, d.city),
            (br#","cityLatLong":"#, &d.city_lat_long),
            (br#","browser":"#, d.browser),
            (br#","browserVersion":"#, d.browser_version),
            (br#","os":"#, d.os),
            (br#","osVersion":"#, d.os_version),
            (br#","deviceBrand":"#, d.device_brand),
            (br#","deviceModel":"#, d.device_model),
            (br#","deviceFamily":"#, d.device_family),
            (br#","continentCode":"#, d.continent_code),
            (br#","timezone":"#, d.timezone),
            (br#","postalCode":"#, d.postal_code),
        ],
    );
    out.extend_from_slice(if d.is_eu {
        br#","isEU":true,"asn":"#
    } else {
        br#","isEU":false,"asn":"#
    });
    json::push_u32(out, d.asn);
    out.extend_from_slice(br#","asOrganization":"#);
    json::push_str(out, d.as_organization);
}

/// The `X-Visitor-*` header names, in [`VisitorHeader`] order: the
/// prefix and each header's label. Each name's text is made once and kept
/// for the life of the process (eleven short strings), so the names are
/// static ones: copying one per request is free, where a name parsed at run
/// time is a shared buffer with a reference count.
pub static VISITOR_HEADERS: LazyLock<[HeaderName; VisitorHeader::COUNT]> = LazyLock::new(|| {
    std::array::from_fn(|i| {
        let name = format!(
            "{VISITOR_HEADER_PREFIX}{}",
            VisitorHeader::ALL[i].as_label()
        );
        HeaderName::from_static(Box::leak(name.into_boxed_str()))
    })
});

/// Headers a client sends under this prefix never reach the upstream.
pub const VISITOR_HEADER_PREFIX: &str = "x-visitor-";

/// The `X-Visitor-*` values for one visitor, in [`VisitorHeader`] order,
/// for the headers in `wanted` (a site's `visitor_headers`). A wanted
/// header is always present, empty when unknown, so an upstream can tell
/// "unknown" from "not behind visitord".
///
/// Encoding: text is UTF-8 with every byte other than `A-Z a-z 0-9 - . _ ~
/// /` written as `%XX` (upper-case hex), so `decodeURIComponent` and its
/// kin restore it (`São Paulo` → `S%C3%A3o%20Paulo`); lists are such items
/// joined by `,`; `Lat-Long` is `lat,long` with six decimals, as in the API.
/// Written into `buf`; the marks say where.
pub fn visitor_headers(
    d: &VisitorData<'_>,
    wanted: VisitorHeaderSet,
    buf: &mut HeaderBuf,
) -> [Option<Mark>; VisitorHeader::COUNT] {
    let write = |h: VisitorHeader, out: &mut Vec<u8>| match h {
        VisitorHeader::Country => push_encoded(out, d.country_code),
        VisitorHeader::Region => push_encoded(out, d.region),
        VisitorHeader::City => push_encoded(out, d.city),
        VisitorHeader::LatLong => out.extend_from_slice(d.city_lat_long.as_bytes()),
        VisitorHeader::Timezone => push_encoded(out, d.timezone),
        VisitorHeader::Continent => push_encoded(out, d.continent_code),
        VisitorHeader::Currencies => push_encoded_list(out, d.currencies.iter().copied()),
        VisitorHeader::Languages => {
            push_encoded_list(out, d.languages.iter().map(String::as_str));
        }
        VisitorHeader::Browser => push_encoded(out, d.browser),
        VisitorHeader::Os => push_encoded(out, d.os),
        VisitorHeader::Device => push_encoded(out, d.device_family),
    };
    std::array::from_fn(|i| {
        let h = VisitorHeader::ALL[i];
        wanted.contains(h).then(|| buf.push(|out| write(h, out)))
    })
}

fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

/// `s` percent-encoded as described on [`visitor_headers`].
fn push_encoded(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if is_kept(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
        }
    }
}

fn push_encoded_list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    for (k, item) in items.enumerate() {
        if k > 0 {
            out.push(b',');
        }
        push_encoded(out, item);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn visitor_data_has_every_field_typed_and_never_null() {
        let agent = Agent {
            browser: "Chrome".into(),
            browser_version: "131.0.0".into(),
            os: "Windows".into(),
            os_version: "10".into(),
            device_brand: String::new(),
            device_model: String::new(),
            device_family: "Other".into(),
        };
        let loc = Location {
            country_code: "GB",
            region_code: "ENG",
            region_name: "England",
            city: "London",
            latitude: Some(51.5142),
            longitude: Some(-0.0931),
            timezone: "Europe/London",
            postal_code: "EC4N",
            ..Location::default()
        };
        let ip: IpAddr = "81.2.69.142".parse().unwrap();
        let body = success_body(&visitor(ip, &loc, &agent));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["result"], "success");
        let d = v["data"].as_object().unwrap();
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        let expected = [
            "ipAddress",
            "countryCode",
            "countryName",
            "currencies",
            "languages",
            "region",
            "regionName",
            "city",
            "cityLatLong",
            "browser",
            "browserVersion",
            "os",
            "osVersion",
            "deviceBrand",
            "deviceModel",
            "deviceFamily",
            "continentCode",
            "timezone",
            "postalCode",
            "isEU",
            "asn",
            "asOrganization",
        ];
        let mut sorted_expected = expected.to_vec();
        sorted_expected.sort_unstable();
        assert_eq!(keys, sorted_expected, "serde_json::Map sorts keys");
        // Field order in the bytes is VisitorAPI's.
        let text = std::str::from_utf8(&body).unwrap();
        let positions: Vec<usize> = expected
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(d.values().all(|v| !v.is_null()));
        assert_eq!(d["ipAddress"], "81.2.69.142");
        assert_eq!(d["countryCode"], "GB");
        assert_eq!(d["countryName"], "United Kingdom");
        assert_eq!(d["currencies"], serde_json::json!(["GBP"]));
        assert!(d["languages"].as_array().unwrap().contains(&"en-GB".into()));
        assert_eq!(d["region"], "ENG");
        assert_eq!(d["regionName"], "England");
        assert_eq!(d["cityLatLong"], "51.514200,-0.093100");
        assert_eq!(d["continentCode"], "EU");
        assert_eq!(d["isEU"], false);
        assert_eq!(d["asn"], 0);
        assert_eq!(d["browser"], "Chrome");
    }

    #[test]
    fn success_body_is_what_serde_json_writes() {
        fn reference(d: &VisitorData<'_>) -> String {
            let data = serde_json::to_string(d).unwrap();
            format!(r#"{{"status":200,"result":"success","data":{data}}}"#)
        }
        let plain = Agent {
            browser: "Chrome".into(),
            browser_version: "131.0.0".into(),
            os: "Windows".into(),
            os_version: "10".into(),
            device_brand: String::new(),
            device_model: String::new(),
            device_family: "Other".into(),
        };
        let tricky = Agent {
            browser: "a \"quoted\" \\ browser".into(),
            browser_version: "\u{0}\u{1f}\u{7f}".into(),
            os: "line\nbreak\ttab".into(),
            os_version: "é/ü".into(),
            device_brand: "東京 🎉".into(),
            device_model: "\u{2028}".into(),
            device_family: "</script>".into(),
        };
        let cases = [
            (
                "81.2.69.142",
                Location {
                    country_code: "GB",
                    region_code: "ENG",
                    region_name: "England",
                    city: "London",
                    latitude: Some(51.5142),
                    longitude: Some(-0.0931),
                    timezone: "Europe/London",
                    postal_code: "EC4N",
                    ..Location::default()
                },
            ),
            ("2001:db8::1", Location::default()),
            (
                "::ffff:8.8.8.8",
                Location {
                    country_code: "CH",
                    city: "Z\"ü\\rich\r\n",
                    continent_code: "EU",
                    latitude: Some(-0.0000001),
                    longitude: Some(179.9999996),
                    asn: 4_294_967_295,
                    as_organization: "\u{8}\u{c}AS \"Org\"",
                    is_eu: Some(true),
                    ..Location::default()
                },
            ),
            (
                "10.0.0.1",
                Location {
                    country_code: "XX",
                    country_name: "Nowhere\u{1}",
                    ..Location::default()
                },
            ),
        ];
        for (ip, loc) in &cases {
            for agent in [&plain, &tricky] {
                let d = visitor(ip.parse().unwrap(), loc, agent);
                let body = success_body(&d);
                assert_eq!(String::from_utf8(body).unwrap(), reference(&d), "{ip}");
            }
        }
    }

    #[test]
    fn unknown_location_gives_empty_values_not_nulls() {
        let agent = Agent::unknown();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let body = success_body(&visitor(ip, &Location::default(), &agent));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let d = &v["data"];
        assert_eq!(d["ipAddress"], "2001:db8::1");
        assert_eq!(d["countryCode"], "");
        assert_eq!(d["currencies"], serde_json::json!([]));
        assert_eq!(d["languages"], serde_json::json!([]));
        assert_eq!(d["cityLatLong"], "");
        assert_eq!(d["isEU"], false);
        assert_eq!(d["asn"], 0);
    }

    #[test]
    fn region_falls_back_to_name() {
        let agent = Agent::unknown();
        let loc = Location {
            country_code: "DE",
            region_name: "Bavaria",
            ..Location::default()
        };
        let d = visitor("1.2.3.4".parse().unwrap(), &loc, &agent);
        assert_eq!(d.region, "Bavaria");
        assert_eq!(d.region_name, "Bavaria");
        assert!(d.is_eu);
        assert_eq!(d.currencies, &["EUR"]);
    }

    #[test]
    fn mapped_ipv6_is_reported_as_ipv4() {
        let agent = Agent::unknown();
        let d = visitor(
            "::ffff:8.8.8.8".parse().unwrap(),
            &Location::default(),
            &agent,
        );
        assert_eq!(d.ip_address, "8.8.8.8");
    }

    fn agent() -> Agent {
        Agent {
            browser: "Mobile Safari".into(),
            browser_version: "17.5".into(),
            os: "iOS".into(),
            os_version: "17.5".into(),
            device_brand: "Apple".into(),
            device_model: "iPhone".into(),
            device_family: "iPhone".into(),
        }
    }

    #[test]
    fn visitor_header_values() {
        let loc = Location {
            country_code: "BR",
            region_code: "SP",
            region_name: "São Paulo",
            city: "São Paulo",
            latitude: Some(-23.5475),
            longitude: Some(-46.63611),
            timezone: "America/Sao_Paulo",
            ..Location::default()
        };
        let a = agent();
        let d = visitor("200.1.2.3".parse().unwrap(), &loc, &a);
        let values = header_values(&d);
        let got: Vec<(&str, &str)> = VISITOR_HEADERS
            .iter()
            .zip(&values)
            .map(|(n, v)| (n.as_str(), v.as_ref().unwrap().to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-visitor-country", "BR"),
                ("x-visitor-region", "SP"),
                ("x-visitor-city", "S%C3%A3o%20Paulo"),
                ("x-visitor-lat-long", "-23.547500,-46.636110"),
                ("x-visitor-timezone", "America/Sao_Paulo"),
                ("x-visitor-continent", "SA"),
                ("x-visitor-currencies", "BRL"),
                ("x-visitor-languages", "pt-BR"),
                ("x-visitor-browser", "Mobile%20Safari"),
                ("x-visitor-os", "iOS"),
                ("x-visitor-device", "iPhone"),
            ]
        );
        for (name, h) in VISITOR_HEADERS.iter().zip(VisitorHeader::ALL) {
            assert_eq!(
                name.as_str().strip_prefix(VISITOR_HEADER_PREFIX),
                Some(h.as_label()),
                "the header names follow the VisitorHeader table"
            );
        }
    }

    #[test]
    fn unknown_visitor_gets_empty_values() {
        let a = Agent::unknown();
        let d = visitor("10.0.0.1".parse().unwrap(), &Location::default(), &a);
        let values = header_values(&d);
        let empties = values.iter().flatten().filter(|v| v.is_empty()).count();
        assert_eq!(empties, 10, "{values:?}");
        assert_eq!(values[10].as_ref().unwrap(), "Other");
    }

    #[test]
    fn encoding_is_exact_and_reversible() {
        let cases: &[(&str, &str)] = &[
            ("London", "London"),
            ("", ""),
            ("a b", "a%20b"),
            ("Zürich", "Z%C3%BCrich"),
            ("a,b;c\"d\\e%f+g", "a%2Cb%3Bc%22d%5Ce%25f%2Bg"),
            ("line\r\nX-Evil: 1", "line%0D%0AX-Evil%3A%201"),
            ("\u{7f}\u{0}", "%7F%00"),
            ("A-Z_a.z~0/9", "A-Z_a.z~0/9"),
            ("東京", "%E6%9D%B1%E4%BA%AC"),
        ];
        for (input, want) in cases {
            let v = encoded(input);
            assert_eq!(v, *want, "{input:?}");
            assert_eq!(percent_decode(&v), *input, "round trip");
        }
        let list = |items: &[&str]| {
            let mut out = Vec::new();
            push_encoded_list(&mut out, items.iter().copied());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(list(&["en-GB", "cy GB"]), "en-GB,cy%20GB");
        assert_eq!(list(&[]), "");
    }

    /// A decoder for the round trip (the query decoder refuses the control
    /// characters some cases hold).
    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn encoded(s: &str) -> String {
        let mut out = Vec::new();
        push_encoded(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    /// Every header's value, as an upstream receives it.
    fn header_values(d: &VisitorData<'_>) -> Vec<Option<http::HeaderValue>> {
        let mut buf = HeaderBuf::default();
        let marks = visitor_headers(d, VisitorHeaderSet::ALL, &mut buf);
        let values = buf.freeze();
        marks
            .iter()
            .map(|m| m.as_ref().map(|m| values.get(m)))
            .collect()
    }
}
