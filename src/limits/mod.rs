//! Abuse limits: requests per minute per client address and per project.
//! Concurrent connections are counted by `conn::registry`.
//!
//! Memory is fixed whatever the number of clients: counts live in
//! count-min sketches (`pingora_limits`), which store counters, never keys —
//! no client address is kept anywhere. The price is accuracy: addresses
//! whose hashes collide in every row share counts, so a client can be
//! counted high (never low). With `IP_SLOTS` counters per row, the expected
//! overcount of an address is at most about
//! `requests in the window / IP_SLOTS`: at 1,000,000 requests per minute
//! across all clients, about 15 requests per minute — small next to the
//! default limit of 600. Client sketches have two wide rows rather than
//! four narrow ones: every request updates one counter per row, each a
//! likely cache miss, and two rows of twice the width keep the same memory
//! with a lower expected overcount.
//!
//! Windows are fixed minutes: a client can send up to twice its limit
//! across a window boundary, and `Retry-After` names the end of the current
//! window.
//!
//! A client is a network, not always one address: every per-client limit
//! is keyed by [`ClientKey`], the address cut to `limits.ipv4_prefix` /
//! `limits.ipv6_prefix` bits (default /32 and /64), since whoever holds an
//! IPv6 /64 can pick any of 2^64 addresses.
//! Projects are few and named in configuration, so they are counted
//! exactly, per wall-clock minute, in `project_counts`; with `[limits]
//! shared_store` those counts add up across a fleet.

pub mod project_counts;

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use pingora_limits::rate::Rate;

use project_counts::ProjectCounts;

const WINDOW: Duration = Duration::from_secs(60);
/// Counters per sketch row for client addresses (two sketches, for this
/// window and the last, of `IP_ROWS` rows: 2 MiB in all).
pub const IP_SLOTS: usize = 65_536;
const IP_ROWS: usize = 2;

label_enum! {
    /// Which limit a request or connection ran into (a metrics label).
    pub enum Exceeded {
        ClientRate => "client_rate",
        ProjectRate => "project_rate",
        /// One client's concurrent connections.
        Connections => "connections",
        /// All connections together (`limits.max_connections`).
        ServerConnections => "server_connections",
    }
}

/// Why a connection over a connection limit is closed, as the log says it
/// (at debug: a flood must not flood the log).
pub const CONNECTION_REFUSED: &str = "connection refused: over the connection limit";

/// How many leading bits of an address name one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPrefixes {
    pub v4: u8,
    pub v6: u8,
}

/// The key every per-client limit counts by: an address with its host bits
/// cleared. Only [`ClientPrefixes::key`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientPrefixes {
    /// The client `ip` (any form; IPv4-mapped IPv6 counts as IPv4) belongs to.
    pub fn key(self, ip: IpAddr) -> ClientKey {
        let masked = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask(u32::MAX, self.v4, 32);
                IpAddr::V4(Ipv4Addr::from(bits))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & mask(u128::MAX, self.v6, 128);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        };
        ClientKey(masked)
    }
}

/// `all` with only its `prefix` leading bits set (of `width`).
fn mask<T>(all: T, prefix: u8, width: u32) -> T
where
    T: std::ops::Shl<u32, Output = T> + Default,
{
    match width.checked_sub(u32::from(prefix)) {
        Some(shift) if shift < width => all << shift,
        // A prefix of 0 keys every address alike; one past the width is
        // refused by the configuration.
        Some(_) => T::default(),
        None => all,
    }
}

/// A refusal: which limit, and how long until trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub exceeded: Exceeded,
    pub retry_after: Duration,
}

