//! The PROXY protocol header (HAProxy, versions 1 and 2) that an L4 load
//! balancer sends before the TLS handshake, naming the client it accepted.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//! Parsing is incremental: [`parse`] is called on the bytes read so far and
//! says whether more are needed, so the caller reads exactly the header and
//! hands any bytes after it (the TLS ClientHello) back to the stream.
//!
//! What is believed: the source address of a `PROXY` (v2) or `TCP4`/`TCP6`
//! (v1) header. `LOCAL` (v2, the balancer's own health checks), `UNKNOWN`
//! (v1) and non-IP families carry no client, so the connection keeps its TCP
//! peer. Anything else that does not follow the spec is refused: a
//! listener configured for the PROXY protocol never guesses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header including `\r\n` (spec §2.1).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header accepted: the 16 fixed bytes plus addresses and TLVs.
/// The spec allows 64 KiB; balancers send a few hundred bytes at most
/// (AWS adds a VPC endpoint TLV, HAProxy SSL details), so a larger
/// claim is refused rather than buffered.
pub const V2_MAX_LEN: usize = 16 + 1024;

/// A header read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header took; what follows belongs to TLS.
    pub len: usize,
    /// The client, when the header names one.
    pub source: Option<SocketAddr>,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid prefix: read more bytes and call again.
    Incomplete,
    Complete(ProxyHeader),
}

/// Why a connection's first bytes are not an acceptable PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("PROXY v2 header longer than the accepted maximum")]
    V2TooLong,
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Examines the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if starts_like(buf, V1_PREFIX) {
        parse_v1(buf)
    } else if starts_like(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ProxyHeaderError::{V1TooLong, V1};
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // Without CRLF yet: a stray CR or LF alone is already wrong.
        if buf.len() >= V1_MAX_LEN {
            return Err(V1TooLong);
        }
        let body = buf.strip_suffix(b"\r").unwrap_or(buf);
        if body.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(V1("stray CR or LF"));
        }
        return Ok(Parsed::Incomplete);
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(V1TooLong);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| V1("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let source = match fields.next() {
        // The rest of an UNKNOWN line is to be ignored (spec §2.1).
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let v4 = family == "TCP4";
            let src = v1_ip(fields.next(), v4)?;
            let _dst = v1_ip(fields.next(), v4)?;
            let src_port = v1_port(fields.next())?;
            let _dst_port = v1_port(fields.next())?;
            if fields.next().is_some() {
                return Err(V1("trailing fields"));
            }
            Some(SocketAddr::new(src, src_port))
        }
        _ => return Err(V1("unknown protocol family")),
    };
    Ok(Parsed::Complete(ProxyHeader { len, source }))
}

fn v1_ip(field: Option<&str>, v4: bool) -> Result<IpAddr, ProxyHeaderError> {
    let text = field.ok_or(ProxyHeaderError::V1("missing address"))?;
    let ip = if v4 {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    } else {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    };
    ip.map_err(|_| ProxyHeaderError::V1("invalid address"))
}

