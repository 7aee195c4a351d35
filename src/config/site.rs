//! `[[site]]` tables (docs/design.md §4): the sites visitord stands in front of,
//! validated. Names are not resolved and files not read here; the runtime
//! table (`sites::Sites`) is built from these when a snapshot is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api_path::ApiPath;
use super::raw::{ConfigError, RawSite, UnknownCountry};
use crate::lookup::country;
use crate::net::host::{self, HostError, HostKind, Unicode};
use crate::origin::DomainPattern;

/// Longest timeout accepted; anything longer is a typo or a unit mix-up.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Health checks more often than this only load the upstream.
const MIN_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const MAX_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// `allow_countries` / `deny_countries` / `unknown_country` of a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryRule {
    list: CountryList,
    unknown: UnknownCountry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CountryList {
    Everyone,
    /// Sorted ISO 3166-1 alpha-2 codes, upper case.
    Allow(Vec<&'static str>),
    Deny(Vec<&'static str>),
}

impl CountryRule {
    /// Whether deciding needs the visitor's country at all.
    pub fn needs_country(&self) -> bool {
        self.list != CountryList::Everyone || self.unknown != UnknownCountry::Allow
    }

    /// Admits everyone whose country is known, and unknown ones as `unknown` says.
    pub fn everyone(unknown: UnknownCountry) -> CountryRule {
        CountryRule {
            list: CountryList::Everyone,
            unknown,
        }
    }

    /// Whether a visitor from `country` (upper-case alpha-2 as
    /// `country::lookup` spells it, `""` when unknown) may enter.
    pub fn admits(&self, country: &str) -> bool {
        if country.is_empty() {
            return self.unknown == UnknownCountry::Allow;
        }
        match &self.list {
            CountryList::Everyone => true,
            CountryList::Allow(codes) => codes.binary_search(&country).is_ok(),
            CountryList::Deny(codes) => codes.binary_search(&country).is_err(),
        }
    }
}

label_enum! {
    /// The `X-Visitor-*` headers, in the order they are sent; each label is
    /// the name `visitor_headers` lists the header by (`x-visitor-` + label
    /// is the header). Adding one is a line here and its value in
    /// `visitor::visitor_headers`.
    pub enum VisitorHeader {
        Country => "country",
        Region => "region",
        City => "city",
        LatLong => "lat-long",
        Timezone => "timezone",
        Continent => "continent",
        Currencies => "currencies",
        Languages => "languages",
        Browser => "browser",
        Os => "os",
        Device => "device",
    }
}

impl VisitorHeader {
    /// Whether the value comes from the user agent (the others come from
    /// the geo databases and the country data).
    pub const fn from_agent(self) -> bool {
        matches!(
            self,
            VisitorHeader::Browser | VisitorHeader::Os | VisitorHeader::Device
        )
    }
}

/// The headers taken from the user agent, as set bits.
const AGENT_HEADERS: u16 = {
    let mut bits = 0;
    let mut i = 0;
    while i < VisitorHeader::COUNT {
        if VisitorHeader::ALL[i].from_agent() {
            bits |= 1 << i;
        }
        i += 1;
    }
    bits
};

/// Which `X-Visitor-*` headers a site receives: a set of
/// [`VisitorHeader`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorHeaderSet(u16);

impl VisitorHeaderSet {
    pub const ALL: VisitorHeaderSet = VisitorHeaderSet((1 << VisitorHeader::COUNT) - 1);

    pub fn contains(self, header: VisitorHeader) -> bool {
        self.0 & (1 << header.slot()) != 0
    }

    /// Whether a header from the geo databases or country data is wanted.
    pub fn needs_location(self) -> bool {
        self.0 & !AGENT_HEADERS != 0
    }

    /// Whether a header from the user agent is wanted.
    pub fn needs_agent(self) -> bool {
        self.0 & AGENT_HEADERS != 0
    }

    /// The set of these names, or the first one that is not a header.
    fn parse(names: &[String]) -> Result<VisitorHeaderSet, (usize, String)> {
        let mut bits = 0u16;
        for (k, name) in names.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            let key = lower.strip_prefix("x-visitor-").unwrap_or(&lower);
            match VisitorHeader::ALL.iter().find(|h| h.as_label() == key) {
                Some(h) => bits |= 1 << h.slot(),
                None => return Err((k, name.clone())),
            }
        }
        Ok(VisitorHeaderSet(bits))
    }
}

/// An upstream as configured: `name:port`, `1.2.3.4:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// A lower-case DNS name, or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl UpstreamAddr {
    pub fn parse(s: &str) -> Result<UpstreamAddr, &'static str> {
        const BRACKETS: &str = "an IPv6 address needs [brackets] and a port";
        if s.contains("://") || s.contains(['/', '?', '#', '@']) {
            return Err("must be host:port, without scheme or path");
        }
        if !s.starts_with('[') && s.matches(':').count() > 1 {
            return Err(BRACKETS);
        }
        let (name, port) = host::split_port(s).map_err(|_| BRACKETS)?;
        let port = match port {
            Some(p) => host::parse_port(p).map_err(|_| "port must be 1-65535")?,
            None if s.starts_with('[') => return Err(BRACKETS),
            None => return Err("missing :port"),
        };
        let name = host::normalize(name, Unicode::Refuse).map_err(|e| match e {
            HostError::InvalidIpv6 => "invalid IPv6 address",
            _ => "invalid host name",
        })?;
        let host = match name.kind {
            HostKind::Ipv6 => name
                .as_str()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            HostKind::Domain | HostKind::Ipv4 => name.text.into_owned(),
        };
        Ok(UpstreamAddr { host, port })
    }

    /// The address when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Upstream timeouts. Pingora's own defaults are "none"; each is set on
