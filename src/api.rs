//! The VisitorAPI answer (DESIGN §3), built as plain values: a request's
//! facts go in, an `Answer { status, headers, body }` comes out. No I/O and no
//! Pingora types; `proxy.rs` writes the answer and adds the headers every
//! answer carries (`Content-Type`, `Cache-Control`, `nosniff`, HSTS).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use serde::Serialize;

use crate::agent::Agent;
use crate::config::{is_valid_project_id, ListenerKind};
use crate::country;
use crate::geo::Location;
use crate::json::{self, ShortText};
use crate::limits::{self, Exceeded, Limiter, Refusal};
use crate::origin::{self, Decision, DenyReason, Origin};
use crate::sites::Sites;
use crate::snapshot::Snapshot;

/// Longest query string looked at; longer ones are refused with 414.
pub const MAX_QUERY_LEN: usize = 2048;
/// Most `&`-separated query parameters accepted.
pub const MAX_QUERY_PARAMS: usize = 32;
/// How long browsers may cache a preflight answer. Chromium caps it at 2 h.
pub const PREFLIGHT_MAX_AGE: &str = "7200";
/// `Allow` on a 405 from the API.
pub const API_ALLOW: &str = "GET, HEAD, OPTIONS";
/// `Allow` on a 405 from a site's same-origin API.
pub const SAME_ORIGIN_ALLOW: &str = "GET, HEAD";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// What the HTTP layer writes back: status, route-specific headers, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// `application/json` for everything but the pages visitors of a site
    /// may see (`page`).
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Which project the answer was for, when the request named a known one:
    /// its index in the snapshot's project list (for the metrics label;
    /// never taken from the request unchecked).
    pub project: Option<usize>,
    /// Why an origin was refused (a metrics label).
    pub rejection: Option<DenyReason>,
    /// Which rate limit refused the request (a metrics label).
    pub limited: Option<Exceeded>,
}

impl Answer {
    fn new(status: u16, body: Bytes) -> Answer {
        Answer {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            project: None,
            rejection: None,
            limited: None,
        }
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }
}

/// The method of an API request, as far as the API cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// The facts of one API request, read from the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    pub method: Method,
    pub query: Option<&'a str>,
    pub origin: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// `Access-Control-Request-Headers` of a preflight.
    pub request_headers: Option<&'a [u8]>,
    pub client_ip: IpAddr,
}

/// `{"status":CODE,"result":REASON,"data":null}` with the same CODE as HTTP status.
pub fn error(status: u16, reason: &str) -> Answer {
    #[derive(Serialize)]
    struct Envelope<'a> {
        status: u16,
        result: &'a str,
        data: Option<()>,
    }
    let body = serde_json::to_vec(&Envelope {
        status,
        result: reason,
        data: None,
    })
    .unwrap_or_default();
    Answer::new(status, Bytes::from(body))
}

/// A small HTML page (sites' refusals and upstream failures).
pub fn page(status: u16, html: &'static str) -> Answer {
    let mut a = Answer::new(status, Bytes::from_static(html.as_bytes()));
    a.content_type = HTML;
    a
}

/// 405 with the `Allow` header.
pub fn method_not_allowed(allow: &'static str) -> Answer {
    error(405, "method not allowed").with_header(header::ALLOW, HeaderValue::from_static(allow))
}

pub fn not_found() -> Answer {
    error(404, "not found")
}

/// The same 403 for every refusal, so that callers cannot tell an unknown
/// project from a refused origin (no project enumeration).
pub fn origin_refused(reason: DenyReason) -> Answer {
    let mut a = error(403, "origin not allowed");
    a.rejection = Some(reason);
    a
}

/// 429 with `Retry-After`, for any limit.
pub fn too_many_requests(refusal: Refusal) -> Answer {
    let mut a = error(429, "too many requests").with_header(
        header::RETRY_AFTER,
        HeaderValue::from(limits::retry_after_secs(refusal.retry_after)),
    );
    a.limited = Some(refusal.exceeded);
    a
}

/// Whether request headers announce a body: a non-zero `Content-Length`
/// (or one that is not a number), or any `Transfer-Encoding`.
pub fn declares_body(content_length: Option<&[u8]>, transfer_encoding: bool) -> bool {
    transfer_encoding || content_length.is_some_and(|v| v != b"0")
}

