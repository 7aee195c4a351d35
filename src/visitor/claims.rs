//! The claims of a signed answer's token (docs/signing.md): who issued it
//! and for which origin, when, for which project, and the answer's facts
//! under the answer's own names (`ip` for `ipAddress`). Written by hand
//! like the answer, with the same field code (`push_facts`).

use std::io::Write as _;

use super::{json, push_facts, VisitorData};

/// The registered claims, and the project.
#[derive(Debug, Clone, Copy)]
pub struct ClaimsHead<'a> {
    pub iss: &'a str,
    /// The allowed calling origin, as echoed in `Access-Control-Allow-Origin`.
    pub aud: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub pid: &'a str,
}

/// `{"iss":..,"aud":..,"iat":..,"exp":..,"pid":..,"ip":..,"countryCode":..,...}`.
pub fn claims(d: &VisitorData<'_>, head: &ClaimsHead<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    out.extend_from_slice(br#"{"iss":"#);
    json::push_str(&mut out, head.iss);
    out.extend_from_slice(br#","aud":"#);
    json::push_str(&mut out, head.aud);
    // Writing into a Vec cannot fail.
    let _ = write!(out, r#","iat":{},"exp":{},"pid":"#, head.iat, head.exp);
    json::push_str(&mut out, head.pid);
    out.extend_from_slice(br#","ip":"#);
    json::push_str(&mut out, &d.ip_address);
    push_facts(&mut out, d);
    out.push(b'}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::lookup::agent::Agent;
    use crate::lookup::geo::Location;
    use crate::visitor::{success_body, visitor};

    #[test]
    fn claims_are_the_answers_facts_under_its_names() {
        let loc = Location {
            country_code: "GB",
            city: "Lon\"don",
            latitude: Some(51.5142),
            longitude: Some(-0.0931),
            ..Location::default()
        };
        let agent = Agent::unknown_shared();
        let d = visitor("81.2.69.142".parse().unwrap(), &loc, &agent);
        let head = ClaimsHead {
            iss: "https://visitor.example",
            aud: "https://www.example.com",
            iat: 1_796_000_000,
            exp: 1_796_000_600,
            pid: "demo",
        };
        let c: serde_json::Value = serde_json::from_slice(&claims(&d, &head)).unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&success_body(&d)).unwrap();
        let mut facts = answer["data"].as_object().unwrap().clone();
        let ip = facts.remove("ipAddress").unwrap();
        let c = c.as_object().unwrap();
        assert_eq!(c["ip"], ip);
        for (name, value) in &facts {
            assert_eq!(&c[name], value, "{name}");
        }
        assert_eq!(c["city"], "Lon\"don");
        assert_eq!(c["iss"], "https://visitor.example");
        assert_eq!(c["aud"], "https://www.example.com");
        assert_eq!(
            (c["iat"].as_i64(), c["exp"].as_i64()),
            (Some(1_796_000_000), Some(1_796_000_600))
        );
        assert_eq!(c["pid"], "demo");
        assert_eq!(c.len(), facts.len() + 6);
    }
}
