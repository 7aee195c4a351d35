//! The one registry of open connections: every accepted connection takes a
//! place here (against `limits.max_connections` in all and
//! `limits.max_connections_per_ip` per client network) and gives it back
//! when it closes, whichever listener accepted it. The places of the HTTP
//! listeners (TLS and redirect) are also counted as serving, which is what
//! a graceful shutdown waits for.
//!
//! Counts only: a client network's count lives in `pingora_limits`'
//! in-flight table, keyed by [`ClientKey`] (a hash, no address kept).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};

use crate::limits::{ClientKey, Exceeded, Refusal};
use crate::observe::metrics::METRICS;

/// The default of `limits.max_connections` for an open-file limit: half of
/// what is left after 64 descriptors of room for listeners, databases and
/// watched files, since a proxied connection holds a second descriptor to
/// its upstream.
pub fn max_connections_for(open_files: u64) -> u32 {
    let usable = open_files.saturating_sub(64) / 2;
    u32::try_from(usable).unwrap_or(u32::MAX).max(64)
}

/// The counts. One per process, shared by every snapshot and listener; the
/// caps themselves come from the snapshot current at accept.
pub struct Registry {
    per_client: Inflight,
    open: Arc<AtomicUsize>,
    serving: Arc<AtomicUsize>,
    /// The server cap when `limits.max_connections` is not set.
    default_max: u32,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("open", &self.open_connections())
            .field("serving", &self.serving())
            .finish_non_exhaustive()
    }
}

/// A connection's place in the counts, held until it closes.
#[derive(Debug)]
pub struct ConnectionPlace {
    _client: Option<GuardSlot>,
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        METRICS.open_connections.dec();
    }
}

/// A connection of an HTTP listener being served; the drain waits for the
/// last one.
#[derive(Debug)]
pub struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `Guard` is not `Debug`; this only holds it.
struct GuardSlot(#[allow(dead_code)] Guard);

impl std::fmt::Debug for GuardSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardSlot")
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(u32::MAX)
    }
}

impl Registry {
    /// A registry whose server cap is `default_max` while the configuration
    /// sets none (see [`max_connections_for`]).
    pub fn new(default_max: u32) -> Registry {
        Registry {
            per_client: Inflight::new(),
            open: Arc::new(AtomicUsize::new(0)),
            serving: Arc::new(AtomicUsize::new(0)),
            default_max,
        }
    }

    /// Registers a connection: against `max` in all (`None`: the default),
    /// and against `per_client` for its client (`None`: exempt, a trusted
    /// proxy; 0: no limit). The place is held until dropped.
    pub fn open(
        &self,
        client: Option<ClientKey>,
        per_client: u32,
        max: Option<u32>,
    ) -> Result<ConnectionPlace, Refusal> {
        let max = max.unwrap_or(self.default_max);
        let refusal = |exceeded| Refusal {
            exceeded,
            retry_after: Duration::from_secs(1),
        };
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        METRICS.open_connections.inc();
        // From here the count is released on every path, refusals included.
        let mut place = ConnectionPlace {
            _client: None,
            open: Arc::clone(&self.open),
        };
        if open > max as usize {
            return Err(refusal(Exceeded::ServerConnections));
        }
        if let (Some(client), true) = (client, per_client > 0) {
            let (guard, count) = self.per_client.incr(client, 1);
            if count > per_client as isize {
                return Err(refusal(Exceeded::Connections));
            }
            place._client = Some(GuardSlot(guard));
        }
        Ok(place)
    }

    /// Connections holding a place now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a connection of an HTTP listener as served until the value
    /// drops.
    pub fn serve(&self) -> Serving {
        self.serving.fetch_add(1, Ordering::AcqRel);
        Serving(Arc::clone(&self.serving))
    }

    /// HTTP-listener connections open now (after their TLS handshake).
    pub fn serving(&self) -> usize {
        self.serving.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use crate::limits::ClientPrefixes;

    fn ip(s: &str) -> ClientKey {
        ClientPrefixes { v4: 32, v6: 128 }.key(s.parse().unwrap())
    }

    #[test]
    fn zero_turns_the_per_client_cap_off() {
        let l = Registry::default();
        let held: Vec<_> = (0..1000)
            .map(|_| l.open(Some(ip("192.0.2.1")), 0, None).unwrap())
            .collect();
        assert_eq!(l.open_connections(), held.len());
    }

    #[test]
    fn connections_are_released_when_the_place_drops() {
        let l = Registry::default();
        let peer = Some(ip("2001:db8::1"));
        let a = l.open(peer, 2, None).unwrap();
        let b = l.open(peer, 2, None).unwrap();
        assert_eq!(
            l.open(peer, 2, None).unwrap_err().exceeded,
            Exceeded::Connections
        );
        drop(a);
        let c = l.open(peer, 2, None).unwrap();
        assert_eq!(l.open_connections(), 2, "a refusal holds no place");
        drop((b, c));
        assert_eq!(l.open_connections(), 0);
    }

    #[test]
    fn the_server_cap_counts_every_connection_exempt_ones_too() {
        let l = Registry::default();
        let held: Vec<_> = (0..3).map(|_| l.open(None, 1, Some(3)).unwrap()).collect();
        assert_eq!(
            l.open(Some(ip("192.0.2.9")), 1, Some(3))
                .unwrap_err()
                .exceeded,
            Exceeded::ServerConnections
        );
        drop(held);
        assert!(l.open(Some(ip("192.0.2.9")), 1, Some(3)).is_ok());
    }

    #[test]
    fn the_default_server_cap_applies_without_a_configured_one() {
        let l = Registry::new(2);
        let _held: Vec<_> = (0..2).map(|_| l.open(None, 0, None).unwrap()).collect();
        assert_eq!(
            l.open(None, 0, None).unwrap_err().exceeded,
            Exceeded::ServerConnections
        );
    }

    #[test]
    fn serving_counts_until_dropped() {
        let l = Registry::default();
        let a = l.serve();
        let b = l.serve();
        assert_eq!(l.serving(), 2);
        drop((a, b));
        assert_eq!(l.serving(), 0);
    }

    #[test]
    fn default_connection_cap_leaves_room_for_upstreams_and_files() {
        assert_eq!(max_connections_for(1024), 480);
        assert_eq!(max_connections_for(65_536), 32_736);
        assert_eq!(max_connections_for(10), 64);
        assert_eq!(max_connections_for(u64::MAX), u32::MAX);
    }
}
