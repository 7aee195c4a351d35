//! What a scanner or an attacker sends, from one address: the traffic the
//! quiet-log and privacy tests replay.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{connect_from, raw_tls, Server, TestCa};

/// The attacker's address: a loopback address nothing else uses, so
/// finding it in a log can only mean a leak.
pub const ATTACKER: &str = "127.45.67.89";
/// A legitimate client, on another address.
pub const CLIENT: &str = "127.0.0.2";

pub fn attacker() -> IpAddr {
    ATTACKER.parse().unwrap()
}

pub fn client() -> IpAddr {
    CLIENT.parse().unwrap()
}

/// A TLS connection from `bind`, handshake done.
pub fn tls_from(
    addr: SocketAddr,
    ca: &TestCa,
    bind: IpAddr,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = connect_from(addr, Some(bind));
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(ca.client_config()), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(tcp: TcpStream) {
    let socket = socket2::Socket::from(tcp);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// A burst of what scanners do: half-sent requests, resets, bytes that are
/// not TLS, TLS with garbage inside, requests cut short, a head trickled
/// past the head deadline, a head over the size limit. Every connection is
/// from [`ATTACKER`]; `slow` is the server's `request_header_timeout`.
pub fn scanner_burst(https: SocketAddr, http: SocketAddr, ca: &TestCa, slow: Duration) {
    let from = attacker();
    for _ in 0..5 {
        // A request head cut off halfway, then closed.
        if let Ok(mut tls) = tls_from(https, ca, from) {
            let _ = tls.write_all(b"GET /api/?pid=demo HTTP/1.1\r\nHost: loc");
            let _ = tls.flush();
            drop(tls);
        }
        // A TLS connection reset mid-request.
        if let Ok(mut tls) = tls_from(https, ca, from) {
            let _ = tls.write_all(b"GET /api/?pid=demo HTTP/1.1\r\n");
            let _ = tls.flush();
            reset(tls.sock);
        }
        // A TCP connection reset before the handshake.
        reset(connect_from(https, Some(from)));
        // Not TLS at all, on the TLS port.
        let mut tcp = connect_from(https, Some(from));
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = tcp.read_to_end(&mut Vec::new());
        // A ClientHello cut short.
        let mut tcp = connect_from(https, Some(from));
        let _ = tcp.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        drop(tcp);
        // Garbage inside TLS, and a request the parser refuses.
        for raw in [&b"\x00\x01\x02\x03\r\n\r\n"[..], b"GET / HTTP/9.9\r\n\r\n"] {
            let _ = raw_tls(https, ca, Some(from), raw, Duration::from_secs(3));
        }
        // Plain HTTP garbage to the redirect listener.
        let mut tcp = connect_from(http, Some(from));
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.write_all(b"\x16\x03\x01garbage\r\n\r\n");
        let _ = tcp.read_to_end(&mut Vec::new());
    }
    // A head over the size limit.
    let big = format!(
        "GET /api/?pid=demo HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let _ = raw_tls(
        https,
        ca,
        Some(from),
        big.as_bytes(),
        Duration::from_secs(5),
    );
    // A head trickled past its deadline (slowloris).
    if let Ok(mut tls) = tls_from(https, ca, from) {
        let _ = tls.write_all(b"GET /api/?pid=demo HTTP/1.1\r\n");
        let _ = tls.flush();
        let end = std::time::Instant::now() + slow + Duration::from_secs(1);
        while std::time::Instant::now() < end {
            if tls
                .write_all(b"X-A: b\r\n")
                .and_then(|()| tls.flush())
                .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = tls.read_to_end(&mut Vec::new());
    }
}

/// An HTTP/2 "rapid reset" (CVE-2023-44487): streams opened and cancelled
/// at once, `streams` of them on one connection from `bind`.
pub fn h2_rapid_reset(https: SocketAddr, ca: &TestCa, bind: IpAddr, streams: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = ca.client_config();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    runtime.block_on(async move {
        let tcp = connect_from(https, Some(bind));
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let Ok(tls) = connector.connect(name, tcp).await else {
            return;
        };
        let Ok((mut client, connection)) = h2::client::handshake(tls).await else {
            return;
        };
        let driver = tokio::spawn(connection);
        for _ in 0..streams {
            let request =
                http::Request::get(format!("https://localhost:{}/api/?pid=demo", https.port()))
                    .header("origin", "https://example.com")
                    .body(())
                    .unwrap();
            let Ok(mut ready) = client.clone().ready().await else {
                break;
            };
            let Ok((_response, mut stream)) = ready.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            client = ready;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    });
}

/// A TLS record of `kind` (22 handshake, 21 alert, 23 application data).
fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 3, 1];
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A handshake message of `kind` (1 ClientHello, 20 Finished, 21
/// CertificateURL).
fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

fn with_len16(body: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A TLS 1.3 ClientHello naming `server_name`, which a real client would
/// refuse to send when it is no valid DNS name.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let ext = |kind: u16, body: Vec<u8>| {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_len16(&body));
        out
    };
    let mut name = vec![0u8];
    name.extend(with_len16(server_name.as_bytes()));
    let mut key_share = 0x001d_u16.to_be_bytes().to_vec();
    key_share.extend(with_len16(&[9u8; 32]));
    let extensions = [
        ext(0x0000, with_len16(&name)),
        ext(0x000a, with_len16(&0x001d_u16.to_be_bytes())),
        ext(0x000d, with_len16(&[0x04, 0x03, 0x08, 0x04])),
        ext(0x002b, vec![2, 3, 4]),
        ext(0x0033, with_len16(&key_share)),
    ]
    .concat();
    let mut hello = vec![3, 3];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend(with_len16(&[0x13, 0x01, 0x13, 0x03, 0xc0, 0x2b]));
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend(with_len16(&extensions));
    record(22, &handshake(1, &hello))
}

/// First flights no client should send, each of which rustls once logged
/// at warn: an invalid server name, warning alerts before the ClientHello,
/// a Finished, a CertificateURL or application data first.
pub fn odd_first_flights() -> Vec<Vec<u8>> {
    let warning_alert = record(21, &[1, 112]);
    vec![
        client_hello("bad_name!"),
        client_hello("under_score.example"),
        [
            warning_alert.clone(),
            warning_alert.clone(),
            warning_alert.clone(),
            warning_alert,
            client_hello("localhost"),
        ]
        .concat(),
        record(22, &handshake(20, &[0u8; 32])),
        record(22, &handshake(21, &[0u8; 8])),
        record(23, &[0u8; 40]),
    ]
}

/// Sends each of [`odd_first_flights`] on its own connection from `bind`
/// and reads until the server closes.
pub fn odd_handshakes(https: SocketAddr, bind: IpAddr) {
    for flight in odd_first_flights() {
        let mut tcp = connect_from(https, Some(bind));
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = tcp.write_all(&flight);
        let _ = tcp.read_to_end(&mut Vec::new());
    }
}

/// HTTP/2 streams reset by the client once their answer has started:
/// `streams` requests for `authority` and `path` on one connection from
/// `bind`, each cancelled as soon as its response head arrives.
pub fn h2_reset_after_headers(
    https: SocketAddr,
    ca: &TestCa,
    bind: IpAddr,
    authority: &str,
    path: &str,
    streams: usize,
) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = ca.client_config();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let uri = format!("https://{authority}:{}{path}", https.port());
    runtime.block_on(async move {
        let tcp = connect_from(https, Some(bind));
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let name = rustls::pki_types::ServerName::try_from(authority.to_owned()).unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut answered = 0;
        for _ in 0..streams {
            let request = http::Request::get(&uri)
                .header("origin", "https://example.com")
                .body(())
                .unwrap();
            let Ok(mut ready) = client.clone().ready().await else {
                break;
            };
            let Ok((response, mut stream)) = ready.send_request(request, true) else {
                break;
            };
            if tokio::time::timeout(Duration::from_secs(5), response)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                answered += 1;
            }
            stream.send_reset(h2::Reason::CANCEL);
            client = ready;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        answered
    })
}

/// How many descriptors the server process holds.
pub fn open_files(s: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count()
}

/// How many TCP connections from `peer` the process holds: its sockets
/// (from `/proc/PID/fd`) whose remote address in `/proc/net/tcp` is
/// `peer`. A connection still in the kernel's accept queue has no socket in
/// the process yet, so it is not counted.
pub fn held_from(s: &Server, peer: IpAddr) -> usize {
    let IpAddr::V4(peer) = peer else {
        panic!("IPv4 peers only")
    };
    let ours: std::collections::HashSet<String> =
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                let l = l.to_str()?;
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
    // /proc/net/tcp writes an IPv4 address as its four bytes read as a
    // little-endian number, in hex.
    let hex = format!("{:08X}:", u32::from_le_bytes(peer.octets()));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2).is_some_and(|r| r.starts_with(&hex))
                && fields.get(9).is_some_and(|inode| ours.contains(*inode))
        })
        .count()
}

/// Whether the server has closed `tcp` (a read ends, rather than timing
/// out).
pub fn closed_by_server(tcp: &mut TcpStream) -> bool {
    tcp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    match tcp.read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
