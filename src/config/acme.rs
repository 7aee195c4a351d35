//! `[acme]` (docs/design.md §4): automatic certificates, validated. Which names are
//! asked for is settled here (the `domains` written, or every exact host of
//! every `[[site]]`); which of them a `[tls]` file pair already covers is
//! known only once the pairs are read, so the snapshot decides that
//! (`acme::plan`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::raw::{ConfigError, RawAcme};
use super::{Listener, ListenerKind, SiteConfig};
use crate::net::host::{self, HostKind, Unicode};
use crate::origin::DomainPattern;

/// The longest `renew_before` accepted: public certificates live 90 days
/// or less, so anything longer is a unit mix-up.
const MAX_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);

/// `[acme]`, validated, with paths resolved from the config file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// The account's contact address, without `mailto:`.
    pub email: Option<String>,
    /// The CA's directory URL (`https://`).
    pub directory: String,
    /// A PEM file of CA certificates to trust for the directory's HTTPS
    /// (a private CA); `None` trusts the system's roots.
    pub directory_ca: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub challenge: Challenge,
    /// How long before expiry to renew when the CA offers no renewal
    /// window; `None`: a third of the certificate's lifetime.
    pub renew_before: Option<Duration>,
    /// The names to keep a certificate for, one certificate each: lower
    /// case, punycode, in the order written, no duplicates.
    pub domains: Vec<String>,
    /// `domains` was not written: these are the sites' exact hosts.
    pub domains_from_sites: bool,
    /// External account binding, for CAs that require one.
    pub eab: Option<ExternalAccount>,
}

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token served on the plain listener at
    /// `/.well-known/acme-challenge/TOKEN` (RFC 8555 §8.3).
    Http01,
    /// A self-signed certificate offered for the `acme-tls/1` ALPN
    /// protocol on the TLS listener (RFC 8737).
    TlsAlpn01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// An external account binding (RFC 8555 §7.3.4): the key id and the MAC
/// key the CA handed out.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalAccount {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for ExternalAccount {
    /// The MAC key is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Validates `[acme]` against the listeners and sites already parsed.
pub(super) fn parse_acme(
    file: &Path,
    raw: RawAcme,
    resolve: &dyn Fn(&Path) -> PathBuf,
    listeners: &[Listener],
    sites: &[SiteConfig],
) -> Result<Acme, ConfigError> {
    let invalid =
        |key: &str, reason: String| ConfigError::invalid(file, format!("acme.{key}"), reason);

    let email = contact(&invalid, raw.email.as_deref())?;
    directory_url(&raw.directory)
        .map_err(|r| invalid("directory", format!("{:?}: {r}", raw.directory)))?;
    if raw.state_dir.as_os_str().is_empty() {
        return Err(invalid("state_dir", "must not be empty".into()));
    }
    let challenge = challenge(&invalid, &raw.challenge, listeners)?;
    if let Some(d) = raw.renew_before {
        if d.is_zero() || d > MAX_RENEW_BEFORE {
            return Err(invalid(
                "renew_before",
                "must be more than 0s and at most 365d".into(),
            ));
        }
    }
    let eab = external_account(&invalid, raw.eab_kid, raw.eab_hmac_key)?;
    let (domains, domains_from_sites) = match raw.domains {
        Some(list) => (explicit_domains(&invalid, &list)?, false),
        None => (site_domains(sites), true),
    };
    Ok(Acme {
        email,
        directory: raw.directory,
        directory_ca: raw.directory_ca.as_deref().map(resolve),
        state_dir: resolve(&raw.state_dir),
        challenge,
        renew_before: raw.renew_before,
        domains,
        domains_from_sites,
        eab,
    })
}

/// `email`, when written (blank counts as not written).
fn contact(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    raw: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(e) => Ok(Some(
            email(e).map_err(|r| invalid("email", format!("{e:?}: {r}")))?,
        )),
    }
}

/// `challenge`, and the listener it needs: every challenge is for a TLS
/// listener's certificate, and http-01 is answered on a plain one.
fn challenge(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    name: &str,
    listeners: &[Listener],
) -> Result<Challenge, ConfigError> {
    let challenge = match name {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        other => {
            return Err(invalid(
                "challenge",
                format!("{other:?}: expected \"http-01\" or \"tls-alpn-01\""),
            ))
        }
    };
    let plain = listeners
        .iter()
        .any(|l| matches!(l.kind, ListenerKind::Redirect { .. }));
    if challenge == Challenge::Http01 && !plain {
        return Err(invalid(
            "challenge",
            "http-01 needs a plain [[listen]] (with redirect_https_port) that the CA reaches on port 80".into(),
        ));
    }
    let tls = listeners.iter().any(|l| l.kind == ListenerKind::Tls);
    if !tls {
        return Err(invalid(
            "challenge",
            "certificates are for a TLS listener, and no [[listen]] has tls = true".into(),
        ));
    }
    Ok(challenge)
}

