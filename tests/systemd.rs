//! systemd's readiness protocol (`Type=notify` in systemd/visitord.service):
//! the real binary, with a datagram socket standing in for systemd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Server, TestCa};

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_listening_and_status_after_each_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(dir.path(), &Options::default());
    let ca = Arc::new(TestCa::new());
    ca.leaf(&dir.path().join("tls"), "server", &["localhost"]);
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let s = Server::spawn_with_env(
        dir,
        config,
        ca,
        "info",
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let ready = receive(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == "STATUS=serving generation 1 on 2 listener(s)"),
        "{ready:?}"
    );
    // Ready means every listener is there.
    for addr in [s.https, s.http, s.metrics] {
        std::net::TcpStream::connect(addr).unwrap();
    }

    s.signal("HUP");
    let status = receive(&socket);
    assert_eq!(status, "STATUS=serving generation 2\n");

    // A refused reload keeps serving and says so.
    std::fs::write(s.path("projects.toml"), "[[project]]\nid = \"bad id\"\n").unwrap();
    let refused = receive(&socket);
    assert!(
        refused.starts_with("STATUS=serving generation 2; last reload refused: "),
        "{refused:?}"
    );
    assert!(refused.contains("projects.toml"), "{refused:?}");
    assert!(
        s.try_status().is_none(),
        "a refused reload must not stop it"
    );
}