/// Answers an API request: limit, validate, authorise, look up, render.
/// Every request from a client counts against its limit, refused ones too;
/// only allowed ones count against their project's.
pub fn answer(snap: &Snapshot, req: &ApiRequest<'_>, limiter: &Limiter) -> Answer {
    let per_minute = snap.config.limits.requests_per_minute_per_ip;
    if let Err(refusal) = limiter.client_request(req.client_ip, per_minute) {
        return too_many_requests(refusal);
    }
    if req.method == Method::Other {
        return method_not_allowed(API_ALLOW);
    }
    let pid = match project_id_from_query(req.query.unwrap_or("")) {
        Ok(pid) => pid,
        Err(e) => return error(e.status(), &e.to_string()),
    };
    // A project's pages send the same `Origin` every time: once allowed,
    // it is not parsed and matched again (`AllowedOrigins`).
    let known = snap.projects.find(&pid);
    let cached = known
        .zip(req.origin)
        .and_then(|((index, _), raw)| snap.allowed_origins.get(index, raw));
    let (index, project, echo) = match (known, cached) {
        (Some((index, project)), Some(echo)) => (index, project, Ok(echo)),
        _ => {
            let caller = match origin::caller_origin(req.origin, req.referer) {
                Ok(o) => o,
                Err(reason) => return origin_refused(reason),
            };
            let Some((index, project)) = known else {
                return origin_refused(DenyReason::UnknownProject);
            };
            if let Decision::Deny(reason) = origin::decide(&project.domains, &caller) {
                let mut a = origin_refused(reason);
                a.project = Some(index);
                return a;
            }
            let echo = allow_origin_value(&caller);
            if let (Ok(echo), Some(raw)) = (&echo, req.origin) {
                snap.allowed_origins.insert(index, raw, echo.clone());
            }
            (index, project, echo)
        }
    };
    if let Err(refusal) = limiter.project_request(project.id.as_str(), project.requests_per_minute)
    {
        let mut a = too_many_requests(refusal);
        a.project = Some(index);
        return a;
    }

    let mut answer = match req.method {
        Method::Options => preflight(req.request_headers),
        _ => {
            let agent = snap.agents.parse(user_agent(req.user_agent));
            let location = snap.geo.lookup(req.client_ip);
            let data = visitor(req.client_ip, &location, &agent);
            Answer::new(200, Bytes::from(success_body(&data)))
        }
    };
    answer.project = Some(index);
    allow_origin(answer, echo)
}

/// A site's same-origin API (`[[site]] api_path`): the site binding is the
/// authorisation, so there is no `pid`, no origin check and no CORS; the
/// visitor facts are computed by the caller (they also decide the site's
/// country rule).
pub fn same_origin(method: Method, data: &VisitorData<'_>) -> Answer {
    match method {
        Method::Get | Method::Head => Answer::new(200, Bytes::from(success_body(data))),
        Method::Options | Method::Other => method_not_allowed(SAME_ORIGIN_ALLOW),
    }
}

/// The JSON refusal of a site's same-origin API for a visitor its country
/// rule refuses.
pub fn country_refused() -> Answer {
    error(403, "not available in your country or region")
}

/// The value of `Access-Control-Allow-Origin` for an allowed caller: the
/// exact origin, never `*`. A browser's origin is visible ASCII; a value
/// `HeaderValue` refuses cannot be echoed (`Err`), so refusing is the safe
/// answer.
fn allow_origin_value(caller: &Origin) -> Result<HeaderValue, ()> {
    HeaderValue::from_str(caller.as_str()).map_err(|_| ())
}

/// The CORS headers of an allowed request.
fn allow_origin(answer: Answer, echo: Result<HeaderValue, ()>) -> Answer {
    match echo {
        Ok(v) => answer
            .with_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, v)
            .with_header(header::VARY, HeaderValue::from_static("Origin")),
        Err(()) => origin_refused(DenyReason::Malformed),
    }
}

fn preflight(request_headers: Option<&[u8]>) -> Answer {
    let mut a = Answer::new(204, Bytes::new())
        .with_header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        )
        .with_header(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
    if let Some(v) = request_headers.and_then(simple_request_headers) {
        a = a.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    a
}

/// Echoes `Access-Control-Request-Headers` only when every name in it is a
/// CORS-safelisted request header (Fetch standard §4.5); anything else
/// (credentials, custom headers) is not granted.
fn simple_request_headers(raw: &[u8]) -> Option<HeaderValue> {
    const SAFELISTED: [&str; 5] = [
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "range",
    ];
    let text = std::str::from_utf8(raw).ok()?;
    if text.len() > 256 {
        return None;
    }
    let names: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let all_simple = !names.is_empty()
        && names
            .iter()
            .all(|n| SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(n)));
    if !all_simple {
        return None;
    }
    HeaderValue::from_str(&names.join(", ").to_ascii_lowercase()).ok()
}

