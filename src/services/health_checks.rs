//! Upstream health: one background service that probes every upstream of
//! the serving snapshot with a TCP connect, each at its site's
//! `health_check_interval`, and records the result in the health state
//! `sites` shares by address across snapshots (why not Pingora's load
//! balancer: see `upstream`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::sites::HealthTarget;
use crate::snapshot::Shared;

/// Longest sleep between looks at the snapshot: sites added by a reload
/// are probed within this.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Probes every upstream of the serving snapshot with a TCP connect, each
/// at its site's `health_check_interval`. One service for all sites and
/// all snapshots: Pingora registers background services once, at start.
pub struct HealthChecks {
    shared: Shared,
}

impl HealthChecks {
    pub fn new(shared: Shared) -> HealthChecks {
        HealthChecks { shared }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<SocketAddr, Instant> = HashMap::new();
        let mut in_flight: HashSet<SocketAddr> = HashSet::new();
        let mut running = tokio::task::JoinSet::new();
        let mut generation = 0;
        loop {
            let snap = self.shared.load_full();
            let targets = snap.sites.health_targets();
            if snap.generation != generation {
                generation = snap.generation;
                last.retain(|addr, _| targets.iter().any(|t| t.addr == *addr));
            }
            let now = Instant::now();
            let mut wake = now + MAX_TICK;
            for t in targets {
                let due = last.get(&t.addr).is_none_or(|&at| now >= at + t.interval);
                if due && in_flight.insert(t.addr) {
                    last.insert(t.addr, now);
                    let t = t.clone();
                    running.spawn(async move {
                        probe(&t).await;
                        t.addr
                    });
                }
                if let Some(&at) = last.get(&t.addr) {
                    wake = wake.min(at + t.interval);
                }
            }
            drop(snap);
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(addr) = done {
                        in_flight.remove(&addr);
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        running.abort_all();
    }
}

async fn probe(t: &HealthTarget) {
    let outcome = tokio::time::timeout(t.timeout, tokio::net::TcpStream::connect(t.addr)).await;
    let failure = match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no connection within {:?}", t.timeout)),
    };
    if t.health.set(failure.is_none()) {
        match failure {
            None => log::info!("{}: up (health check passed)", t.label),
            Some(why) => log::warn!("{}: down (health check: {why})", t.label),
        }
    }
}