/// The counters. One per process, shared by every snapshot: a reload must
/// not hand every client a fresh allowance. The limits themselves come from
/// the configuration of the snapshot a request runs on.
pub struct Limiter {
    clients: Rate,
    projects: ProjectCounts,
    started: Instant,
    window: Duration,
    /// Time since the Unix epoch: project windows are wall-clock minutes.
    clock: fn() -> Duration,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::with_window(WINDOW)
    }

    /// Limits over `window` instead of a minute (tests).
    fn with_window(window: Duration) -> Limiter {
        Limiter {
            clients: Rate::new_with_estimator_config(window, IP_ROWS, IP_SLOTS),
            projects: ProjectCounts::new(),
            started: Instant::now(),
            window,
            clock: since_epoch,
        }
    }

    /// A limiter whose clock stands still at `clock()` (tests: no window
    /// ends in the middle of one).
    #[cfg(test)]
    pub(crate) fn with_clock(clock: fn() -> Duration) -> Limiter {
        Limiter {
            clock,
            ..Limiter::new()
        }
    }

    /// Counts one request from `client`; refuses it above `per_minute`
    /// (0: no limit, nothing counted).
    pub fn client_request(&self, client: ClientKey, per_minute: u32) -> Result<(), Refusal> {
        self.count(&self.clients, &client, per_minute, Exceeded::ClientRate)
    }

    /// Counts one request for `project`; refuses it, uncounted, once the
    /// project's count this minute (the fleet's, with a shared store) is at
    /// `per_minute` (0: no limit, nothing counted).
    pub fn project_request(&self, project: &str, per_minute: u32) -> Result<(), Refusal> {
        if per_minute == 0 {
            return Ok(());
        }
        let now = (self.clock)();
        if self
            .projects
            .admit(project, per_minute, project_counts::window_at(now))
        {
            Ok(())
        } else {
            Err(Refusal {
                exceeded: Exceeded::ProjectRate,
                retry_after: project_counts::rest_of_window(now).max(Duration::from_secs(1)),
            })
        }
    }

    /// The per-project counts (the shared-store sync reads and updates them).
    pub fn projects(&self) -> &ProjectCounts {
        &self.projects
    }

    /// The current project window.
    pub fn project_window(&self) -> project_counts::Window {
        project_counts::window_at((self.clock)())
    }

    fn count<K: Hash>(
        &self,
        rate: &Rate,
        key: &K,
        per_minute: u32,
        exceeded: Exceeded,
    ) -> Result<(), Refusal> {
        if per_minute == 0 {
            return Ok(());
        }
        let seen = rate.observe(key, 1);
        if seen <= per_minute as isize {
            Ok(())
        } else {
            Err(Refusal {
                exceeded,
                retry_after: self.rest_of_window(),
            })
        }
    }

    /// Time left in the current fixed window (at least a second, so that
    /// `Retry-After` is never 0).
    fn rest_of_window(&self) -> Duration {
        let window = self.window.as_millis().max(1);
        let into = self.started.elapsed().as_millis() % window;
        let rest = Duration::from_millis((window - into) as u64);
        rest.max(Duration::from_secs(1))
    }
}