/// every peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Longest wait for the next bytes from the upstream (the response head,
    /// each body chunk, each WebSocket message).
    pub read: Duration,
    /// Longest wait for one write to the upstream to complete.
    pub write: Duration,
    /// How long an unused upstream connection stays in the pool.
    pub idle: Duration,
}

/// One `[[site]]`, validated; names are not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    pub hosts: Vec<DomainPattern>,
    pub upstreams: Vec<UpstreamAddr>,
    pub upstream_tls: bool,
    /// Set explicitly; otherwise each upstream's host name is its SNI.
    pub upstream_sni: Option<String>,
    /// Resolved from the config file's folder.
    pub upstream_ca: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub health_check_interval: Duration,
    /// Same-origin API mount.
    pub api_path: Option<ApiPath>,
    pub countries: CountryRule,
    /// Pass client headers whose names contain `_` to the upstream (nginx's
    /// `underscores_in_headers`); look-alikes of visitord's own headers
    /// are dropped either way.
    pub pass_underscore_headers: bool,
    /// Send the client's header names to the upstream in the case they
    /// came in (`preserve_header_case`); by default they go lower-case, as
    /// HTTP/2 writes them and RFC 9110 allows, which spares a second map
    /// per request.
    pub preserve_header_case: bool,
    /// The `X-Visitor-*` headers the upstream receives (`visitor_headers`;
    /// default all). Without one, and without a country rule, no request
    /// to the site is looked up.
    pub visitor_headers: VisitorHeaderSet,
}

impl SiteConfig {
    /// The first host as written: names the site in logs.
    pub fn label(&self) -> String {
        self.hosts
            .first()
            .map_or_else(String::new, ToString::to_string)
    }
}