/// `eab_kid` and `eab_hmac_key`: both or neither.
fn external_account(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    kid: Option<String>,
    key: Option<String>,
) -> Result<Option<ExternalAccount>, ConfigError> {
    match (kid, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            "eab_hmac_key",
            "required with eab_kid (the CA gives both)".into(),
        )),
        (None, Some(_)) => Err(invalid(
            "eab_kid",
            "required with eab_hmac_key (the CA gives both)".into(),
        )),
        (Some(kid), Some(key)) => {
            if kid.trim().is_empty() {
                return Err(invalid("eab_kid", "must not be empty".into()));
            }
            let hmac_key = hmac_key(&key).map_err(|r| invalid("eab_hmac_key", r.into()))?;
            Ok(Some(ExternalAccount { kid, hmac_key }))
        }
    }
}

/// A contact address as the CA will see it (`mailto:` is added later).
fn email(e: &str) -> Result<String, &'static str> {
    if e.starts_with("mailto:") {
        return Err("write the address only, without mailto:");
    }
    let (local, domain) = e.split_once('@').ok_or("not an e-mail address (no @)")?;
    // One address, as a `mailto:` URI carries it: no list, no display name.
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || ",;<>\"@".contains(c);
    let well_formed = !local.is_empty()
        && domain.contains('.')
        && !local.contains(forbidden)
        && !domain.contains(forbidden);
    if !well_formed {
        return Err("not an e-mail address");
    }
    Ok(e.to_owned())
}

/// The directory must be an `https://` URL (RFC 8555 §6.1: ACME runs over
/// HTTPS only).
fn directory_url(url: &str) -> Result<(), &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https:// URL");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    Ok(())
}

/// The MAC key as CAs hand it out: base64url (RFC 8555 §7.3.4), padded or
/// not.
fn hmac_key(text: &str) -> Result<Vec<u8>, &'static str> {
    let trimmed = text.trim().trim_end_matches('=');
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|_| "not base64url (as the CA gives it)")?;
    if key.is_empty() {
        return Err("must not be empty");
    }
    Ok(key)
}

/// `domains` as written: DNS names a CA can validate with the challenges
/// visitord answers.
fn explicit_domains(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    list: &[String],
) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        let key = format!("domains[{i}]");
        let name = acme_name(name).map_err(|r| invalid(&key, format!("{name:?}: {r}")))?;
        if out.contains(&name) {
            return Err(invalid(&key, format!("{name:?}: listed twice")));
        }
        out.push(name);
    }
    Ok(out)
}

/// One name a certificate can be ordered for, normalised (lower case,
/// punycode, no trailing dot).
pub fn acme_name(name: &str) -> Result<String, String> {
    if name.starts_with("*.") {
        return Err(
            "a wildcard certificate needs the DNS-01 challenge, which visitord does not do; list each name"
                .into(),
        );
    }
    let host = host::normalize(name, Unicode::ToPunycode).map_err(|e| e.to_string())?;
    if host.kind != HostKind::Domain {
        return Err("an IP address: visitord orders certificates for DNS names only".into());
    }
    if host.loopback {
        return Err("a loopback name, which no CA can reach".into());
    }
    Ok(host.text.into_owned())
}

