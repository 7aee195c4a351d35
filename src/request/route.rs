//! A request, read once: [`RequestFacts`] holds everything visitord
//! decides on (host, peer, client address, method, path, query, origin,
//! user agent), read from the request head by [`RequestFacts::read`]; then
//! [`route`] says where it goes. Both are plain functions over `http`
//! types, so they are tested without a socket.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::certs::acme::challenge::http01_token;
use crate::config::{Challenge, ListenerKind, JWKS_FILE};
use crate::net::client_ip::{self, ClientIp};
use crate::net::host::{self, Authority, HostError};
use crate::observe::metrics::RouteLabel;
use crate::snapshot::Snapshot;

/// The method of a request, as far as visitord's own answers care.
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

/// The facts of one request, read from its head.
#[derive(Debug, Clone)]
pub struct RequestFacts<'r> {
    pub listener: ListenerKind,
    pub method: Method,
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// For redirects: the request target's path and query, `/` when empty.
    pub path_and_query: &'r str,
    /// `Host` (or HTTP/2 `:authority`) as received, for `X-Forwarded-Host`.
    pub host_raw: Option<&'r [u8]>,
    /// The same, parsed by `host::parse_authority`; `None` when absent.
    pub host: Option<Result<Authority<'r>, HostError>>,
    /// The TCP peer (or PROXY protocol source), canonical.
    pub peer: IpAddr,
    /// Whether `peer` is one of `client_ip.trusted_proxies`.
    pub peer_trusted: bool,
    /// The client, behind trusted proxies (docs/design.md §3, "Client IP").
    pub client: ClientIp,
    /// `Origin` and `Referer`; a header sent more than once reads as empty
    /// (hence malformed) rather than picking one of the copies.
    pub origin: Option<&'r [u8]>,
    pub referer: Option<&'r [u8]>,
    /// `""` when absent or not UTF-8.
    pub user_agent: &'r str,
    /// `Access-Control-Request-Headers` of a preflight.
    pub cors_request_headers: Option<&'r [u8]>,
    /// A non-zero (or non-numeric) `Content-Length`, or any
    /// `Transfer-Encoding`: visitord's own answers take no body.
    pub declares_body: bool,
    /// The size of the head as HTTP/1 would send it: request line and
    /// header lines.
    pub head_len: usize,
    headers: &'r HeaderMap,
}

impl<'r> RequestFacts<'r> {
    /// Reads a request that arrived from `peer` on a `listener`, with the
    /// trusted proxies of `snap`.
    pub fn read(
        req: &'r Parts,
        peer: IpAddr,
        listener: ListenerKind,
        snap: &Snapshot,
    ) -> RequestFacts<'r> {
        let headers = &req.headers;
        let peer = peer.to_canonical();
        let trusted = &snap.config.client_ip.trusted_proxies;
        let peer_trusted = trusted.contains(peer);
        let client = if peer_trusted {
            client_ip::client_ip_from_lines(
                peer,
                trusted,
                lines(headers, &X_FORWARDED_FOR),
                lines(headers, &header::FORWARDED),
            )
        } else {
            ClientIp {
                ip: peer,
                via: client_ip::Via::Peer,
            }
        };
        let host_raw = headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        RequestFacts {
            listener,
            method: Method::from_bytes(req.method.as_str().as_bytes()),
            path: req.uri.path(),
            query: req.uri.query(),
            path_and_query: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            host_raw,
            host: host_raw.map(host::parse_authority),
            peer,
            peer_trusted,
            client,
            origin: single(headers, header::ORIGIN),
            referer: single(headers, header::REFERER),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .unwrap_or(""),
            cors_request_headers: headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .map(HeaderValue::as_bytes),
            declares_body: headers.contains_key(header::TRANSFER_ENCODING)
                || headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0"),
            head_len: head_len(req),
            headers,
        }
    }

    /// The host, when the request named a valid one.
    pub fn valid_host(&self) -> Option<&host::Host<'r>> {
        match &self.host {
            Some(Ok(a)) => Some(&a.host),
            _ => None,
        }
    }

    /// Every line of `X-Forwarded-For`, in the order received.
    pub fn forwarded_for_lines(&self) -> impl DoubleEndedIterator<Item = &'r [u8]> {
        lines(self.headers, &X_FORWARDED_FOR)
    }
}

