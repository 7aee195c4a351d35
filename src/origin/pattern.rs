//! One entry of a project's `domains` list ([`DomainPattern`]): parsing and
//! normalising it, refusing what cannot be meant ([`DomainError`]), and
//! matching a host against it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use thiserror::Error;

use crate::net::host::{self, HostError, HostKind, Unicode};

/// Why a configured domain pattern is not acceptable. Every message starts
/// with the pattern as written, quoted; config.rs adds the file and key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("{0:?}: empty domain")]
    Empty(String),
    #[error("{0:?}: empty domain after wildcard")]
    EmptyAfterWildcard(String),
    #[error("{0:?}: wildcard only allowed as the whole first label, as in \"*.example.com\"")]
    WildcardPlacement(String),
    #[error("{0:?}: a domain, not a URL (write only the host, as in \"example.com\")")]
    Url(String),
    #[error("{0:?}: a port is not allowed (ports do not matter for matching)")]
    Port(String),
    #[error("{0:?}: a wildcard cannot cover an IP address")]
    WildcardIp(String),
    /// `*.com`, `*.co.uk`, `*.github.io`: every site registered under a
    /// public suffix, which is nobody's to allow.
    #[error(
        "{0:?}: \"{1}\" is a public suffix; a wildcard over it would cover every site registered under it"
    )]
    WildcardPublicSuffix(String, String),
    /// nginx's `.example.com` means "and subdomains"; here that is spelled
    /// with two entries, so say so rather than report an empty label.
    #[error(
        "{0:?}: leading dot (write \"*.example.com\" for subdomains, \"example.com\" for the host)"
    )]
    LeadingDot(String),
    #[error("{0:?}: {1}")]
    Host(String, HostError),
}

/// Whether a normalised domain is itself a suffix of the Public Suffix List
/// (`com`, `co.uk`, `github.io`), under which anyone can register a site.
/// Names the list does not know (`lan`, `internal`) are not: an intranet may
/// use them.
fn is_public_suffix(domain: &str) -> bool {
    psl::suffix(domain.as_bytes())
        .is_some_and(|suffix| suffix.is_known() && suffix.as_bytes() == domain.as_bytes())
}

/// One entry of a project's `domains` list, normalised like origin hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// Exactly this host: a domain, a dotted IPv4 address, or a bracketed
    /// IPv6 address.
    Exact(String),
    /// Any host strictly below this domain, at any depth, but not the domain
    /// itself: `*.example.com` is stored as `Wildcard("example.com")`.
    Wildcard(String),
}

impl DomainPattern {
    /// Parses a config value: `example.com`, `*.example.com`, `localhost`,
    /// `127.0.0.1`, `::1` or `[::1]`. Unicode domains are converted to
    /// punycode; case and a trailing dot are ignored.
    pub fn parse(s: &str) -> Result<DomainPattern, DomainError> {
        let owned = || s.to_owned();
        if s.is_empty() {
            return Err(DomainError::Empty(owned()));
        }
        if s.contains("://") || s.contains(['/', '?', '#']) {
            return Err(DomainError::Url(owned()));
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None if s == "*" => return Err(DomainError::EmptyAfterWildcard(owned())),
            None => (false, s),
        };
        if rest.contains('*') {
            return Err(DomainError::WildcardPlacement(owned()));
        }
        if rest.len() > 1 && rest.starts_with('.') {
            return Err(DomainError::LeadingDot(owned()));
        }
        if rest.is_empty() || rest == "." {
            return Err(if wildcard {
                DomainError::EmptyAfterWildcard(owned())
            } else {
                DomainError::Empty(owned())
            });
        }

        let bracketed;
        let host_text = if rest.starts_with('[') {
            if rest
                .find(']')
                .is_some_and(|close| rest[close + 1..].starts_with(':'))
            {
                return Err(DomainError::Port(owned()));
            }
            rest
        } else if let Some((_, after)) = rest.rsplit_once(':') {
            if rest.parse::<Ipv6Addr>().is_ok() {
                bracketed = format!("[{rest}]");
                &bracketed
            } else if !after.is_empty() && after.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DomainError::Port(owned()));
            } else {
                return Err(DomainError::Host(owned(), HostError::InvalidChar(':')));
            }
        } else {
            rest
        };

        let host = host::normalize(host_text, Unicode::ToPunycode)
            .map_err(|e| DomainError::Host(owned(), e))?;
        if wildcard && host.kind != HostKind::Domain {
            return Err(DomainError::WildcardIp(owned()));
        }
        // Origins skip IDN validation on their fast path, but a pattern is
        // read once: a mistyped `xn--` label is worth an error here.
        if host.text.split('.').any(|label| label.starts_with("xn--"))
            && host::idna_to_ascii(&host.text).ok().as_deref() != Some(&*host.text)
        {
            return Err(DomainError::Host(owned(), HostError::Idna));
        }
        if wildcard && is_public_suffix(&host.text) {
            return Err(DomainError::WildcardPublicSuffix(
                owned(),
                host.text.into_owned(),
            ));
        }
        let text = host.text.into_owned();
        Ok(if wildcard {
            DomainPattern::Wildcard(text)
        } else {
            DomainPattern::Exact(text)
        })
    }

    /// Whether a normalised host (as from
    /// [`Origin::host`](super::Origin::host)) matches.
    ///
    /// A wildcard cannot match an IP literal: its domain never ends in a
    /// numeric label or `]`, which every IP host does.
    pub fn matches_host(&self, host: &str) -> bool {
        match self {
            DomainPattern::Exact(exact) => host == exact,
            DomainPattern::Wildcard(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }

    /// Whether this is the `localhost` entry that admits all loopback origins.
    pub fn is_localhost(&self) -> bool {
        matches!(self, DomainPattern::Exact(host) if host == "localhost")
    }
}

impl FromStr for DomainPattern {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DomainPattern::parse(s)
    }
}

