//! The answer builder: the success body, error bodies and the HTTPS redirect.
//!
//! Input: fields separated by the byte `0xFF` (never part of UTF-8, so a
//! field can hold any text, newlines and quotes included), lossily decoded:
//!
//! ```text
//!  0 ip           1 country_code  2 country_name  3 region_code  4 region_name
//!  5 city         6 continent     7 timezone      8 postal_code  9 as_organization
//! 10 latitude    11 longitude    12 asn          13 is_eu ("", "true", "false")
//! 14 browser     15 browser_ver  16 os           17 os_version  18 device_brand
//! 19 device_model 20 device_family
//! 21 error status  22 error reason
//! 23 redirect Host (raw bytes; "-" for none)  24 https port  25 path and query
//! ```
//!
//! Missing fields are empty. A latitude or longitude that does not parse as
//! `f64` is absent (`NaN`, `inf` and `1e999` parse).
#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use visitord::lookup::agent::Agent;
use visitord::request::answer::{error, redirect};
use visitord::lookup::geo::Location;
use visitord::net::host::parse_authority;
use visitord::visitor::{success_body, visitor};

/// Every key of `data`, in order (docs/design.md §3).
const KEYS: [&str; 22] = [
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

fuzz_target!(|data: &[u8]| {
    let raw: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    let field = |i: usize| -> Cow<'_, str> {
        String::from_utf8_lossy(raw.get(i).copied().unwrap_or_default())
    };
    let f: Vec<Cow<'_, str>> = (0..26).map(field).collect();

    let ip = f[0].parse::<IpAddr>().unwrap_or_else(|_| {
        let mut b = [0u8; 16];
        for (slot, byte) in b.iter_mut().zip(f[0].bytes()) {
            *slot = byte;
        }
        IpAddr::V6(Ipv6Addr::from(b))
    });
    let loc = Location {
        country_code: &f[1],
        country_name: &f[2],
        region_code: &f[3],
        region_name: &f[4],
        city: &f[5],
        continent_code: &f[6],
        timezone: &f[7],
        postal_code: &f[8],
        as_organization: &f[9],
        latitude: f[10].parse().ok(),
        longitude: f[11].parse().ok(),
        asn: f[12].parse().unwrap_or(0),
        is_eu: f[13].parse().ok(),
    };
    let agent = Agent {
        browser: f[14].to_string(),
        browser_version: f[15].to_string(),
        os: f[16].to_string(),
        os_version: f[17].to_string(),
        device_brand: f[18].to_string(),
        device_model: f[19].to_string(),
        device_family: f[20].to_string(),
    };

    let data = visitor(ip, &loc, &agent);
    let body = success_body(&data);
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "success body is not JSON: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(json["status"], 200);
    assert_eq!(json["result"], "success");
    let obj = json["data"].as_object().expect("data is an object");
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut expected = KEYS.to_vec();
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "data keys");
    for (key, value) in obj {
        assert!(!value.is_null(), "{key} is null");
        match key.as_str() {
            "currencies" | "languages" => {
                let items = value.as_array().expect("an array");
                assert!(items.iter().all(Value::is_string), "{key}: {value}");
            }
            "isEU" => assert!(value.is_boolean()),
            "asn" => assert!(value.is_u64()),
            _ => assert!(value.is_string(), "{key}: {value}"),
        }
    }
    // Text survives the JSON round trip unchanged.
    assert_eq!(obj["ipAddress"], ip.to_canonical().to_string());
    assert_eq!(obj["city"], loc.city);
    assert_eq!(obj["timezone"], loc.timezone);
    assert_eq!(obj["asOrganization"], loc.as_organization);
    assert_eq!(obj["browser"], agent.browser);
    assert_eq!(obj["deviceFamily"], agent.device_family);
    assert_eq!(obj["asn"], loc.asn);
    let lat_long = obj["cityLatLong"].as_str().unwrap_or_default();
    assert_eq!(
        lat_long.is_empty(),
        loc.latitude.is_none() || loc.longitude.is_none()
    );

    // Error bodies.
    let status = f[21].parse::<u16>().unwrap_or(400);
    let a = error(status, &f[22]);
    assert_eq!(a.status, status);
    let json: Value = serde_json::from_slice(&a.body).expect("error body is JSON");
    assert_eq!(json["status"], status);
    assert_eq!(json["result"], *f[22]);
    assert!(json["data"].is_null());
    assert_eq!(json.as_object().map(|o| o.len()), Some(3));

    // The HTTPS redirect.
    let host = raw.get(23).copied().filter(|h| *h != b"-");
    let port = f[24].parse::<u16>().unwrap_or(443);
    // Hosts reach the redirect parsed (`route` reads them once).
    let parsed = host.and_then(|h| parse_authority(h).ok());
    let a = redirect(parsed.as_ref().map(|a| &a.host), port, &f[25]);
    let json: Value = serde_json::from_slice(&a.body).expect("redirect body is JSON");
    assert_eq!(json["status"], a.status);
    for (name, value) in &a.headers {
        assert!(
            !value.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n'),
            "{name}: {value:?}"
        );
    }
    let location = a.headers.iter().find(|(n, _)| n == http::header::LOCATION);
    match a.status {
        308 => {
            let (_, value) = location.expect("a 308 has a Location");
            let text = value.to_str().expect("Location is visible ASCII");
            assert!(text.starts_with("https://"), "{text}");
            // With an origin-form target, the redirect stays on the host the
            // request named.
            if f[25].starts_with('/') {
                let uri: Result<http::Uri, _> = text.parse();
                if let Ok(uri) = uri {
                    let host = parsed.as_ref().map_or("", |a| a.host.as_str());
                    let name = uri.host().unwrap_or("");
                    assert!(
                        host.eq_ignore_ascii_case(name)
                            || host
                                .rsplit_once(':')
                                .is_some_and(|(h, _)| h.eq_ignore_ascii_case(name)),
                        "Host {host:?} redirected to {text:?}"
                    );
                }
            }
        }
        400 => assert!(location.is_none()),
        other => panic!("redirect answered {other}"),
    }
});