/// Validates every `[[site]]`: each on its own, then that no host is
/// claimed twice.
pub fn parse_sites(
    file: &Path,
    raw: Vec<RawSite>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<SiteConfig>, ConfigError> {
    let mut claimed: HashMap<DomainPattern, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let site = parse_site(file, i, r, resolve)?;
        for (j, host) in site.hosts.iter().enumerate() {
            if let Some(k) = claimed.insert(host.clone(), i) {
                let by = if k == i {
                    "listed twice".to_owned()
                } else {
                    format!("already claimed by site[{k}]")
                };
                return Err(ConfigError::invalid(
                    file,
                    format!("site[{i}].hosts[{j}]"),
                    format!("{:?}: {by}", host.to_string()),
                ));
            }
        }
        out.push(site);
    }
    Ok(out)
}

fn parse_site(
    file: &Path,
    i: usize,
    raw: RawSite,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<SiteConfig, ConfigError> {
    let invalid =
        |key: &str, reason: String| ConfigError::invalid(file, format!("site[{i}].{key}"), reason);

    let hosts = hosts(&invalid, &raw.hosts)?;
    let upstreams = upstreams(&invalid, &raw.upstreams)?;
    upstream_tls(&invalid, &raw, &upstreams)?;
    let timeouts = Timeouts {
        connect: timeout(&invalid, "connect_timeout", raw.connect_timeout)?,
        read: timeout(&invalid, "read_timeout", raw.read_timeout)?,
        write: timeout(&invalid, "write_timeout", raw.write_timeout)?,
        idle: timeout(&invalid, "idle_timeout", raw.idle_timeout)?,
    };
    health_check_interval(&invalid, raw.health_check_interval)?;
    let api_path = match &raw.api_path {
        Some(p) => Some(ApiPath::parse(p).map_err(|reason| invalid("api_path", reason))?),
        None => None,
    };
    let list = country_list(&invalid, raw.allow_countries, raw.deny_countries)?;
    let visitor_headers = visitor_headers(&invalid, raw.visitor_headers.as_deref())?;

    Ok(SiteConfig {
        hosts,
        upstreams,
        upstream_tls: raw.upstream_tls,
        upstream_sni: raw.upstream_sni,
        upstream_ca: raw.upstream_ca.as_deref().map(resolve),
        timeouts,
        health_check_interval: raw.health_check_interval,
        api_path,
        countries: CountryRule {
            list,
            unknown: raw.unknown_country,
        },
        pass_underscore_headers: raw.pass_underscore_headers,
        preserve_header_case: raw.preserve_header_case,
        visitor_headers,
    })
}

/// `hosts`: at least one, each a valid domain pattern.
fn hosts(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    raw: &[String],
) -> Result<Vec<DomainPattern>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("hosts", "must list at least one host".into()));
    }
    raw.iter()
        .enumerate()
        .map(|(j, h)| {
            DomainPattern::parse(h).map_err(|e| invalid(&format!("hosts[{j}]"), e.to_string()))
        })
        .collect()
}

/// `upstreams`: at least one, each `host:port`.
fn upstreams(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    raw: &[String],
) -> Result<Vec<UpstreamAddr>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "upstreams",
            "must list at least one host:port".into(),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(j, u)| {
            UpstreamAddr::parse(u)
                .map_err(|e| invalid(&format!("upstreams[{j}]"), format!("{u:?}: {e}")))
        })
        .collect()
}

/// `upstream_sni` and `upstream_ca` only with `upstream_tls`, and a name
/// to check the certificate of every upstream against.
fn upstream_tls(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    raw: &RawSite,
    upstreams: &[UpstreamAddr],
) -> Result<(), ConfigError> {
    if let Some(sni) = &raw.upstream_sni {
        upstream_sni(invalid, sni, raw.upstream_tls)?;
    }
    if raw.upstream_ca.is_some() && !raw.upstream_tls {
        return Err(invalid(
            "upstream_ca",
            "only meaningful with upstream_tls = true".into(),
        ));
    }
    if raw.upstream_tls && raw.upstream_sni.is_none() {
        if let Some(j) = upstreams.iter().position(|u| u.ip().is_some()) {
            return Err(invalid(
                &format!("upstreams[{j}]"),
                format!(
                    "{:?}: an IP address with upstream_tls = true needs upstream_sni, the name its certificate is checked against",
                    raw.upstreams[j]
                ),
            ));
        }
    }
    Ok(())
}