/// `METHOD TARGET HTTP/1.1\r\n`, `name: value\r\n` for each header, and
/// the blank line.
fn head_len(req: &Parts) -> usize {
    let target = req.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn lines<'r>(
    headers: &'r HeaderMap,
    name: &HeaderName,
) -> impl DoubleEndedIterator<Item = &'r [u8]> {
    headers.get_all(name).iter().map(HeaderValue::as_bytes)
}

/// A header that must appear at most once: a repeated one reads as an empty
/// (hence malformed) value instead of picking one of the copies.
fn single(headers: &HeaderMap, name: HeaderName) -> Option<&[u8]> {
    let mut values = headers.get_all(name).into_iter();
    let first = values.next()?;
    match values.next() {
        None => Some(first.as_bytes()),
        Some(_) => Some(b""),
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`: the process is alive.
    Health,
    /// `/readyz`: a snapshot is loaded.
    Ready,
    Api,
    /// Plain listener: everything but health (and ACME's HTTP-01
    /// challenges) goes to HTTPS.
    Redirect {
        https_port: u16,
    },
    /// Plain listener, `/.well-known/acme-challenge/TOKEN` while `[acme]`
    /// uses HTTP-01: answered from `acme.state_dir`, before any redirect
    /// (RFC 8555 §8.3).
    AcmeChallenge,
    NotFound,
    /// Proxied to the site with this index in `Snapshot::sites`.
    Site(usize),
    /// The same-origin API of that site.
    SiteApi(usize),
    /// `Host` (or `:authority`) is not a valid host (`host.rs`).
    InvalidHost,
    /// A head over `limits.max_request_head` that was read whole.
    HeadTooLarge,
    /// The public signing keys (with `[signing]`): `/.well-known/jwks.json`
    /// on hosts that are not sites, `<api path>jwks.json` wherever the API
    /// answers.
    Jwks,
}

impl Route {
    /// The metrics label (bounded: the site index is not part of it).
    pub fn label(self) -> RouteLabel {
        match self {
            Route::Health => RouteLabel::Healthz,
            Route::Ready => RouteLabel::Readyz,
            Route::Api => RouteLabel::Api,
            Route::Redirect { .. } => RouteLabel::Redirect,
            Route::AcmeChallenge => RouteLabel::AcmeChallenge,
            Route::NotFound => RouteLabel::NotFound,
            Route::Site(_) => RouteLabel::Site,
            Route::SiteApi(_) => RouteLabel::SiteApi,
            Route::InvalidHost | Route::HeadTooLarge => RouteLabel::BadRequest,
            Route::Jwks => RouteLabel::Jwks,
        }
    }
}

/// Routes a request. On TLS listeners a host that names a site sends every
/// path to that site (its own `/healthz`, `/api/`...) except the site's
/// `api_path`: the global API path and health answers are for hosts that
/// match no site, so visitord never shadows a path of a site it fronts.
/// Plain listeners redirect every host alike, health excepted.
pub fn route(snap: &Snapshot, facts: &RequestFacts<'_>) -> Route {
    if facts.head_len > snap.config.limits.max_request_head {
        return Route::HeadTooLarge;
    }
    if matches!(facts.host, Some(Err(_))) {
        return Route::InvalidHost;
    }
    let https_port = match facts.listener {
        ListenerKind::Tls => None,
        ListenerKind::Redirect { https_port } => Some(https_port),
    };
    if https_port.is_none() {
        let site = facts.valid_host().and_then(|h| snap.sites.find(h.as_str()));
        if let Some(i) = site {
            let api_path = snap.sites.get(i).and_then(|s| s.config.api_path.as_ref());
            return match api_path {
                Some(p) if p.matches(facts.path) => Route::SiteApi(i),
                Some(p) if snap.signing.is_some() && p.is_jwks(facts.path) => Route::Jwks,
                _ => Route::Site(i),
            };
        }
    }
    let http01 = snap
        .config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == Challenge::Http01);
    match facts.path {
        "/healthz" => Route::Health,
        "/readyz" => Route::Ready,
        path if https_port.is_some() && http01 && http01_token(path).is_some() => {
            Route::AcmeChallenge
        }
        _ => match https_port {
            Some(https_port) => Route::Redirect { https_port },
            None if snap.config.api.path.matches(facts.path) => Route::Api,
            None if snap.signing.is_some() && is_jwks(snap, facts.path) => Route::Jwks,
            None => Route::NotFound,
        },
    }
}

/// The public keys' paths on a host that is not a site.
fn is_jwks(snap: &Snapshot, path: &str) -> bool {
    snap.config.api.path.is_jwks(path)
        || path
            .strip_prefix("/.well-known/")
            .is_some_and(|rest| rest == JWKS_FILE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    /// A snapshot of the shipped country database, the built-in rules, one
    /// project (`demo`: `example.com`, `*.example.com`, `localhost`) and
    /// the sites given, trusting `127.0.0.0/8`.
    pub(crate) fn snapshot(sites: &str) -> Snapshot {
        snapshot_with("", sites)
    }

    /// [`snapshot`] with `[signing]` (one new key, issuer
    /// `https://visitor.example`, ttl 10 min) and a second project,
    /// `signed` (`example.com`), whose answers are signed.
    pub(crate) fn signed_snapshot(sites: &str) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.pem");
        crate::certs::signing::generate_key_file(&key).unwrap();
        snapshot_with(
            "[[project]]\nid = \"signed\"\ndomains = [\"example.com\"]\nsigned = true\n",
            &format!("[signing]\nkeys = [{key:?}]\nissuer = \"https://visitor.example\"\n{sites}"),
        )
    }

    fn snapshot_with(more_projects: &str, sites: &str) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let projects = dir.path().join("projects.toml");
        std::fs::write(
            &projects,
            format!("[[project]]\nid = \"demo\"\ndomains = [\"example.com\", \"*.example.com\", \"localhost\"]\nrequests_per_minute = 3\n{more_projects}"),
        )
        .unwrap();
        let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("geo-db/iptoasn-country.mmdb");
        let text = format!(
            "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = true\n\
             [[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n\
             [api]\nprojects = {projects:?}\n[geo]\ndatabases = [{db:?}]\n\
             [client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
             [limits]\nrequests_per_minute_per_ip = 5\n{sites}"
        );
        // No [tls] pairs are read: the snapshot is built without them.
        let text = text.replacen(
            "[api]",
            "[tls]\ncertificates = [{ cert = \"none.crt\", key = \"none.key\" }]\n[api]",
            1,
        );
        let mut config = Config::parse(&dir.path().join("visitord.toml"), &text).unwrap();
        config.tls = None;
        Snapshot::build(config, 1, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request head as Pingora hands it over.
    pub(crate) fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    pub(crate) const PEER: &str = "198.51.100.7";

    fn facts<'r>(snap: &Snapshot, req: &'r Parts, listener: ListenerKind) -> RequestFacts<'r> {
        RequestFacts::read(req, PEER.parse().unwrap(), listener, snap)
    }

    const TLS: ListenerKind = ListenerKind::Tls;
    const PLAIN: ListenerKind = ListenerKind::Redirect { https_port: 8443 };

    #[test]
    fn facts_are_read_once_from_the_head() {
        let snap = snapshot("");
        let req = request(
            "OPTIONS",
            "/api/?pid=demo",
            &[
                ("host", "Example.com:8443"),
                ("origin", "https://www.example.com"),
                ("referer", "https://www.example.com/page"),
                ("user-agent", "Mozilla/5.0"),
                ("access-control-request-headers", "accept"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        let f = facts(&snap, &req, TLS);
        assert_eq!(f.method, Method::Options);
        assert_eq!(
            (f.path, f.query, f.path_and_query),
            ("/api/", Some("pid=demo"), "/api/?pid=demo")
        );
        assert_eq!(f.valid_host().map(|h| h.as_str()), Some("example.com"));
        assert_eq!(f.host_raw, Some(&b"Example.com:8443"[..]));
        assert_eq!(f.peer, PEER.parse::<IpAddr>().unwrap());
        assert!(!f.peer_trusted);
        assert_eq!(
            f.client.ip, f.peer,
            "an untrusted peer's X-Forwarded-For is ignored"
        );
        assert_eq!(f.origin, Some(&b"https://www.example.com"[..]));
        assert_eq!(f.user_agent, "Mozilla/5.0");
        assert_eq!(f.cors_request_headers, Some(&b"accept"[..]));
        assert!(!f.declares_body);

        let trusted = RequestFacts::read(&req, "::ffff:127.0.0.1".parse().unwrap(), TLS, &snap);
        assert!(trusted.peer_trusted);
        assert_eq!(trusted.peer, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(trusted.client.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(trusted.client.via, client_ip::Via::ForwardedFor);
        let lines: Vec<&[u8]> = trusted.forwarded_for_lines().collect();
        assert_eq!(lines, [&b"203.0.113.9"[..]]);
    }

    #[test]
    fn repeated_origin_reads_as_empty_and_bodies_are_noticed() {
        let snap = snapshot("");
        let req = request(
            "GET",
            "/api/",
            &[
                ("origin", "https://a.example.com"),
                ("origin", "https://b.example.com"),
                ("content-length", "3"),
            ],
        );
        let f = facts(&snap, &req, TLS);
        assert_eq!(f.origin, Some(&b""[..]));
        assert!(f.declares_body);
        for (name, value, declares) in [
            ("content-length", "0", false),
            ("content-length", "x", true),
            ("transfer-encoding", "chunked", true),
        ] {
            let req = request("GET", "/api/", &[(name, value)]);
            assert_eq!(
                facts(&snap, &req, TLS).declares_body,
                declares,
                "{name}: {value}"
            );
        }
        let req = request("GET", "/", &[("host", ".wild.test")]);
        let f = facts(&snap, &req, TLS);
        assert_eq!(f.host, Some(Err(HostError::EmptyLabel)));
        assert!(f.valid_host().is_none());
    }

    #[test]
    fn heads_over_the_limit_are_refused_where_read_whole() {
        let snap = snapshot("");
        let limit = snap.config.limits.max_request_head;
        let big = "a".repeat(limit);
        let req = request("GET", "/api/", &[("cookie", big.as_str())]);
        let f = facts(&snap, &req, TLS);
        assert!(f.head_len > limit);
        assert_eq!(route(&snap, &f), Route::HeadTooLarge);
        let small = request("GET", "/api/", &[("cookie", "a=1"), ("host", "x.test")]);
        let f = facts(&snap, &small, TLS);
        assert_eq!(
            f.head_len,
            "GET /api/ HTTP/1.1\r\ncookie: a=1\r\nhost: x.test\r\n\r\n".len()
        );
    }

    #[test]
    fn paths_route_by_listener() {
        let snap = snapshot("");
        let at = |path: &str, listener: ListenerKind| {
            let req = request("GET", path, &[("host", "localhost")]);
            route(&snap, &facts(&snap, &req, listener))
        };
        assert_eq!(at("/api/", TLS), Route::Api);
        assert_eq!(at("/api", TLS), Route::Api);
        assert_eq!(at("/api/?pid=x", TLS), Route::Api);
        assert_eq!(at("/api/x", TLS), Route::NotFound);
        assert_eq!(at("/apix", TLS), Route::NotFound);
        assert_eq!(at("/", TLS), Route::NotFound);
        assert_eq!(at("/healthz", TLS), Route::Health);
        assert_eq!(at("/readyz", PLAIN), Route::Ready);
        assert_eq!(at("/api/", PLAIN), Route::Redirect { https_port: 8443 });
        // Without [signing] there are no public keys to serve.
        assert_eq!(at("/.well-known/jwks.json", TLS), Route::NotFound);
        assert_eq!(at("/api/jwks.json", TLS), Route::NotFound);
    }

    #[test]
    fn the_public_keys_are_served_where_no_site_path_is_shadowed() {
        let snap = signed_snapshot(
            "[[site]]\nhosts = [\"shop.example.com\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"\n\
             [[site]]\nhosts = [\"plain.example.com\"]\nupstreams = [\"127.0.0.1:2\"]\n",
        );
        let at = |host: &str, path: &str, listener: ListenerKind| {
            let req = request("GET", path, &[("host", host)]);
            route(&snap, &facts(&snap, &req, listener))
        };
        assert_eq!(at("localhost", "/.well-known/jwks.json", TLS), Route::Jwks);
        assert_eq!(at("localhost", "/api/jwks.json", TLS), Route::Jwks);
        assert_eq!(at("localhost", "/api/jwks.jsonx", TLS), Route::NotFound);
        assert_eq!(
            at("localhost", "/.well-known/jwks.json/", TLS),
            Route::NotFound
        );
        assert_eq!(
            at("localhost", "/visitor-api/jwks.json", TLS),
            Route::NotFound
        );
        assert_eq!(
            at("shop.example.com", "/visitor-api/jwks.json", TLS),
            Route::Jwks
        );
        // A site's own /.well-known/ and /api/ are the site's.
        assert_eq!(
            at("shop.example.com", "/.well-known/jwks.json", TLS),
            Route::Site(0)
        );
        assert_eq!(
            at("shop.example.com", "/api/jwks.json", TLS),
            Route::Site(0)
        );
        assert_eq!(
            at("plain.example.com", "/.well-known/jwks.json", TLS),
            Route::Site(1)
        );
        assert_eq!(
            at("localhost", "/.well-known/jwks.json", PLAIN),
            Route::Redirect { https_port: 8443 }
        );
        assert_eq!(Route::Jwks.label().as_label(), "jwks");
    }

    #[test]
    fn http_01_challenges_are_answered_on_the_plain_listener_only() {
        let snap = snapshot("[acme]\nstate_dir = \"acme\"\ndomains = [\"shop.example.com\"]\n");
        let at = |path: &str, listener: ListenerKind| {
            let req = request("GET", path, &[("host", "shop.example.com")]);
            route(&snap, &facts(&snap, &req, listener))
        };
        let challenge = "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        assert_eq!(at(challenge, PLAIN), Route::AcmeChallenge);
        assert_eq!(
            at("/.well-known/acme-challenge/", PLAIN),
            Route::AcmeChallenge
        );
        assert_eq!(
            at("/.well-known/other", PLAIN),
            Route::Redirect { https_port: 8443 }
        );
        assert_eq!(at(challenge, TLS), Route::NotFound);
        assert_eq!(at("/healthz", PLAIN), Route::Health);
        assert_eq!(Route::AcmeChallenge.label().as_label(), "acme_challenge");
    }

    #[test]
    fn site_hosts_route_to_their_site_and_keep_every_path() {
        let snap = snapshot(
            "[[site]]\nhosts = [\"shop.example.com\", \"*.wild.test\"]\nupstreams = [\"127.0.0.1:1\"]\napi_path = \"/visitor-api/\"\n",
        );
        let at = |host: Option<&str>, path: &str, listener: ListenerKind| {
            let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
            let req = request("GET", path, &headers);
            route(&snap, &facts(&snap, &req, listener))
        };
        let shop = Some("shop.example.com");
        assert_eq!(at(shop, "/", TLS), Route::Site(0));
        assert_eq!(
            at(Some("Shop.Example.com:8443"), "/x?y", TLS),
            Route::Site(0)
        );
        assert_eq!(at(shop, "/api/", TLS), Route::Site(0));
        assert_eq!(at(shop, "/healthz", TLS), Route::Site(0));
        assert_eq!(at(shop, "/visitor-api/", TLS), Route::SiteApi(0));
        assert_eq!(at(shop, "/visitor-api", TLS), Route::SiteApi(0));
        assert_eq!(at(Some("a.wild.test"), "/", TLS), Route::Site(0));
        assert_eq!(at(Some(".wild.test"), "/", TLS), Route::InvalidHost);
        assert_eq!(at(Some("a..wild.test"), "/api/", TLS), Route::InvalidHost);
        assert_eq!(at(Some("a_b!.test"), "/", PLAIN), Route::InvalidHost);
        assert_eq!(at(Some("localhost"), "/api/", TLS), Route::Api);
        assert_eq!(at(Some("localhost"), "/visitor-api/", TLS), Route::NotFound);
        assert_eq!(at(Some("localhost"), "/healthz", TLS), Route::Health);
        assert_eq!(at(None, "/api/", TLS), Route::Api);
        assert_eq!(at(shop, "/", PLAIN), Route::Redirect { https_port: 8443 });
        assert_eq!(
            at(shop, "/.well-known/acme-challenge/abc", PLAIN),
            Route::Redirect { https_port: 8443 },
            "without [acme], challenges are not answered"
        );
        assert_eq!(Route::Site(3).label(), RouteLabel::Site);
        assert_eq!(Route::SiteApi(3).label().as_label(), "site_api");
    }
}
