//! The client's address behind trusted proxies (docs/design.md §3, "Client IP").
//!
//! The TCP peer is the client unless it is inside a trusted CIDR. Only then
//! are forwarding headers read, from the right: each trusted proxy appends
//! the address it received the request from, so the rightmost entries are
//! the only ones vouched for, and everything left of the first untrusted
//! address was written by that client and may be invented.
//!
//! Precise rules:
//! - Every address (peer, each hop, the result) is unwrapped from
//!   IPv4-mapped IPv6 (`::ffff:1.2.3.4` is `1.2.3.4`) before it is checked,
//!   and so is every trusted network (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
//! - Walking from the right, a trusted hop is skipped and the first
//!   untrusted hop is the client. If every hop is trusted, the leftmost one
//!   is the client.
//! - An entry that is not an address (garbage, `unknown`, an RFC 7239
//!   obfuscated `_name`, a `Forwarded` element without `for=`) ends the
//!   walk: nothing left of it is believed, and the client is the last
//!   trusted address seen (the peer itself if the bad entry is the
//!   rightmost).
//! - At most [`MAX_HOPS`] entries are examined; if all are trusted, the
//!   32nd from the right is the client. A real chain is a handful of hops,
//!   and the cap keeps a long header from costing more than a few hundred
//!   nanoseconds.
//! - Empty list elements (`a,,b`, a trailing comma, a blank line) are
//!   skipped, as RFC 9110 §5.6.1 asks, and do not count as hops.
//! - Ports are tolerated and ignored: `1.2.3.4:5678`, `[2001:db8::1]:80`,
//!   and RFC 7239 obfuscated ports (`[::1]:_x`).
//!
//! Which header: `X-Forwarded-For` when it has at least one non-empty
//! element, otherwise `Forwarded`, otherwise the peer. This is the reverse of
//! "the standard header wins", on purpose: nginx, HAProxy, Caddy, Envoy,
//! Traefik, AWS load balancers and Cloudflare all append to
//! `X-Forwarded-For`, and few also write `Forwarded`; if `Forwarded` won, any
//! client behind such a proxy could pick its own address by sending a
//! `Forwarded` header the proxy passes through untouched. The remaining
//! risk is a proxy that writes only `Forwarded` and passes a client's
//! `X-Forwarded-For` through: such a proxy must drop that header.
//!
//! Several lines of one header mean the same as their values joined with
//! commas (RFC 9110 §5.3), except that a quoted string in `Forwarded` never
//! runs on into the next line. No allocation on any path.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::net::host;

/// Most forwarding entries examined per request, counted from the right.
pub const MAX_HOPS: usize = 32;

/// A list of IP networks, compared in canonical form: addresses and
/// networks IPv4-mapped IPv6 unwrapped (`::ffff:10.0.0.0/104` is
/// `10.0.0.0/8`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Networks {
        Networks(nets.into_iter().map(canonical_net).collect())
    }

    /// Whether `ip` (in any form) is inside one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `client_ip.trusted_proxies`: the networks whose forwarding headers are
/// believed.
pub type TrustedProxies = Networks;

/// An IPv4-mapped IPv6 network as the IPv4 network it maps.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// Where the client address of a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The TCP peer (or the PROXY protocol source) is the client.
    Peer,
    /// A hop of `X-Forwarded-For` sent by a trusted proxy.
    ForwardedFor,
    /// A `for=` of `Forwarded` sent by a trusted proxy.
    Forwarded,
}

/// The client of a request: its canonical address and where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    pub ip: IpAddr,
    pub via: Via,
}

/// The client address for a request that arrived from `peer`, given the
/// first (or comma-joined) values of `X-Forwarded-For` and `Forwarded`.
/// Rules in the module docs; use [`client_ip_from_lines`] when a header
/// may have been sent as several lines.
pub fn client_ip(
    peer: IpAddr,
    trusted: &TrustedProxies,
    forwarded_for: Option<&[u8]>,
    forwarded: Option<&[u8]>,
) -> IpAddr {
    client_ip_from_lines(peer, trusted, forwarded_for, forwarded).ip
}

