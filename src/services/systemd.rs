//! systemd's readiness protocol (`Type=notify`): `READY=1` once every
//! listener is bound, and a `STATUS=` line that `systemctl status` shows
//! after start and after each reload. Without `$NOTIFY_SOCKET` (not under
//! systemd, or another `Type=`) nothing is sent.
//!
//! Pingora binds its listeners inside its service tasks and says nothing
//! when they are bound, so readiness is observed from the outside: the
//! process's own view of the kernel's TCP tables (`/proc/self/net/tcp` and
//! `tcp6`) is polled until every configured address is in the LISTEN state.
//! A connection probe would do as well but would show up as a failed TLS
//! handshake in the log.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How long to wait for the listeners before saying ready anyway (with a
/// warning): Pingora aborts the process when it cannot bind, so a listener
/// missing this long means the tables could not be read, not a failure.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// Whether a service manager asked to be told.
fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `READY=1` with `status` once every address in `addrs` is
/// listening, from a thread of its own. A no-op when not under
/// `Type=notify`. `take_over`: this process took the sockets of the
/// service's main process (`run --upgrade`), so it also says `MAINPID=`
/// with its own id: systemd then follows it, and the old process's exit
/// does not end the service (the unit's `NotifyAccess=all` lets it speak).
pub fn notify_ready_when_listening(addrs: Vec<SocketAddr>, status: String, take_over: bool) {
    if !wanted() {
        return;
    }
    let line = status.clone();
    let spawned = std::thread::Builder::new()
        .name("visitord-ready".into())
        .spawn(move || {
            let started = Instant::now();
            while !all_listening(&addrs) {
                if started.elapsed() > LISTEN_DEADLINE {
                    log::warn!(
                        "listeners not seen in the kernel's TCP tables after {}s; telling systemd the service is ready anyway",
                        LISTEN_DEADLINE.as_secs()
                    );
                    break;
                }
                std::thread::sleep(POLL);
            }
            send(&ready(&line, take_over));
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the readiness thread ({e}); telling systemd now");
        send(&ready(&status, take_over));
    }
}

fn ready(status: &str, take_over: bool) -> Vec<NotifyState<'_>> {
    let mut states = Vec::with_capacity(3);
    if take_over {
        states.push(NotifyState::MainPid(std::process::id()));
    }
    states.extend([NotifyState::Ready, NotifyState::Status(status)]);
    states
}

/// Updates the status line `systemctl status` shows.
pub fn status(text: &str) {
    if wanted() {
        send(&[NotifyState::Status(text)]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

fn all_listening(addrs: &[SocketAddr]) -> bool {
    let listening = listening_now();
    addrs.iter().all(|a| listening.contains(a))
}

/// The TCP addresses listening in this network namespace now, by any
/// process.
pub fn listening_now() -> Vec<SocketAddr> {
    listening_sockets(&tcp_tables())
}

/// The socket inodes of the TCP listeners on `addrs` in this network
/// namespace (field 10 of the tables' lines).
pub fn listening_inodes(addrs: &[SocketAddr]) -> Vec<u64> {
    tcp_tables()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = parse_address(fields.get(1)?)?;
            let listening = fields.get(3) == Some(&"0A") && addrs.contains(&addr);
            listening.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

fn tcp_tables() -> String {
    let mut tables = String::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            tables.push_str(&text);
        }
    }
    tables
}

/// The local addresses of the sockets in the LISTEN state in the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`: lines of
/// `sl local_address rem_address st ...`, addresses as hex `ADDR:PORT`
/// (the address in the kernel's byte order, 32 bits at a time), state `0A`
/// for LISTEN. Lines that do not parse are skipped.
fn listening_sockets(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next()?;
            let state = fields.nth(1)?;
            (state == "0A").then(|| parse_address(local)).flatten()
        })
        .collect()
}

fn parse_address(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(8 * i..8 * i + 8)?;
        // Each 32-bit word is printed as a number in host byte order.
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as a little-endian kernel prints them.
    #[cfg(target_endian = "little")]
    #[test]
    fn listening_sockets_are_read_from_the_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   garbage line
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
   1: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
";
        let got = listening_sockets(&format!("{tcp}{tcp6}"));
        let want: Vec<SocketAddr> = [
            "127.0.0.1:8080",
            "0.0.0.0:443",
            "[::1]:8443",
            "[2001:db8::1]:443",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        // The established connection on 127.0.0.1:8081 is not listening.
        assert_eq!(got, want);
    }

    /// The real tables: a socket this test binds shows up as listening.
    #[test]
    fn a_bound_listener_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(all_listening(&[addr]));
        drop(listener);
        assert!(!all_listening(&[addr]));
    }
}
