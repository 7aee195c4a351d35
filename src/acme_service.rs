//! The ACME background service: a pass over the managed names of the
//! serving snapshot every few seconds (`acme::renew`), on its own Pingora
//! runtime, so an order never occupies a request thread. New certificates
//! reach the listeners through the files and the reload watcher, exactly
//! as a replaced file pair does.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::acme::renew::{Managed, Renewer, Served};
use crate::acme::schedule::Current;
use crate::acme::{self, Plan};
use crate::metrics::METRICS;
use crate::snapshot::{Shared, Snapshot};
use crate::tls::CertSource;

/// How often the state is looked at when nothing is due sooner: a
/// renewal another node recorded, or one forced with
/// `visitord certs --renew`, is noticed within this.
const TICK: Duration = Duration::from_secs(5);

pub struct AcmeService {
    shared: Shared,
}

impl AcmeService {
    pub fn new(shared: Shared) -> AcmeService {
        AcmeService { shared }
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut renewer = Renewer::new(owner());
        for result in ["ok", "error"] {
            METRICS.acme_orders.with_label_values(&[result]);
        }
        let mut waiting_logged: Option<Vec<String>> = None;
        loop {
            let snap = self.shared.load_full();
            let work = snap.config.acme.clone().zip(snap.acme.clone());
            let names = managed(&snap);
            note_waiting(&snap, &mut waiting_logged);
            drop(snap);
            let pass = async {
                if let Some((config, plan)) = &work {
                    if let Err(e) = plan.store.prepare() {
                        log::warn!("acme: {e}");
                    }
                    renewer.pass(config, &plan.store, &names).await;
                }
            };
            tokio::select! {
                () = pass => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// The managed names of `snap` and the ACME certificate each is served
/// with.
fn managed(snap: &Snapshot) -> Vec<Managed> {
    let Some(plan) = &snap.acme else {
        return Vec::new();
    };
    plan.managed
        .iter()
        .map(|name| {
            let current = snap
                .certificates
                .for_name(name)
                .filter(|c| c.source == CertSource::Acme)
                .and_then(|c| {
                    Some(Served {
                        facts: Current {
                            serial: c.serial.clone(),
                            not_before: c.not_before,
                            not_after: c.not_after,
                        },
                        leaf: c.key.cert.first()?.clone().into_owned(),
                    })
                });
            Managed {
                name: name.clone(),
                current,
            }
        })
        .collect()
}

/// Says which names wait for their first certificate, when that changes.
fn note_waiting(snap: &Snapshot, logged: &mut Option<Vec<String>>) {
    let waiting: Vec<String> = snap.certificates.waiting().map(str::to_owned).collect();
    if logged.as_ref() == Some(&waiting) {
        return;
    }
    if !waiting.is_empty() {
        log::info!(
            "acme: waiting for certificates (handshakes for these names are refused until then): {}",
            waiting.join(", ")
        );
    }
    *logged = Some(waiting);
}

/// This node in lease files: host name and process id, for an operator
/// wondering who holds a lease.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host} pid {}", std::process::id())
}

/// Creates the state folders before the reload watcher looks for them;
/// an error names the folder.
pub fn prepare(shared: &Shared) -> Result<(), acme::store::StoreError> {
    let snap = shared.load();
    match &snap.acme {
        Some(Plan { store, .. }) => store.prepare(),
        None => Ok(()),
    }
}