fn v1_port(field: Option<&str>) -> Result<u16, ProxyHeaderError> {
    let text = field.ok_or(ProxyHeaderError::V1("missing port"))?;
    // Decimal without sign or leading zeros (spec §2.1).
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(ProxyHeaderError::V1("invalid port"));
    }
    text.parse()
        .map_err(|_| ProxyHeaderError::V1("port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ProxyHeaderError::{V2TooLong, V2};
    if buf.len() < 16 {
        // The version nibble is the 13th byte; refuse early when it is there.
        if let Some(&vc) = buf.get(12) {
            if vc >> 4 != 2 {
                return Err(V2("unsupported version"));
            }
        }
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(V2("unsupported version"));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let addr_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + addr_len;
    if len > V2_MAX_LEN {
        return Err(V2TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[16..len];
    let source = match command {
        // LOCAL: the balancer speaking for itself; the address block, if
        // any, is to be ignored (spec §2.2).
        0x0 => None,
        0x1 => {
            match (family, transport) {
                // UNSPEC: "the receiver must accept" it and use the real
                // connection endpoints.
                (0x0, _) => None,
                (0x1, 0x1) => {
                    let a = block.get(..12).ok_or(V2("short IPv4 address block"))?;
                    let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                    Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
                }
                (0x2, 0x1) => {
                    let a = block.get(..36).ok_or(V2("short IPv6 address block"))?;
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[..16]);
                    let ip = Ipv6Addr::from(octets);
                    Some(SocketAddr::new(
                        ip.into(),
                        u16::from_be_bytes([a[32], a[33]]),
                    ))
                }
                // AF_UNIX carries no IP client.
                (0x3, 0x1 | 0x2) => None,
                (0x1 | 0x2, 0x2) => return Err(V2("UDP on a TCP listener")),
                _ => return Err(V2("unknown address family or transport")),
            }
        }
        _ => return Err(V2("unknown command")),
    };
    Ok(Parsed::Complete(ProxyHeader { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> ProxyHeader {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn v2(command: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(fam);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn v4_block(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sp.to_be_bytes());
        b.extend_from_slice(&dp.to_be_bytes());
        b
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = complete(b"PROXY TCP4 81.2.69.142 10.0.0.1 56324 443\r\n\x16\x03\x01");
        assert_eq!(h.len, 43);
        assert_eq!(h.source, Some("81.2.69.142:56324".parse().unwrap()));
        let h = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
    }

    #[test]
    fn v1_unknown_keeps_the_peer() {
        let h = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!(
            h,
            ProxyHeader {
                len: 15,
                source: None
            }
        );
        let h = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        let line = b"PROXY TCP4 81.2.69.142 10.0.0.1 56324 443\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n}");
        }
    }

    #[test]
    fn v1_refusals() {
        use ProxyHeaderError::*;
        let cases: &[(&[u8], ProxyHeaderError)] = &[
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                V1("trailing fields"),
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1("missing port")),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", V1("invalid address")),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", V1("invalid address")),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                V1("port out of range"),
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1("invalid port")),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", V1("invalid port")),
            (
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
                V1("invalid address"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                V1("unknown protocol family"),
            ),
            (b"PROXY TCP4 1.2.3.4\n5.6.7.8", V1("stray CR or LF")),
            (b"PROXY TCP4 \xff\r\n", V1("not ASCII")),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = format!("PROXY UNKNOWN {}", "x".repeat(120));
        assert_eq!(parse(long.as_bytes()), Err(V1TooLong));
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(V1TooLong));
    }

    #[test]
    fn anything_else_is_missing_at_once() {
        for input in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"proxy TCP4",
            b"\r\n\r\n\0\r\nQUIx",
            b"X",
        ] {
            assert_eq!(parse(input), Err(ProxyHeaderError::Missing), "{input:?}");
        }
    }

    #[test]
    fn v2_tcp4_with_tlvs_and_trailing_tls() {
        let mut block = v4_block([8, 8, 8, 8], [10, 0, 0, 1], 40000, 443);
        block.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a NOOP TLV
        let mut buf = v2(0x1, 0x11, &block);
        let header_len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01");
        let h = complete(&buf);
        assert_eq!(h.len, header_len);
        assert_eq!(h.source, Some("8.8.8.8:40000".parse().unwrap()));
        for n in 0..header_len {
            assert_eq!(parse(&buf[..n]), Ok(Parsed::Incomplete), "{n}");
        }
    }

    #[test]
    fn v2_tcp6() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8:1::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&1234u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let h = complete(&v2(0x1, 0x21, &block));
        assert_eq!(h.source, Some("[2001:db8:1::7]:1234".parse().unwrap()));
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_peer() {
        let block = v4_block([8, 8, 8, 8], [10, 0, 0, 1], 1, 2);
        assert_eq!(complete(&v2(0x0, 0x11, &block)).source, None);
        assert_eq!(complete(&v2(0x0, 0x00, &[])).source, None);
        assert_eq!(complete(&v2(0x1, 0x00, &[])).source, None);
        assert_eq!(complete(&v2(0x1, 0x31, &[0u8; 216])).source, None);
    }

    #[test]
    fn v2_refusals() {
        use ProxyHeaderError::*;
        let block = v4_block([8, 8, 8, 8], [10, 0, 0, 1], 1, 2);
        let mut wrong_version = v2(0x1, 0x11, &block);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(V2("unsupported version")));
        assert_eq!(parse(&wrong_version[..13]), Err(V2("unsupported version")));
        assert_eq!(parse(&v2(0x2, 0x11, &block)), Err(V2("unknown command")));
        assert_eq!(
            parse(&v2(0x1, 0x12, &block)),
            Err(V2("UDP on a TCP listener"))
        );
        assert_eq!(
            parse(&v2(0x1, 0x41, &block)),
            Err(V2("unknown address family or transport"))
        );
        assert_eq!(
            parse(&v2(0x1, 0x11, &block[..8])),
            Err(V2("short IPv4 address block"))
        );
        assert_eq!(
            parse(&v2(0x1, 0x21, &block)),
            Err(V2("short IPv6 address block"))
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(V2TooLong));
    }
}