/// [`client_ip`] over every line of each header, in the order received, for
/// example `headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes())`.
pub fn client_ip_from_lines<'a, X, F>(
    peer: IpAddr,
    trusted: &TrustedProxies,
    forwarded_for: X,
    forwarded: F,
) -> ClientIp
where
    X: IntoIterator<Item = &'a [u8]>,
    X::IntoIter: DoubleEndedIterator,
    F: IntoIterator<Item = &'a [u8]>,
{
    let peer = peer.to_canonical();
    let from = |via| move |ip| ClientIp { ip, via };
    if !trusted.contains(peer) {
        return from(Via::Peer)(peer);
    }
    if let Some(client) = walk_forwarded_for(Walk::new(trusted, peer), forwarded_for) {
        return from(Via::ForwardedFor)(client);
    }
    match walk_forwarded(Walk::new(trusted, peer), forwarded) {
        Some(client) => from(Via::Forwarded)(client),
        None => from(Via::Peer)(peer),
    }
}

/// Writes `X-Forwarded-For` for an upstream into `out`, as nginx's
/// `$proxy_add_x_forwarded_for` but believing only trusted peers: a
/// trusted peer's chain (`incoming`, every line) is kept and the peer
/// appended; an untrusted peer's chain is the client's own invention and is
/// dropped, leaving the peer, which is then the client. With the PROXY
/// protocol the peer is the address the balancer named.
pub fn push_forwarded_for<'a>(
    out: &mut Vec<u8>,
    peer: IpAddr,
    peer_trusted: bool,
    incoming: impl Iterator<Item = &'a [u8]>,
) {
    if peer_trusted {
        for line in incoming {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b", ");
        }
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", peer.to_canonical());
}

/// The right-to-left walk over hops, shared by both headers.
struct Walk<'t> {
    trusted: &'t TrustedProxies,
    /// The leftmost trusted, valid address so far; starts as the peer.
    last_trusted: IpAddr,
    hops: usize,
}

impl<'t> Walk<'t> {
    fn new(trusted: &'t TrustedProxies, peer: IpAddr) -> Self {
        Walk {
            trusted,
            last_trusted: peer,
            hops: 0,
        }
    }

    /// Takes the next hop to the left (`None` when it is not an address).
    /// Returns the client once the walk is decided.
    fn step(&mut self, hop: Option<IpAddr>) -> Option<IpAddr> {
        self.hops += 1;
        let Some(ip) = hop.map(|ip| ip.to_canonical()) else {
            return Some(self.last_trusted);
        };
        if !self.trusted.contains(ip) {
            return Some(ip);
        }
        self.last_trusted = ip;
        (self.hops >= MAX_HOPS).then_some(self.last_trusted)
    }

    /// The answer once the entries run out: all were trusted.
    fn finish(self) -> Option<IpAddr> {
        (self.hops > 0).then_some(self.last_trusted)
    }
}

/// `None` when the header has no non-empty element, so `Forwarded` is tried.
fn walk_forwarded_for<'a, X>(mut walk: Walk<'_>, lines: X) -> Option<IpAddr>
where
    X: IntoIterator<Item = &'a [u8]>,
    X::IntoIter: DoubleEndedIterator,
{
    for line in lines.into_iter().rev() {
        for entry in line.rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            if let Some(client) = walk.step(parse_node(entry)) {
                return Some(client);
            }
        }
    }
    walk.finish()
}

