//! The client address behind trusted proxies.
//!
//! Input: lines separated by `\n`. Line 0 is the TCP peer (an address as
//! text; anything else is turned into an address from its bytes), line 1
//! `X-Forwarded-For`, line 2 `Forwarded`; a line that is exactly `-` is an
//! absent header. Inside a header line, `\r` separates the lines of a header
//! sent several times.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use visitord::net::client_ip::{client_ip, client_ip_from_lines, TrustedProxies};

/// A realistic list: private ranges, loopback, a documentation range of each
/// family, and an IPv4-mapped block written as IPv6 (read as its IPv4
/// network, as the module docs say).
static TRUSTED: LazyLock<TrustedProxies> = LazyLock::new(|| {
    TrustedProxies::new(
        [
            "10.0.0.0/8",
            "127.0.0.0/8",
            "192.168.0.0/16",
            "203.0.113.0/28",
            "::1/128",
            "2001:db8:ffff::/48",
            "::ffff:172.16.0.0/108",
        ]
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok()),
    )
});

fn is_trusted(ip: IpAddr) -> bool {
    TRUSTED.contains(ip)
}

fn peer_from(line: &[u8]) -> IpAddr {
    if let Some(ip) = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        return ip;
    }
    let mut b = [0u8; 16];
    for (slot, byte) in b.iter_mut().zip(line.iter().skip(1)) {
        *slot = *byte;
    }
    match line.first() {
        Some(tag) if tag % 2 == 0 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        _ => IpAddr::V6(Ipv6Addr::from(b)),
    }
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.splitn(3, |&b| b == b'\n').collect();
    let peer = peer_from(lines.first().copied().unwrap_or_default());
    let header = |i: usize| lines.get(i).copied().filter(|l| *l != b"-");
    let (xff, fwd) = (header(1), header(2));
    let trusted = &*TRUSTED;

    // Headers sent as one line each (what `client_ip` documents).
    let xff_joined = xff.map(|x| x.split(|&b| b == b'\r').collect::<Vec<_>>().join(&b','));
    let fwd_joined = fwd.map(|x| x.split(|&b| b == b'\r').collect::<Vec<_>>().join(&b','));
    let got = client_ip(peer, trusted, xff_joined.as_deref(), fwd_joined.as_deref());

    let canonical = peer.to_canonical();
    assert_eq!(
        got,
        got.to_canonical(),
        "result not unwrapped from IPv4-mapped"
    );
    if !is_trusted(canonical) {
        assert_eq!(
            got, canonical,
            "headers from an untrusted peer were believed"
        );
    }
    if xff.is_none() && fwd.is_none() {
        assert_eq!(got, canonical, "no headers: the peer");
    }
    if got != canonical {
        assert!(is_trusted(canonical));
    }

    // Several lines mean the same as their values joined with commas (for
    // `X-Forwarded-For` exactly; `Forwarded` quotes never span lines, so it
    // only has to not panic).
    let xff_lines: Vec<&[u8]> = xff.map_or(Vec::new(), |x| x.split(|&b| b == b'\r').collect());
    let fwd_lines: Vec<&[u8]> = fwd.map_or(Vec::new(), |x| x.split(|&b| b == b'\r').collect());
    let by_lines = client_ip_from_lines(
        peer,
        trusted,
        xff_lines.iter().copied(),
        fwd_joined.as_deref(),
    )
    .ip;
    assert_eq!(
        by_lines, got,
        "X-Forwarded-For lines differ from their join"
    );
    let by_lines = client_ip_from_lines(peer, trusted, xff_lines.iter().copied(), fwd_lines).ip;
    assert_eq!(by_lines, by_lines.to_canonical());
    if !is_trusted(canonical) {
        assert_eq!(by_lines, canonical);
    }

    // An empty X-Forwarded-For is the same as none.
    assert_eq!(
        client_ip(peer, trusted, Some(b""), fwd_joined.as_deref()),
        client_ip(peer, trusted, None, fwd_joined.as_deref()),
    );
    // Nothing is trusted: always the peer.
    assert_eq!(
        client_ip(
            peer,
            &TrustedProxies::default(),
            xff_joined.as_deref(),
            fwd_joined.as_deref()
        ),
        canonical
    );
});