fn upstream_sni(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    sni: &str,
    upstream_tls: bool,
) -> Result<(), ConfigError> {
    if !upstream_tls {
        return Err(invalid(
            "upstream_sni",
            "only meaningful with upstream_tls = true".into(),
        ));
    }
    // rustls (through Pingora) turns certificate verification off for
    // an empty SNI; never let configuration produce one.
    if sni.is_empty() {
        return Err(invalid(
            "upstream_sni",
            "must not be empty (an empty SNI would turn certificate verification off)".into(),
        ));
    }
    if rustls::pki_types::ServerName::try_from(sni).is_err() {
        return Err(invalid(
            "upstream_sni",
            format!("{sni:?}: not a DNS name or IP address"),
        ));
    }
    Ok(())
}

fn timeout(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    d: Duration,
) -> Result<Duration, ConfigError> {
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(invalid(key, "must be more than 0s and at most 24h".into()));
    }
    Ok(d)
}

fn health_check_interval(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    d: Duration,
) -> Result<(), ConfigError> {
    if !(MIN_HEALTH_CHECK_INTERVAL..=MAX_HEALTH_CHECK_INTERVAL).contains(&d) {
        return Err(invalid(
            "health_check_interval",
            "must be between 1s and 1h".into(),
        ));
    }
    Ok(())
}

/// `allow_countries` or `deny_countries` (not both), or everyone.
fn country_list(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
) -> Result<CountryList, ConfigError> {
    Ok(match (allow, deny) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "deny_countries",
                "allow_countries and deny_countries cannot both be set".into(),
            ))
        }
        (Some(codes), None) => {
            CountryList::Allow(country_codes(invalid, "allow_countries", &codes)?)
        }
        (None, Some(codes)) => CountryList::Deny(country_codes(invalid, "deny_countries", &codes)?),
        (None, None) => CountryList::Everyone,
    })
}