/// The normalised form, which parses back to the same pattern.
impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(host) => f.write_str(host),
            DomainPattern::Wildcard(domain) => write!(f, "*.{domain}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn domain_pattern_parses() {
        #[rustfmt::skip]
        let cases: &[(&str, DomainPattern)] = &[
            ("example.com", DomainPattern::Exact("example.com".into())),
            ("Example.COM.", DomainPattern::Exact("example.com".into())),
            ("*.example.com", DomainPattern::Wildcard("example.com".into())),
            ("*.Sub.Example.com", DomainPattern::Wildcard("sub.example.com".into())),
            ("localhost", DomainPattern::Exact("localhost".into())),
            ("*.localhost", DomainPattern::Wildcard("localhost".into())),
            ("*.example.co.uk", DomainPattern::Wildcard("example.co.uk".into())),
            ("*.me.github.io", DomainPattern::Wildcard("me.github.io".into())),
            ("*.lan", DomainPattern::Wildcard("lan".into())),
            ("com", DomainPattern::Exact("com".into())),
            ("bücher.example", DomainPattern::Exact("xn--bcher-kva.example".into())),
            ("XN--BCHER-KVA.example", DomainPattern::Exact("xn--bcher-kva.example".into())),
            ("127.0.0.1", DomainPattern::Exact("127.0.0.1".into())),
            ("::1", DomainPattern::Exact("[::1]".into())),
            ("[0::1]", DomainPattern::Exact("[::1]".into())),
        ];
        for (input, expected) in cases {
            let got = DomainPattern::parse(input).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&got, expected, "{input}");
            assert_eq!(
                got.to_string().parse::<DomainPattern>().as_ref(),
                Ok(expected)
            );
        }
    }

    #[test]
    fn domain_pattern_errors_read_well() {
        let long_label = format!("{}.com", "a".repeat(64));
        #[rustfmt::skip]
        let cases: Vec<(&str, &str)> = vec![
            ("", r#""": empty domain"#),
            (".", r#"".": empty domain"#),
            ("*.", r#""*.": empty domain after wildcard"#),
            ("*", r#""*": empty domain after wildcard"#),
            ("a*.b.com", r#""a*.b.com": wildcard only allowed as the whole first label, as in "*.example.com""#),
            ("*.*.b.com", r#""*.*.b.com": wildcard only allowed as the whole first label, as in "*.example.com""#),
            ("b.*.com", r#""b.*.com": wildcard only allowed as the whole first label, as in "*.example.com""#),
            ("*example.com", r#""*example.com": wildcard only allowed as the whole first label, as in "*.example.com""#),
            ("exa mple.com", r#""exa mple.com": invalid character ' '"#),
            ("https://x.com", r#""https://x.com": a domain, not a URL (write only the host, as in "example.com")"#),
            ("x.com/path", r#""x.com/path": a domain, not a URL (write only the host, as in "example.com")"#),
            ("example.com:8443", r#""example.com:8443": a port is not allowed (ports do not matter for matching)"#),
            ("[::1]:80", r#""[::1]:80": a port is not allowed (ports do not matter for matching)"#),
            ("localhost:", r#""localhost:": invalid character ':'"#),
            ("*.1.2.3.4", r#""*.1.2.3.4": a wildcard cannot cover an IP address"#),
            ("*.[::1]", r#""*.[::1]": a wildcard cannot cover an IP address"#),
            ("*.com", r#""*.com": "com" is a public suffix; a wildcard over it would cover every site registered under it"#),
            ("*.CO.uk.", r#""*.CO.uk.": "co.uk" is a public suffix; a wildcard over it would cover every site registered under it"#),
            ("*.github.io", r#""*.github.io": "github.io" is a public suffix; a wildcard over it would cover every site registered under it"#),
            ("a..com", r#""a..com": empty label (a leading dot or two dots in a row)"#),
            (".example.com", r#"".example.com": leading dot (write "*.example.com" for subdomains, "example.com" for the host)"#),
            ("user@x.com", r#""user@x.com": invalid character '@'"#),
            ("1.2.3.256", r#""1.2.3.256": ends in a number but is not a dotted-decimal IPv4 address"#),
            ("xn--zz-.com", r#""xn--zz-.com": not a valid internationalised domain name"#),
        ];
        for (input, expected) in cases {
            let got = DomainPattern::parse(input).map_err(|e| e.to_string());
            assert_eq!(got, Err(expected.to_owned()), "{input:?}");
        }
        assert!(matches!(
            DomainPattern::parse(&long_label),
            Err(DomainError::Host(_, HostError::LabelTooLong))
        ));
    }
}