fn user_agent(raw: Option<&[u8]>) -> &str {
    raw.and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
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
    let strings = |out: &mut Vec<u8>, fields: &[(&[u8], &str)]| {
        for (key, value) in fields {
            out.extend_from_slice(key);
            json::push_str(out, value);
        }
    };
    strings(
        &mut out,
        &[
            (br#","countryCode":"#, d.country_code),
            (br#","countryName":"#, d.country_name),
        ],
    );
    out.extend_from_slice(br#","currencies":"#);
    json::push_str_array(&mut out, d.currencies.iter().copied());
    out.extend_from_slice(br#","languages":"#);
    json::push_str_array(&mut out, d.languages.iter().map(String::as_str));
    strings(
        &mut out,
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
    json::push_u32(&mut out, d.asn);
    out.extend_from_slice(br#","asOrganization":"#);
    json::push_str(&mut out, d.as_organization);
    out.extend_from_slice(b"}}");
    out
}

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing pid parameter")]
    MissingPid,
    #[error("invalid pid parameter")]
    InvalidPid,
    #[error("repeated pid parameter")]
    RepeatedPid,
    #[error("malformed query string")]
    Malformed,
    #[error("too many query parameters")]
    TooManyParams,
    #[error("query string too long")]
    TooLong,
}

impl QueryError {
    pub fn status(&self) -> u16 {
        match self {
            QueryError::TooLong => 414,
            _ => 400,
        }
    }
}

/// Extracts `pid` from a query string, strictly: every parameter must
/// percent-decode (once) to UTF-8 without control characters, `pid` must
/// appear exactly once and match `[A-Za-z0-9_-]{1,64}`.
pub fn project_id_from_query(query: &str) -> Result<Cow<'_, str>, QueryError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong);
    }
    let mut pid = None;
    let mut count = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        count += 1;
        if count > MAX_QUERY_PARAMS {
            return Err(QueryError::TooManyParams);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?;
        if key == "pid" {
            if pid.is_some() {
                return Err(QueryError::RepeatedPid);
            }
            pid = Some(value);
        }
    }
    let pid = pid.ok_or(QueryError::MissingPid)?;
    if pid.is_empty() {
        return Err(QueryError::MissingPid);
    }
    if !is_valid_project_id(&pid) {
        return Err(QueryError::InvalidPid);
    }
    Ok(pid)
}

/// `application/x-www-form-urlencoded` decoding without leniency: a `%` must
/// start a two-digit hex escape, the result must be UTF-8, and control
/// characters (including NUL) are refused.
pub fn percent_decode(s: &str) -> Result<Cow<'_, str>, QueryError> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        // The same test as after decoding: C1 controls (U+0080..=U+009F)
        // are not ASCII but are control characters too.
        return if s.chars().any(char::is_control) {
            Err(QueryError::Malformed)
        } else {
            Ok(Cow::Borrowed(s))
        };
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::Malformed)?;
                let hi = hex_value(hex[0]).ok_or(QueryError::Malformed)?;
                let lo = hex_value(hex[1]).ok_or(QueryError::Malformed)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| QueryError::Malformed)?;
    if text.chars().any(char::is_control) {
        return Err(QueryError::Malformed);
    }
    Ok(Cow::Owned(text))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where a request goes, decided from its path and the listener it came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`: the process is alive.
    Health,
    /// `/readyz`: a snapshot is loaded.
    Ready,
    Api,
    /// Plain listener: everything but health goes to HTTPS.
    Redirect {
        https_port: u16,
    },
    NotFound,
    /// Proxied to the site with this index in `Snapshot::sites`.
    Site(usize),
    /// The same-origin API of that site.
    SiteApi(usize),
}

impl Route {
    /// A bounded metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Api => "api",
            Route::Redirect { .. } => "redirect",
            Route::NotFound => "not_found",
            Route::Site(_) => "site",
            Route::SiteApi(_) => "site_api",
        }
    }
}

/// `api_path` always ends in `/`; the same path without it is the API too.
pub fn route(path: &str, api_path: &str, listener: ListenerKind) -> Route {
    match path {
        "/healthz" => return Route::Health,
        "/readyz" => return Route::Ready,
        _ => {}
    }
    if let ListenerKind::Redirect { https_port } = listener {
        return Route::Redirect { https_port };
    }
    if path == api_path || Some(path) == api_path.strip_suffix('/') {
        Route::Api
    } else {
        Route::NotFound
    }
}

/// Routes a request on any listener. On TLS listeners a `Host` that names a
/// site sends every path to that site (its own `/healthz`, `/api/`...)
/// except the site's `api_path`: the global API path and health answers are
/// for hosts that match no site, so visitord never shadows a path of a
/// site it fronts. Plain listeners redirect every host alike.
pub fn route_request(
    sites: &Sites,
    host: Option<&[u8]>,
    path: &str,
    api_path: &str,
    listener: ListenerKind,
) -> Route {
    if listener == ListenerKind::Tls {
        if let Some(i) = host.and_then(|h| sites.find(h)) {
            let same_origin = sites.get(i).is_some_and(|s| s.config.is_api_path(path));
            return if same_origin {
                Route::SiteApi(i)
            } else {
                Route::Site(i)
            };
        }
    }
    route(path, api_path, listener)
}

/// `308` to the same host, path and query over HTTPS; the port is left out
/// when it is 443. The host comes from the request, so it is checked to be
/// a plain host name or address before it goes into `Location`.
pub fn redirect(host: Option<&[u8]>, https_port: u16, path_and_query: &str) -> Answer {
    let Some(name) = host.and_then(host_without_port) else {
        return error(400, "missing or invalid Host header");
    };
    let mut location = if https_port == 443 {
        format!("https://{name}")
    } else {
        format!("https://{name}:{https_port}")
    };
    push_ascii_uri(&mut location, path_and_query);
    match HeaderValue::from_str(&location) {
        Ok(v) => error(308, "use https").with_header(header::LOCATION, v),
        Err(_) => error(400, "invalid request target"),
    }
}

/// Appends `text` with every non-ASCII byte percent-encoded. The `http`
/// crate lets raw UTF-8 through in a request target, but `Location` is a URI
/// reference, which is ASCII (and `HeaderValue::from_str` would pass the raw
/// bytes on as obs-text).
fn push_ascii_uri(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The host part of a `Host` header: a DNS name (letters, digits, `-`, `.`,
/// `_`) or a bracketed IPv6 literal, without its port.
fn host_without_port(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?;
    if text.is_empty() || text.len() > 260 {
        return None;
    }
    let name = if text.starts_with('[') {
        let end = text.find(']')?;
        let (literal, rest) = text.split_at(end + 1);
        literal[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        if !(rest.is_empty() || port_ok(rest.strip_prefix(':')?)) {
            return None;
        }
        literal
    } else {
        let (name, port) = match text.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (text, None),
        };
        if port.is_some_and(|p| !port_ok(p)) {
            return None;
        }
        name
    };
    let valid = !name.is_empty()
        && (name.starts_with('[')
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    valid.then_some(name)
}

fn port_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Health answers, for every listener.
pub fn health(ready: bool) -> Answer {
    if ready {
        Answer::new(
            200,
            Bytes::from_static(br#"{"status":200,"result":"ok","data":null}"#),
        )
    } else {
        error(503, "no configuration loaded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz run query`: the no-escape fast path let C1
    /// controls through that the decoding path refuses.
    #[test]
    fn fuzz_regression_c1_control() {
        for s in ["\u{80}", "a\u{85}b", "\u{9f}"] {
            assert_eq!(percent_decode(s), Err(QueryError::Malformed), "{s:?}");
            let plus = format!("{s}+");
            assert_eq!(
                percent_decode(&plus),
                Err(QueryError::Malformed),
                "{plus:?}"
            );
        }
        assert_eq!(
            project_id_from_query("pid=demo&x=\u{85}"),
            Err(QueryError::Malformed)
        );
        assert_eq!(percent_decode("\u{a0}é").as_deref(), Ok("\u{a0}é"));
    }

    /// Found by `cargo fuzz run answer`: raw UTF-8 from the request target
    /// went into `Location` unencoded.
    #[test]
    fn fuzz_regression_redirect_non_ascii() {
        let a = redirect(Some(b"example.com"), 443, "/bücher?q=é");
        assert_eq!(a.status, 308);
        let location = a
            .headers
            .iter()
            .find(|(n, _)| n == header::LOCATION)
            .map(|(_, v)| v.to_str().unwrap());
        assert_eq!(location, Some("https://example.com/b%C3%BCcher?q=%C3%A9"));
        let a = redirect(Some(b"example.com:80"), 8443, "/%C3%A9");
        let location = a.headers.iter().find(|(n, _)| n == header::LOCATION);
        assert_eq!(
            location.map(|(_, v)| v.to_str().unwrap()),
            Some("https://example.com:8443/%C3%A9")
        );
    }

    #[test]
    fn error_envelope_shape() {
        let a = error(400, "missing pid parameter");
        assert_eq!(a.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":400,"result":"missing pid parameter","data":null})
        );
    }

    #[test]
    fn reason_is_json_escaped() {
        let a = error(400, "a \"quoted\" \\ reason");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["result"], "a \"quoted\" \\ reason");
    }

    #[test]
    fn method_not_allowed_has_allow() {
        let a = method_not_allowed(API_ALLOW);
        assert_eq!(a.status, 405);
        assert_eq!(
            a.headers,
            vec![(header::ALLOW, HeaderValue::from_static(API_ALLOW))]
        );
    }

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

    #[test]
    fn query_cases() {
        use QueryError::*;
        let cases: &[(&str, Result<&str, QueryError>)] = &[
            ("pid=demo", Ok("demo")),
            ("pid=demo&x=1", Ok("demo")),
            ("x=1&pid=demo&", Ok("demo")),
            ("&&pid=demo", Ok("demo")),
            ("pid=%64emo", Ok("demo")),
            ("%70id=demo", Ok("demo")),
            ("pid=A-b_9", Ok("A-b_9")),
            ("", Err(MissingPid)),
            ("pid=", Err(MissingPid)),
            ("pid", Err(MissingPid)),
            ("PID=demo", Err(MissingPid)),
            ("pid=demo&pid=demo", Err(RepeatedPid)),
            ("pid=demo&pid=", Err(RepeatedPid)),
            ("pid=de%2", Err(Malformed)),
            ("pid=de%zz", Err(Malformed)),
            ("pid=%", Err(Malformed)),
            ("pid=%00", Err(Malformed)),
            ("pid=%0a", Err(Malformed)),
            ("pid=%ff", Err(Malformed)),
            ("x=%c3%28&pid=demo", Err(Malformed)),
            ("pid=demo%2500", Err(InvalidPid)),
            ("pid=de+mo", Err(InvalidPid)),
            ("pid=a.b", Err(InvalidPid)),
            ("pid=%C3%A9", Err(InvalidPid)),
            ("pid=../etc", Err(InvalidPid)),
        ];
        for (q, want) in cases {
            let got = project_id_from_query(q);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "query {q:?}"
            );
        }
        let long_pid = format!("pid={}", "x".repeat(65));
        assert_eq!(project_id_from_query(&long_pid), Err(InvalidPid));
        let many = format!("{}pid=demo", "a=1&".repeat(40));
        assert_eq!(project_id_from_query(&many), Err(TooManyParams));
        let long = format!("pid=demo&x={}", "y".repeat(MAX_QUERY_LEN));
        assert_eq!(project_id_from_query(&long), Err(TooLong));
        assert_eq!(TooLong.status(), 414);
        assert_eq!(Malformed.status(), 400);
    }

    #[test]
    fn preflight_grants_only_safelisted_headers() {
        assert_eq!(
            simple_request_headers(b"Accept, Content-Type"),
            Some(HeaderValue::from_static("accept, content-type"))
        );
        assert_eq!(simple_request_headers(b"x-custom"), None);
        assert_eq!(simple_request_headers(b"accept, authorization"), None);
        assert_eq!(simple_request_headers(b""), None);
        assert_eq!(simple_request_headers(&[0xff, 0xfe]), None);
        let a = preflight(Some(b"accept"));
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
        let names: Vec<_> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "access-control-allow-methods",
                "access-control-max-age",
                "access-control-allow-headers"
            ]
        );
    }

    #[test]
    fn health_answers() {
        assert_eq!(health(true).status, 200);
        assert_eq!(health(false).status, 503);
    }

    #[test]
    fn routes() {
        let tls = ListenerKind::Tls;
        let plain = ListenerKind::Redirect { https_port: 8443 };
        assert_eq!(route("/api/", "/api/", tls), Route::Api);
        assert_eq!(route("/api", "/api/", tls), Route::Api);
        assert_eq!(route("/api/x", "/api/", tls), Route::NotFound);
        assert_eq!(route("/apix", "/api/", tls), Route::NotFound);
        assert_eq!(route("/", "/api/", tls), Route::NotFound);
        assert_eq!(route("/healthz", "/api/", tls), Route::Health);
        assert_eq!(route("/readyz", "/api/", plain), Route::Ready);
        assert_eq!(
            route("/api/", "/api/", plain),
            Route::Redirect { https_port: 8443 }
        );
    }

    #[test]
    fn site_hosts_route_to_their_site_and_keep_every_path() {
        let raw: Vec<crate::sites::RawSite> = vec![toml::from_str(
            "hosts = [\"shop.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"",
        )
        .unwrap()];
        let file = std::path::Path::new("visitord.toml");
        let configs = crate::sites::parse_sites(file, raw, &|p| p.to_path_buf()).unwrap();
        let sites = Sites::build(file, &configs, None).unwrap();
        let tls = ListenerKind::Tls;
        let route = |host: &str, path: &str, l: ListenerKind| {
            route_request(&sites, Some(host.as_bytes()), path, "/api/", l)
        };
        assert_eq!(route("shop.example.com", "/", tls), Route::Site(0));
        assert_eq!(route("Shop.Example.com:8443", "/x?y", tls), Route::Site(0));
        assert_eq!(route("shop.example.com", "/api/", tls), Route::Site(0));
        assert_eq!(route("shop.example.com", "/healthz", tls), Route::Site(0));
        assert_eq!(
            route("shop.example.com", "/visitor-api/", tls),
            Route::SiteApi(0)
        );
        assert_eq!(
            route("shop.example.com", "/visitor-api", tls),
            Route::SiteApi(0)
        );
        assert_eq!(route("localhost", "/api/", tls), Route::Api);
        assert_eq!(route("localhost", "/visitor-api/", tls), Route::NotFound);
        assert_eq!(route("localhost", "/healthz", tls), Route::Health);
        assert_eq!(
            route_request(&sites, None, "/api/", "/api/", tls),
            Route::Api
        );
        let plain = ListenerKind::Redirect { https_port: 8443 };
        assert_eq!(
            route("shop.example.com", "/", plain),
            Route::Redirect { https_port: 8443 }
        );
        assert_eq!(Route::Site(3).label(), "site");
        assert_eq!(Route::SiteApi(3).label(), "site_api");
    }

    #[test]
    fn same_origin_answer_has_no_cors_and_only_get() {
        let agent = Agent::unknown();
        let loc = Location {
            country_code: "GB",
            ..Location::default()
        };
        let data = visitor("81.2.69.142".parse().unwrap(), &loc, &agent);
        let a = same_origin(Method::Get, &data);
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/json");
        assert!(a.headers.is_empty(), "{:?}", a.headers);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["data"]["countryCode"], "GB");
        assert_eq!(same_origin(Method::Head, &data).status, 200);
        for m in [Method::Options, Method::Other] {
            let a = same_origin(m, &data);
            assert_eq!(a.status, 405);
            assert_eq!(
                a.headers,
                vec![(header::ALLOW, HeaderValue::from_static("GET, HEAD"))]
            );
        }
        let refused = country_refused();
        assert_eq!(refused.status, 403);
        let v: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
        assert_eq!(v["data"], serde_json::Value::Null);
        assert_eq!(v["status"], 403);
    }

    #[test]
    fn redirects() {
        let location = |host: &str, port: u16, pq: &str| {
            let a = redirect(Some(host.as_bytes()), port, pq);
            assert_eq!(a.status, 308, "{host}");
            a.headers
                .iter()
                .find(|(n, _)| n == header::LOCATION)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(
            location("example.com:8080", 8443, "/api/?pid=demo"),
            "https://example.com:8443/api/?pid=demo"
        );
        assert_eq!(
            location("example.com", 443, "/x?y=1"),
            "https://example.com/x?y=1"
        );
        assert_eq!(location("[::1]:8080", 8443, "/"), "https://[::1]:8443/");
        assert_eq!(location("127.0.0.1", 8443, "/"), "https://127.0.0.1:8443/");
        for bad in [
            "",
            "evil.com/x",
            "a b",
            "a\r\nb",
            "[::1",
            "[zz]:80",
            "host:",
            "host:99999x",
            "@evil",
        ] {
            assert_eq!(
                redirect(Some(bad.as_bytes()), 443, "/").status,
                400,
                "{bad:?}"
            );
        }
        assert_eq!(redirect(None, 443, "/").status, 400);
    }
}