/// RFC 7239 elements can only be split reliably left to right (quoted
/// strings may hold `,` and `;`), so the last [`MAX_HOPS`] `for=` values
/// are kept in a ring on the stack and then walked from the right.
fn walk_forwarded<'a, F>(mut walk: Walk<'_>, lines: F) -> Option<IpAddr>
where
    F: IntoIterator<Item = &'a [u8]>,
{
    let mut ring: [Option<IpAddr>; MAX_HOPS] = [None; MAX_HOPS];
    let mut count = 0usize;
    for line in lines {
        for element in QuoteAwareSplit::new(line, b',') {
            let element = element.trim_ascii();
            if element.is_empty() {
                continue;
            }
            ring[count % MAX_HOPS] = forwarded_for_value(element);
            count += 1;
        }
    }
    let kept = count.min(MAX_HOPS);
    for back in 1..=kept {
        let index = (count - back) % MAX_HOPS;
        if let Some(client) = walk.step(ring[index]) {
            return Some(client);
        }
    }
    walk.finish()
}

/// The address in one element's `for=` parameter. `None` when it is absent,
/// repeated, obfuscated, `unknown`, or the element does not parse.
fn forwarded_for_value(element: &[u8]) -> Option<IpAddr> {
    let mut found: Option<Option<IpAddr>> = None;
    for pair in QuoteAwareSplit::new(element, b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        if !name.eq_ignore_ascii_case(b"for") {
            continue;
        }
        if found.is_some() {
            // RFC 7239 §4: a parameter occurs at most once per element.
            return None;
        }
        found = Some(parse_forwarded_value(value));
    }
    found.flatten()
}

/// A token, or a quoted string holding no escapes (an address never needs
/// one; an escaped value is treated as not an address).
fn parse_forwarded_value(value: &[u8]) -> Option<IpAddr> {
    match value.strip_prefix(b"\"") {
        None => parse_node(value),
        Some(quoted) => {
            let inner = quoted.strip_suffix(b"\"")?;
            if inner.contains(&b'\\') || inner.contains(&b'"') {
                return None;
            }
            parse_node(inner)
        }
    }
}

/// One hop as written in `X-Forwarded-For` or a `Forwarded` `for=` value:
/// an IPv4 or IPv6 address, optionally bracketed (IPv6) and with a port.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(node).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = host::split_port(text).ok()?;
    if !port.is_none_or(is_port) {
        return None;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// RFC 7239 `node-port = port / obfport`; the value is never used.
fn is_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// Splits on `sep` outside double-quoted strings (with `\` escapes). An
/// unterminated quote runs to the end of the input, making that last piece
/// unparseable rather than letting it swallow a separator silently.
struct QuoteAwareSplit<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> QuoteAwareSplit<'a> {
    fn new(input: &'a [u8], sep: u8) -> Self {
        QuoteAwareSplit {
            rest: Some(input),
            sep,
        }
    }
}

