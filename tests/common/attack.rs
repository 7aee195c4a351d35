//! What a scanner or an attacker sends, from one address: the traffic the
//! quiet-log and privacy tests replay.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{connect_from, raw_tls, TestCa};

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