/// Time since the Unix epoch (0 for a clock set before it).
fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `Retry-After` in whole seconds, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        PER_ADDRESS.key(s.parse().unwrap())
    }

    const PER_ADDRESS: ClientPrefixes = ClientPrefixes { v4: 32, v6: 128 };

    #[test]
    fn client_limit_refuses_above_the_limit_with_retry_after() {
        let l = Limiter::new();
        for _ in 0..5 {
            assert!(l.client_request(ip("192.0.2.1"), 5).is_ok());
        }
        let refusal = l.client_request(ip("192.0.2.1"), 5).unwrap_err();
        assert_eq!(refusal.exceeded, Exceeded::ClientRate);
        assert!(refusal.retry_after <= WINDOW && refusal.retry_after >= Duration::from_secs(1));
        // Another client is not affected.
        assert!(l.client_request(ip("192.0.2.2"), 5).is_ok());
    }

    /// Nothing outlives its window: the sketch of the window before last is
    /// cleared, so a refused client is counted from zero again.
    #[test]
    fn counts_are_forgotten_after_the_window() {
        let l = Limiter::with_window(Duration::from_millis(100));
        for _ in 0..3 {
            assert!(l.client_request(ip("192.0.2.1"), 3).is_ok());
        }
        assert!(l.client_request(ip("192.0.2.1"), 3).is_err());
        std::thread::sleep(Duration::from_millis(250));
        for _ in 0..3 {
            assert!(l.client_request(ip("192.0.2.1"), 3).is_ok());
        }
    }

    /// The resident memory of the process, in bytes (Linux).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// What the limiter holds does not grow with the number of clients:
    /// once every counter of its sketches has been touched, half a million
    /// more addresses add nothing. Keeping them (16 bytes each, before any
    /// map overhead) would add at least 8 MB.
    #[test]
    fn the_limiter_keeps_counters_not_addresses() {
        let l = Limiter::new();
        let addresses = |from: u32| (from..from + 500_000).map(|n| IpAddr::from(Ipv4Addr::from(n)));
        for a in addresses(0x0a00_0000) {
            let _ = l.client_request(PER_ADDRESS.key(a), 600);
        }
        let before = resident();
        for a in addresses(0x0b00_0000) {
            let _ = l.client_request(PER_ADDRESS.key(a), 600);
        }
        let grown = resident().saturating_sub(before);
        assert!(
            grown < 4 << 20,
            "grew by {grown} bytes for 500,000 new addresses"
        );
    }

    #[test]
    fn zero_disables_a_limit() {
        let l = Limiter::new();
        for _ in 0..1000 {
            assert!(l.client_request(ip("192.0.2.1"), 0).is_ok());
            assert!(l.project_request("demo", 0).is_ok());
        }
    }

    #[test]
    fn project_limit_is_per_project_and_minute() {
        // 25 s into a minute.
        let l = Limiter::with_clock(|| Duration::from_secs(1_740_000_025));
        for _ in 0..3 {
            assert!(l.project_request("a", 3).is_ok());
        }
        let refusal = l.project_request("a", 3).unwrap_err();
        assert_eq!(refusal.exceeded, Exceeded::ProjectRate);
        assert_eq!(refusal.retry_after, Duration::from_secs(35));
        assert!(l.project_request("b", 3).is_ok());
        assert_eq!(l.projects().counts("a", l.project_window()), (3, 0));
    }

    #[test]
    fn clients_are_networks_of_the_configured_size() {
        let p = ClientPrefixes { v4: 32, v6: 64 };
        let key = |s: &str| p.key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        let wide = ClientPrefixes { v4: 24, v6: 48 };
        assert_eq!(
            wide.key("192.0.2.1".parse().unwrap()),
            wide.key("192.0.2.200".parse().unwrap())
        );
        assert_eq!(
            wide.key("2001:db8:1:2::1".parse().unwrap()),
            wide.key("2001:db8:1:ffff::1".parse().unwrap())
        );
        let all = ClientPrefixes { v4: 0, v6: 0 };
        assert_eq!(
            all.key("192.0.2.1".parse().unwrap()),
            all.key("10.0.0.1".parse().unwrap())
        );
        let l = Limiter::new();
        for n in 0..5 {
            assert!(l
                .client_request(key(&format!("2001:db8:1:2::{n:x}")), 5)
                .is_ok());
        }
        assert!(
            l.client_request(key("2001:db8:1:2:abcd::1"), 5).is_err(),
            "a fresh address in the same /64 is the same client"
        );
    }

    /// Many distinct clients do not push an honest one over its limit: the
    /// sketch is sized for realistic client counts.
    #[test]
    fn many_clients_do_not_starve_one() {
        let l = Limiter::new();
        for i in 0..200_000u32 {
            let other = PER_ADDRESS.key(IpAddr::from(i.to_be_bytes()));
            let _ = l.client_request(other, 600);
        }
        for _ in 0..550 {
            assert!(l.client_request(ip("198.51.100.7"), 600).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
        assert_eq!(retry_after_secs(Duration::from_millis(59_001)), 60);
    }
}