/// The default `domains`: every exact host of every site that a CA could
/// validate (wildcards, IP addresses and loopback names are left out).
fn site_domains(sites: &[SiteConfig]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for host in sites.iter().flat_map(|s| &s.hosts) {
        if let DomainPattern::Exact(name) = host {
            if let Ok(name) = acme_name(name) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::super::Config;
    use super::*;

    const BASE: &str = r#"
[[listen]]
addr = "127.0.0.1:8443"
tls = true
[[listen]]
addr = "127.0.0.1:8080"
redirect_https_port = 8443
[geo]
databases = ["x.mmdb"]
[[site]]
hosts = ["shop.example.com", "*.wild.example.com", "www.example.com", "127.0.0.2"]
upstreams = ["127.0.0.1:9000"]
"#;

    fn parse(acme: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/visitord/visitord.toml"),
            &format!("{BASE}\n[acme]\n{acme}\n"),
        )
    }

    fn acme(text: &str) -> Acme {
        parse(text).unwrap_or_else(|e| panic!("{e}")).acme.unwrap()
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults_take_the_sites_exact_hosts() {
        let a = acme("");
        assert_eq!(
            a.directory,
            "https://acme-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/visitord/acme"));
        assert_eq!(a.challenge, Challenge::Http01);
        assert_eq!(a.domains, ["shop.example.com", "www.example.com"]);
        assert!(a.domains_from_sites);
        assert_eq!((a.email, a.renew_before, a.eab), (None, None, None));
    }

    #[test]
    fn keys_are_read_and_paths_resolved() {
        let a = acme(
            r#"email = "ops@example.com"
directory = "https://127.0.0.1:14000/dir"
directory_ca = "tls/ca.pem"
state_dir = "acme"
renew_before = "30d"
domains = ["API.Example.com.", "bücher.example"]
eab_kid = "kid-1"
eab_hmac_key = "c2VjcmV0LWtleQ"
"#,
        );
        assert_eq!(a.email.as_deref(), Some("ops@example.com"));
        assert_eq!(
            a.directory_ca,
            Some(PathBuf::from("/etc/visitord/tls/ca.pem"))
        );
        assert_eq!(a.state_dir, PathBuf::from("/etc/visitord/acme"));
        assert_eq!(a.renew_before, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(a.domains, ["api.example.com", "xn--bcher-kva.example"]);
        assert!(!a.domains_from_sites);
        let eab = a.eab.unwrap();
        assert_eq!(eab.hmac_key, b"secret-key");
        assert!(
            !format!("{eab:?}").contains("c2Vj"),
            "the key is never printed"
        );
    }

    #[test]
    fn no_acme_section_is_none() {
        let c = Config::parse(
            Path::new("/etc/visitord/visitord.toml"),
            &format!("{BASE}\n[tls]\ncertificates = [{{ cert = \"a.crt\", key = \"a.key\" }}]\n"),
        )
        .unwrap();
        assert_eq!(c.acme, None);
    }

    #[test]
    fn acme_alone_may_stand_in_for_tls_pairs() {
        let c = parse("").unwrap();
        let tls = c.tls.unwrap();
        assert!(tls.certificates.is_empty());
        assert!(tls.hsts.is_some(), "HSTS keeps its default");
    }

    #[test]
    fn each_bad_key_is_named_with_its_reason() {
        for (text, expected) in [
            ("bogus = 1", "acme.bogus: unknown field `bogus`"),
            ("email = \"mailto:a@b.c\"", "acme.email: \"mailto:a@b.c\": write the address only"),
            ("email = \"nobody\"", "acme.email: \"nobody\": not an e-mail address (no @)"),
            ("email = \"a b@c.d\"", "acme.email"),
            ("directory = \"http://ca.example/dir\"", "acme.directory: \"http://ca.example/dir\": must be an https:// URL"),
            ("directory = \"not a url\"", "acme.directory"),
            ("challenge = \"dns-01\"", "acme.challenge: \"dns-01\": expected \"http-01\" or \"tls-alpn-01\""),
            ("renew_before = \"0s\"", "acme.renew_before: must be more than 0s"),
            ("renew_before = \"400d\"", "acme.renew_before: must be more than 0s and at most 365d"),
            ("renew_before = \"soon\"", "acme.renew_before"),
            ("eab_kid = \"k\"", "acme.eab_hmac_key: required with eab_kid"),
            ("eab_hmac_key = \"c2Vj\"", "acme.eab_kid: required with eab_hmac_key"),
            ("eab_kid = \"k\"\neab_hmac_key = \"not base64!\"", "acme.eab_hmac_key: not base64url"),
            ("domains = [\"*.example.com\"]", "acme.domains[0]: \"*.example.com\": a wildcard certificate needs the DNS-01 challenge"),
            ("domains = [\"a.example.com\", \"A.example.com\"]", "acme.domains[1]: \"a.example.com\": listed twice"),
            ("domains = [\"203.0.113.7\"]", "acme.domains[0]: \"203.0.113.7\": an IP address"),
            ("domains = [\"localhost\"]", "acme.domains[0]: \"localhost\": a loopback name"),
            ("domains = [\"a..b\"]", "acme.domains[0]"),
            ("state_dir = \"\"", "acme.state_dir: must not be empty"),
        ] {
            let e = error(text);
            assert!(e.starts_with("/etc/visitord/visitord.toml: "), "{e}");
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn http_01_needs_a_plain_listener() {
        let text = BASE.replace(
            "[[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n",
            "",
        );
        let e = Config::parse(
            Path::new("/etc/visitord/visitord.toml"),
            &format!("{text}\n[acme]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("acme.challenge: http-01 needs a plain [[listen]]"),
            "{e}"
        );
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(acme_name("Shop.Example.COM.").unwrap(), "shop.example.com");
        assert!(acme_name("*.example.com").unwrap_err().contains("DNS-01"));
        assert!(acme_name("[::1]").is_err());
        assert!(acme_name("app.localhost").unwrap_err().contains("loopback"));
    }
}