fn country_codes(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    codes: &[String],
) -> Result<Vec<&'static str>, ConfigError> {
    if codes.is_empty() {
        return Err(invalid(key, "must list at least one country code".into()));
    }
    let mut out = codes
        .iter()
        .enumerate()
        .map(|(k, c)| {
            country::lookup(c).map(|f| f.code).ok_or_else(|| {
                invalid(
                    &format!("{key}[{k}]"),
                    format!("{c:?}: not an ISO 3166-1 alpha-2 country code"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `visitor_headers`: the names listed, or every header when absent.
fn visitor_headers(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    names: Option<&[String]>,
) -> Result<VisitorHeaderSet, ConfigError> {
    let Some(names) = names else {
        return Ok(VisitorHeaderSet::ALL);
    };
    VisitorHeaderSet::parse(names).map_err(|(k, name)| {
        invalid(
            &format!("visitor_headers[{k}]"),
            format!(
                "{name:?}: not a visitor header (one of {})",
                VisitorHeader::ALL
                    .iter()
                    .map(|h| h.as_label())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    const FILE: &str = "/etc/visitord/visitord.toml";

    fn raw(text: &str) -> RawSite {
        toml::from_str(text).unwrap()
    }

    fn parse_one(text: &str) -> Result<SiteConfig, ConfigError> {
        parse_sites(Path::new(FILE), vec![raw(text)], &|p| {
            Path::new("/etc/visitord").join(p)
        })
        .map(|mut v| v.remove(0))
    }

    fn error(text: &str) -> String {
        parse_one(text).unwrap_err().to_string()
    }

    const MINIMAL: &str = "hosts = [\"www.example.com\"]\nupstreams = [\"127.0.0.1:8080\"]\n";

    #[test]
    fn defaults() {
        let s = parse_one(MINIMAL).unwrap();
        assert_eq!(
            s.hosts,
            vec![DomainPattern::Exact("www.example.com".into())]
        );
        assert_eq!(
            s.upstreams,
            vec![UpstreamAddr {
                host: "127.0.0.1".into(),
                port: 8080
            }]
        );
        assert!(!s.upstream_tls);
        assert_eq!(s.upstream_sni, None);
        assert_eq!(s.upstream_ca, None);
        assert_eq!(
            s.timeouts,
            Timeouts {
                connect: Duration::from_secs(5),
                read: Duration::from_secs(60),
                write: Duration::from_secs(60),
                idle: Duration::from_secs(60),
            }
        );
        assert_eq!(s.health_check_interval, Duration::from_secs(5));
        assert_eq!(s.api_path, None);
        assert_eq!(s.countries, CountryRule::everyone(UnknownCountry::Allow));
        assert_eq!(s.label(), "www.example.com");
    }

    #[test]
    fn every_key() {
        let s = parse_one(
            r#"
hosts = ["Shop.Example.com.", "*.shop.example.com"]
upstreams = ["App.Internal:8443", "[::1]:9443"]
upstream_tls = true
upstream_sni = "app.internal"
upstream_ca = "ca.pem"
connect_timeout = "2s"
read_timeout = "5m"
write_timeout = "30s"
idle_timeout = "90s"
health_check_interval = "10s"
api_path = "/visitor-api"
allow_countries = ["gb", "DE", "GB"]
unknown_country = "deny"
"#,
        )
        .unwrap();
        assert_eq!(
            s.hosts,
            vec![
                DomainPattern::Exact("shop.example.com".into()),
                DomainPattern::Wildcard("shop.example.com".into())
            ]
        );
        assert_eq!(s.upstreams[0].host, "app.internal");
        assert_eq!(s.upstreams[1].to_string(), "[::1]:9443");
        assert_eq!(s.upstream_ca, Some(PathBuf::from("/etc/visitord/ca.pem")));
        assert_eq!(s.timeouts.read, Duration::from_secs(300));
        assert_eq!(
            s.api_path.as_ref().map(ApiPath::as_str),
            Some("/visitor-api/")
        );
        assert!(s.countries.admits("GB"));
        assert!(s.countries.admits("DE"));
        assert!(!s.countries.admits("US"));
        assert!(!s.countries.admits(""));
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("hosts = []\nupstreams = [\"a:1\"]", "site[0].hosts: must list"),
            ("hosts = [\"*.\"]\nupstreams = [\"a:1\"]", "site[0].hosts[0]:"),
            ("hosts = [\"a.com\"]\nupstreams = []", "site[0].upstreams: must list"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a\"]", "site[0].upstreams[0]: \"a\": missing :port"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:0\"]", "port must be 1-65535"),
            ("hosts = [\"a.com\"]\nupstreams = [\"http://a:80\"]", "without scheme"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a b:80\"]", "invalid host name"),
            ("hosts = [\"a.com\"]\nupstreams = [\"::1:80\"]", "needs [brackets]"),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"10.0.0.1:443\"]\nupstream_tls = true",
                "site[0].upstreams[0]: \"10.0.0.1:443\": an IP address with upstream_tls = true needs upstream_sni",
            ),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_tls = true\nupstream_sni = \"\"",
                "site[0].upstream_sni: must not be empty",
            ),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_tls = true\nupstream_sni = \"a b\"",
                "site[0].upstream_sni: \"a b\": not a DNS name",
            ),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_sni = \"a\"", "site[0].upstream_sni: only meaningful"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:443\"]\nupstream_ca = \"ca.pem\"", "site[0].upstream_ca: only meaningful"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nconnect_timeout = \"0s\"", "site[0].connect_timeout: must be more than 0s"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nread_timeout = \"25h\"", "site[0].read_timeout:"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nhealth_check_interval = \"100ms\"", "site[0].health_check_interval: must be between"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\napi_path = \"x\"", "site[0].api_path:"),
            (
                "hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nallow_countries = [\"GB\"]\ndeny_countries = [\"US\"]",
                "site[0].deny_countries: allow_countries and deny_countries cannot both be set",
            ),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\ndeny_countries = [\"US\", \"XX\"]", "site[0].deny_countries[1]: \"XX\": not an ISO 3166-1"),
            ("hosts = [\"a.com\"]\nupstreams = [\"a:1\"]\nallow_countries = []", "site[0].allow_countries: must list"),
        ];
        for (text, want) in cases {
            let e = error(text);
            assert!(e.starts_with(FILE), "{e}");
            assert!(e.contains(want), "{text:?}\n  got: {e}\n want: {want}");
        }
    }

    #[test]
    fn unknown_key_and_bad_enum_are_refused() {
        let e = toml::from_str::<RawSite>("hosts = [\"a\"]\nupstreams = [\"a:1\"]\nupstream = 1")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `upstream`"), "{e}");
        let e = toml::from_str::<RawSite>(
            "hosts = [\"a\"]\nupstreams = [\"a:1\"]\nunknown_country = \"maybe\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn a_host_claimed_twice_is_refused() {
        let two = vec![
            raw(MINIMAL),
            raw("hosts = [\"a.com\", \"WWW.example.com\"]\nupstreams = [\"b:1\"]"),
        ];
        let e = parse_sites(Path::new(FILE), two, &|p| p.to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site[1].hosts[1]: \"www.example.com\": already claimed by site[0]"),
            "{e}"
        );
        let one = vec![raw(
            "hosts = [\"*.a.com\", \"*.A.com\"]\nupstreams = [\"b:1\"]",
        )];
        let e = parse_sites(Path::new(FILE), one, &|p| p.to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("site[0].hosts[1]: \"*.a.com\": listed twice"),
            "{e}"
        );
    }

    #[test]
    fn visitor_headers_are_chosen_by_name() {
        let all = parse_one(MINIMAL).unwrap().visitor_headers;
        assert_eq!(all, VisitorHeaderSet::ALL);
        assert!(all.needs_location() && all.needs_agent());
        let some = parse_one(&format!(
            "{MINIMAL}visitor_headers = [\"country\", \"X-Visitor-Browser\"]"
        ))
        .unwrap()
        .visitor_headers;
        let chosen: Vec<&str> = VisitorHeader::ALL
            .iter()
            .filter(|&&h| some.contains(h))
            .map(|h| h.as_label())
            .collect();
        assert_eq!(chosen, ["country", "browser"]);
        let geo = parse_one(&format!("{MINIMAL}visitor_headers = [\"city\"]"))
            .unwrap()
            .visitor_headers;
        assert!(geo.needs_location() && !geo.needs_agent());
        let agent = parse_one(&format!("{MINIMAL}visitor_headers = [\"os\"]"))
            .unwrap()
            .visitor_headers;
        assert!(!agent.needs_location() && agent.needs_agent());
        let none = parse_one(&format!("{MINIMAL}visitor_headers = []"))
            .unwrap()
            .visitor_headers;
        assert!(!none.needs_location() && !none.needs_agent());
        let e = error(&format!("{MINIMAL}visitor_headers = [\"country\", \"ip\"]"));
        assert!(
            e.contains("site[0].visitor_headers[1]: \"ip\": not a visitor header"),
            "{e}"
        );
    }

    #[test]
    fn country_rules() {
        let deny = parse_one(&format!("{MINIMAL}deny_countries = [\"US\"]"))
            .unwrap()
            .countries;
        assert!(!deny.admits("US"));
        assert!(deny.admits("GB"));
        assert!(deny.admits(""), "unknown_country defaults to allow");
        let strict = CountryRule::everyone(UnknownCountry::Deny);
        assert!(strict.admits("US"));
        assert!(!strict.admits(""));
        assert!(strict.needs_country() && deny.needs_country());
        assert!(!CountryRule::everyone(UnknownCountry::Allow).needs_country());
    }
}