impl<'a> Iterator for QuoteAwareSplit<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let input = self.rest?;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, &b) in input.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes {
                match b {
                    b'\\' => escaped = true,
                    b'"' => in_quotes = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == self.sep {
                self.rest = Some(&input[i + 1..]);
                return Some(&input[..i]);
            }
        }
        self.rest = None;
        Some(input)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PROXIES: &[&str] = &["10.0.0.0/8", "127.0.0.0/8", "2001:db8:ffff::/48"];

    /// (name, peer, X-Forwarded-For, Forwarded, expected client)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, &'a str);

    #[test]
    fn single_header_table() {
        let trusted = nets(PROXIES);
        let chain_40: String =
            (0..40).map(|i| format!("10.0.1.{i}, ")).collect::<String>() + "10.0.2.1";
        let real_then_40 = format!("203.0.113.9, {chain_40}");
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("untrusted peer, spoofed xff ignored", "198.51.100.1", Some("203.0.113.9"), None, "198.51.100.1"),
            ("untrusted peer, spoofed forwarded ignored", "198.51.100.1", None, Some("for=203.0.113.9"), "198.51.100.1"),
            ("trusted peer, no headers", "10.0.0.1", None, None, "10.0.0.1"),
            ("trusted peer, single hop", "10.0.0.1", Some("203.0.113.9"), None, "203.0.113.9"),
            ("several trusted hops", "10.0.0.1", Some("203.0.113.9, 10.0.0.3, 10.0.0.2"), None, "203.0.113.9"),
            ("attacker-prepended entry", "10.0.0.1", Some("1.1.1.1, 203.0.113.9"), None, "203.0.113.9"),
            ("attacker-prepended behind chain", "10.0.0.1", Some("1.1.1.1, 203.0.113.9, 10.0.0.2"), None, "203.0.113.9"),
            ("all trusted: leftmost", "10.0.0.1", Some("10.0.0.4, 10.0.0.3"), None, "10.0.0.4"),
            ("garbage rightmost: the peer", "10.0.0.1", Some("203.0.113.9, garbage"), None, "10.0.0.1"),
            ("garbage after trusted hop", "10.0.0.1", Some("203.0.113.9, nonsense, 10.0.0.2"), None, "10.0.0.2"),
            ("garbage left of client is never reached", "10.0.0.1", Some("nonsense, 203.0.113.9"), None, "203.0.113.9"),
            ("unknown stops the walk", "10.0.0.1", Some("203.0.113.9, unknown"), None, "10.0.0.1"),
            ("empty header", "10.0.0.1", Some(""), None, "10.0.0.1"),
            ("only commas and spaces", "10.0.0.1", Some(" , ,"), None, "10.0.0.1"),
            ("whitespace and empty elements", "10.0.0.1", Some(" \t203.0.113.9 ,, 10.0.0.2 ,"), None, "203.0.113.9"),
            ("ipv4 with port", "10.0.0.1", Some("203.0.113.9:5678"), None, "203.0.113.9"),
            ("bare ipv6", "10.0.0.1", Some("2001:db8::9"), None, "2001:db8::9"),
            ("bracketed ipv6 with port", "10.0.0.1", Some("[2001:db8::9]:443"), None, "2001:db8::9"),
            ("bracketed ipv6 trusted hop", "10.0.0.1", Some("203.0.113.9, [2001:db8:ffff::1]:80"), None, "203.0.113.9"),
            ("bracket garbage", "10.0.0.1", Some("[2001:db8::9"), None, "10.0.0.1"),
            ("bad port", "10.0.0.1", Some("203.0.113.9:http"), None, "10.0.0.1"),
            ("zone id is garbage", "10.0.0.1", Some("fe80::1%eth0"), None, "10.0.0.1"),
            ("mapped peer counts as trusted", "::ffff:127.0.0.1", Some("203.0.113.9"), None, "203.0.113.9"),
            ("mapped untrusted peer unwrapped", "::ffff:198.51.100.1", Some("203.0.113.9"), None, "198.51.100.1"),
            ("mapped hop trusted", "10.0.0.1", Some("203.0.113.9, ::ffff:10.0.0.2"), None, "203.0.113.9"),
            ("mapped result unwrapped", "10.0.0.1", Some("[::ffff:203.0.113.9]:1"), None, "203.0.113.9"),
            ("ipv6 peer trusted", "2001:db8:ffff::2", Some("203.0.113.9"), None, "203.0.113.9"),
            // Forwarded
            ("forwarded plain", "10.0.0.1", None, Some("for=203.0.113.9"), "203.0.113.9"),
            ("forwarded quoted v6 with port", "10.0.0.1", None, Some(r#"for="[2001:db8::9]:4711""#), "2001:db8::9"),
            ("forwarded param case", "10.0.0.1", None, Some("For=203.0.113.9;PROTO=https"), "203.0.113.9"),
            ("forwarded other params first", "10.0.0.1", None, Some("by=10.0.0.1; proto=https; for=203.0.113.9"), "203.0.113.9"),
            ("forwarded elements from right", "10.0.0.1", None, Some("for=1.1.1.1, for=203.0.113.9, for=10.0.0.2"), "203.0.113.9"),
            ("forwarded obfuscated rightmost", "10.0.0.1", None, Some("for=203.0.113.9, for=_hidden"), "10.0.0.1"),
            ("forwarded obfuscated left of client", "10.0.0.1", None, Some("for=_hidden, for=203.0.113.9"), "203.0.113.9"),
            ("forwarded unknown after trusted", "10.0.0.1", None, Some("for=unknown, for=10.0.0.2"), "10.0.0.2"),
            ("forwarded obfuscated port", "10.0.0.1", None, Some(r#"for="[2001:db8::9]:_p1""#), "2001:db8::9"),
            ("forwarded element without for", "10.0.0.1", None, Some("for=203.0.113.9, proto=https"), "10.0.0.1"),
            ("forwarded duplicate for", "10.0.0.1", None, Some("for=1.1.1.1;for=203.0.113.9"), "10.0.0.1"),
            ("forwarded comma inside quotes", "10.0.0.1", None, Some(r#"for=203.0.113.9;x="a, for=1.1.1.1""#), "203.0.113.9"),
            ("forwarded unterminated quote", "10.0.0.1", None, Some(r#"for=203.0.113.9, for="1.1.1.1"#), "10.0.0.1"),
            ("forwarded escaped value", "10.0.0.1", None, Some(r#"for="203.0.113\.9""#), "10.0.0.1"),
            ("forwarded pair without =", "10.0.0.1", None, Some("for=203.0.113.9;secure"), "10.0.0.1"),
            // precedence
            ("xff wins over forwarded", "10.0.0.1", Some("203.0.113.9"), Some("for=1.1.1.1"), "203.0.113.9"),
            ("empty xff falls to forwarded", "10.0.0.1", Some(" , "), Some("for=203.0.113.9"), "203.0.113.9"),
            ("garbage xff does not fall to forwarded", "10.0.0.1", Some("garbage"), Some("for=1.1.1.1"), "10.0.0.1"),
            // hop limit
            ("40 trusted hops: stops at the 32nd", "10.0.0.1", Some(chain_40.as_str()), None, "10.0.1.9"),
            ("client beyond 32 hops not believed", "10.0.0.1", Some(real_then_40.as_str()), None, "10.0.1.9"),
        ];
        for (name, peer, xff, fwd, expected) in cases {
            let got = client_ip(
                ip(peer),
                &trusted,
                xff.map(str::as_bytes),
                fwd.map(str::as_bytes),
            );
            assert_eq!(got, ip(expected), "{name}");
        }
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &TrustedProxies::default(),
                Some(b"203.0.113.9"),
                Some(b"for=203.0.113.9")
            ),
            ip("10.0.0.1")
        );
    }

    /// Several lines mean the same as their comma-joined value.
    #[test]
    fn multiple_lines_join_with_commas() {
        let trusted = nets(PROXIES);
        #[rustfmt::skip]
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["1.1.1.1", "203.0.113.9", "10.0.0.2"], &[], "203.0.113.9"),
            (&["1.1.1.1, 203.0.113.9", "10.0.0.3, 10.0.0.2"], &[], "203.0.113.9"),
            (&["203.0.113.9", ""], &[], "203.0.113.9"),
            (&["", " "], &["for=1.1.1.1", "for=203.0.113.9, for=10.0.0.2"], "203.0.113.9"),
            // A quote never spans lines: the first line's element is bad,
            // the second line's is read normally.
            (&[], &[r#"for=1.1.1.1;x="open"#, "for=203.0.113.9"], "203.0.113.9"),
            (&[], &["for=203.0.113.9", r#"for="open"#], "10.0.0.1"),
        ];
        for &(xff, fwd, expected) in cases {
            let got = client_ip_from_lines(
                ip("10.0.0.1"),
                &trusted,
                xff.iter().map(|l| l.as_bytes()),
                fwd.iter().map(|l| l.as_bytes()),
            )
            .ip;
            assert_eq!(got, ip(expected), "xff={xff:?} fwd={fwd:?}");
            let joined_xff = xff.join(",");
            let joined_fwd = fwd.join(",");
            let single = client_ip(
                ip("10.0.0.1"),
                &trusted,
                (!xff.is_empty()).then_some(joined_xff.as_bytes()),
                (!fwd.is_empty()).then_some(joined_fwd.as_bytes()),
            );
            if !fwd.iter().any(|l| l.matches('"').count() % 2 == 1) {
                assert_eq!(single, got, "joined xff={xff:?} fwd={fwd:?}");
            }
        }
    }

    #[test]
    fn forwarded_hop_limit_keeps_the_rightmost() {
        let trusted = nets(PROXIES);
        let mut elements: Vec<String> = vec!["for=203.0.113.9".into()];
        elements.extend((0..40).map(|i| format!("for=10.0.1.{i}")));
        let header = elements.join(", ");
        // 41 elements: the 32 rightmost are 10.0.1.8 ..= 10.0.1.39.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, None, Some(header.as_bytes())),
            ip("10.0.1.8")
        );
        let short = elements[..32].join(", ");
        // 10.0.1.0 ..= 10.0.1.30 are 31 trusted hops; the 32nd is the client.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, None, Some(short.as_bytes())),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn node_forms() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>)] = &[
            ("1.2.3.4", Some("1.2.3.4")), ("1.2.3.4:80", Some("1.2.3.4")), ("1.2.3.4:_x", Some("1.2.3.4")),
            ("[::1]", Some("::1")), ("[::1]:80", Some("::1")), ("::1", Some("::1")),
            ("1.2.3.4:", None), ("1.2.3.4:123456", None), ("[::1]80", None), ("[1.2.3.4]", None),
            ("_hidden", None), ("unknown", None), ("", None), ("1.2.3", None), ("01.2.3.4", None),
        ];
        for &(node, expected) in cases {
            assert_eq!(parse_node(node.as_bytes()), expected.map(ip), "{node:?}");
        }
    }

    #[test]
    fn the_source_of_the_address_is_reported() {
        let trusted = nets(PROXIES);
        let via = |peer: &str, xff: Option<&str>, fwd: Option<&str>| {
            client_ip_from_lines(
                ip(peer),
                &trusted,
                xff.map(str::as_bytes),
                fwd.map(str::as_bytes),
            )
        };
        assert_eq!(
            via("198.51.100.1", Some("203.0.113.9"), None).via,
            Via::Peer
        );
        assert_eq!(via("10.0.0.1", None, None).via, Via::Peer);
        assert_eq!(
            via("10.0.0.1", Some("203.0.113.9"), None),
            ClientIp {
                ip: ip("203.0.113.9"),
                via: Via::ForwardedFor
            }
        );
        assert_eq!(
            via("10.0.0.1", None, Some("for=203.0.113.9")),
            ClientIp {
                ip: ip("203.0.113.9"),
                via: Via::Forwarded
            }
        );
    }

    #[test]
    fn mapped_networks_are_their_ipv4_networks() {
        let t = nets(&["::ffff:10.0.0.0/104", "2001:db8::/32"]);
        assert_eq!(t, nets(&["10.0.0.0/8", "2001:db8::/32"]));
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("2001:db8::5")));
        assert!(!TrustedProxies::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn forwarded_for_trusts_only_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ff = |peer: &str, lines: &[&str]| {
            let peer = ip(peer);
            let mut out = Vec::new();
            push_forwarded_for(
                &mut out,
                peer,
                trusted.contains(peer),
                lines.iter().map(|l| l.as_bytes()),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            ff("81.2.69.142", &["1.2.3.4"]),
            "81.2.69.142",
            "untrusted: dropped"
        );
        assert_eq!(ff("81.2.69.142", &[]), "81.2.69.142");
        assert_eq!(ff("10.0.0.1", &["81.2.69.142"]), "81.2.69.142, 10.0.0.1");
        assert_eq!(
            ff("10.0.0.1", &["1.1.1.1, 81.2.69.142", " ", "10.0.0.9 "]),
            "1.1.1.1, 81.2.69.142, 10.0.0.9, 10.0.0.1"
        );
        assert_eq!(ff("10.0.0.1", &[]), "10.0.0.1");
        assert_eq!(ff("::ffff:10.0.0.1", &["8.8.8.8"]), "8.8.8.8, 10.0.0.1");
        assert_eq!(ff("2001:db8::1", &[]), "2001:db8::1");
    }
}
