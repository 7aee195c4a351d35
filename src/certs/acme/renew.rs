//! One pass over the managed names: for each, whether an order is due
//! (`schedule`), and if so, under the name's lease, the order, the files,
//! the record; and the CA's renewal window for the certificates served.
//!
//! Every node of a fleet runs these passes. The lease lets one order a
//! name; the others see the new record on their next pass and the new
//! certificate through their reload watchers. The record (`NAME.json`) also
//! carries a failure's backoff, so the whole fleet waits it out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use instant_acme::Account;
use rustls::pki_types::CertificateDer;

use super::client::{self, AcmeError, LEASE_TTL};
use super::lease::{Lease, Taken};
use super::schedule::{self, Current};
use super::store::{Meta, Store, StoreError};
use crate::certs::tls;
use crate::clock;
use crate::config::Acme;
use crate::observe::metrics::METRICS;

/// The longest a whole order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// A managed name and the certificate it is served with now (`None`:
/// waiting for one).
#[derive(Debug, Clone)]
pub struct Managed {
    pub name: String,
    pub current: Option<Served>,
}

/// What the serving snapshot holds for a name.
#[derive(Debug, Clone)]
pub struct Served {
    pub facts: Current,
    /// The leaf certificate, for the CA's renewal information.
    pub leaf: CertificateDer<'static>,
}

/// What the passes remember between them (each node on its own).
pub struct Renewer {
    /// Names this node in lease files: host name and process id.
    owner: String,
    /// Accounts by directory URL: loaded (or created) once.
    accounts: HashMap<String, Account>,
    /// Directories known to offer no renewal information.
    no_ari: HashSet<String>,
    /// Names whose window check failed, and when to try again.
    ari_retry: HashMap<String, i64>,
    /// Warnings already given, so a damaged file is reported once, not
    /// every pass.
    warned: HashSet<String>,
    /// The names of the last pass, to drop the gauges of names no longer
    /// managed.
    last_names: Vec<String>,
    /// The `[acme]` of the last pass: a reload that changes it (another
    /// CA file, another key id) starts from fresh accounts.
    last_config: Option<Acme>,
    /// The stored certificate a reload was asked for, by name: asked once
    /// per certificate, so a file the reload refuses is not retried in a
    /// loop.
    reload_asked: HashMap<String, String>,
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// A certificate newer than the one served is stored (another node
    /// renewed it, and this node's watcher did not see the file change,
    /// as on a network file system): the snapshot should be rebuilt.
    pub reload: bool,
}

impl Renewer {
    pub fn new(owner: String) -> Renewer {
        Renewer {
            owner,
            accounts: HashMap::new(),
            no_ari: HashSet::new(),
            ari_retry: HashMap::new(),
            warned: HashSet::new(),
            last_names: Vec::new(),
            last_config: None,
            reload_asked: HashMap::new(),
        }
    }

    /// Looks at every managed name once; orders what is due.
    pub async fn pass(&mut self, acme: &Acme, store: &Store, names: &[Managed]) -> Pass {
        let mut pass = Pass::default();
        if self.last_config.as_ref() != Some(acme) {
            self.accounts.clear();
            self.no_ari.clear();
            self.last_config = Some(acme.clone());
        }
        let names_now: Vec<String> = names.iter().map(|m| m.name.clone()).collect();
        if names_now != self.last_names {
            METRICS.acme_next_renewal.reset();
            self.last_names = names_now;
        }
        for m in names {
            let now = clock::now();
            let meta = match store.read_meta(&m.name) {
                Ok(meta) => {
                    self.warned.remove(&m.name);
                    meta
                }
                Err(e) => {
                    // Refused, not repaired: the operator decides (remove
                    // the file to start this name's record afresh).
                    if self.warned.insert(m.name.clone()) {
                        log::warn!("acme: {}: not renewing until this is fixed: {e}", m.name);
                    }
                    continue;
                }
            };
            let current = m.current.as_ref().map(|s| &s.facts);
            if renewed_elsewhere(current, meta.as_ref(), store, &m.name, now) {
                let serial = meta
                    .as_ref()
                    .and_then(|r| r.serial.clone())
                    .unwrap_or_default();
                if self.reload_asked.get(&m.name) != Some(&serial) {
                    log::info!(
                        "acme: {}: a newer certificate is stored (serial {serial}); reloading",
                        m.name
                    );
                    self.reload_asked.insert(m.name.clone(), serial);
                    pass.reload = true;
                }
                continue;
            }
            let due = schedule::due_at(current, meta.as_ref(), acme.renew_before);
            METRICS
                .acme_next_renewal
                .with_label_values(&[m.name.as_str()])
                .set(due.max(now));
            if due <= now {
                self.renew(acme, store, m, now).await;
            } else if let Some(served) = &m.current {
                if schedule::ari_check_due(&served.facts, meta.as_ref(), now) {
                    self.check_window(acme, store, &m.name, served, now).await;
                }
            }
        }
        pass
    }

    async fn account(&mut self, acme: &Acme, store: &Store) -> Result<Account, AcmeError> {
        if let Some(a) = self.accounts.get(&acme.directory) {
            return Ok(a.clone());
        }
        let account = client::account(acme, store, &self.owner).await?;
        self.accounts
            .insert(acme.directory.clone(), account.clone());
        Ok(account)
    }

    /// Orders a certificate for `m`, unless another node holds its lease
    /// or has just done it.
    async fn renew(&mut self, acme: &Acme, store: &Store, m: &Managed, now: i64) {
        let Some(lease) = self.take_lease(store, &m.name, now) else {
            return;
        };
        // Under the lease, the record on disk is the truth: another node
        // may have renewed (its file not loaded here yet) or backed off.
        let meta = match store.read_meta(&m.name) {
            Ok(meta) => meta,
            Err(_) => return, // reported by the pass
        };
        let current = m.current.as_ref().map(|s| &s.facts);
        if renewed_elsewhere(current, meta.as_ref(), store, &m.name, now) {
            log::info!(
                "acme: {}: renewed by another node; loading its certificate",
                m.name
            );
            return;
        }
        if schedule::due_at(current, meta.as_ref(), acme.renew_before) > now {
            return;
        }
        match m.current.as_ref() {
            None => log::info!(
                "acme: {}: ordering a certificate from {}",
                m.name,
                acme.directory
            ),
            Some(_) => log::info!("acme: {}: renewing its certificate", m.name),
        }
        let outcome = tokio::time::timeout(ORDER_TIMEOUT, self.order(acme, store, m)).await;
        let outcome = outcome.unwrap_or(Err(AcmeError::Timeout(ORDER_TIMEOUT)));
        if let Err(AcmeError::AccountBusy(owner)) = &outcome {
            // Not a failure: the next pass uses the account it creates.
            log::debug!(
                "acme: {}: waiting for {owner} to create the account",
                m.name
            );
            return;
        }
        match outcome.and_then(|issued| keep(acme, store, &m.name, issued)) {
            Ok(kept) => report_issued(&m.name, &kept),
            Err(e) => record_failure(store, m, meta.unwrap_or_default(), &e, now),
        }
        drop(lease);
    }

    /// The lease on `name`, unless another node holds it or it cannot be
    /// taken (said once, until it can again).
    fn take_lease(&mut self, store: &Store, name: &str, now: i64) -> Option<Lease> {
        match Lease::try_take(&store.lock_file(name), &self.owner, LEASE_TTL, now) {
            Ok(Taken::Yes(lease)) => {
                self.warned.remove(&format!("lease {name}"));
                Some(lease)
            }
            Ok(Taken::HeldBy(h)) => {
                log::debug!("acme: {name}: {} is ordering", h.owner);
                None
            }
            Err(e) => {
                if self.warned.insert(format!("lease {name}")) {
                    log::warn!("acme: {name}: cannot take the lease: {e}");
                }
                None
            }
        }
    }

    async fn order(
        &mut self,
        acme: &Acme,
        store: &Store,
        m: &Managed,
    ) -> Result<client::Issued, AcmeError> {
        let account = self.account(acme, store).await?;
        // Tell a CA with renewal information which certificate this
        // replaces (RFC 9773 §5); it may treat the order more kindly.
        let replaces = match &m.current {
            Some(served) if !self.no_ari.contains(&acme.directory) => {
                client::certificate_id(&served.leaf).ok()
            }
            _ => None,
        };
        let first = client::order(&account, store, &m.name, acme.challenge, replaces.clone()).await;
        match first {
            // A CA without ARI refuses `replaces` before anything is sent.
            Err(AcmeError::Unsupported(_)) if replaces.is_some() => {
                self.no_ari.insert(acme.directory.clone());
                client::order(&account, store, &m.name, acme.challenge, None).await
            }
            other => other,
        }
    }

    /// Asks the CA for the renewal window of the certificate served for
    /// `name` and records it (under the name's lease).
    async fn check_window(
        &mut self,
        acme: &Acme,
        store: &Store,
        name: &str,
        served: &Served,
        now: i64,
    ) {
        if self.no_ari.contains(&acme.directory)
            || self.ari_retry.get(name).is_some_and(|&at| at > now)
        {
            return;
        }
        let Ok(Taken::Yes(lease)) =
            Lease::try_take(&store.lock_file(name), &self.owner, LEASE_TTL, now)
        else {
            return;
        };
        let window = match self.account(acme, store).await {
            Ok(account) => client::renewal_window(&account, &served.leaf).await,
            Err(e) => Err(e),
        };
        match window {
            Ok(None) => {
                log::info!(
                    "acme: {} offers no renewal information; renewing by the certificates' lifetimes",
                    acme.directory
                );
                self.no_ari.insert(acme.directory.clone());
            }
            Ok(Some(window)) => {
                self.ari_retry.remove(name);
                record_window(store, name, served, window, now);
            }
            Err(e) => {
                let retry = now + i64::try_from(schedule::ARI_RECHECK_MIN.as_secs()).unwrap_or(600);
                if self.ari_retry.insert(name.to_owned(), retry).is_none() {
                    log::warn!("acme: {name}: cannot get the renewal window: {e}; the stored schedule stands");
                }
            }
        }
        drop(lease);
    }
}

/// Says that a certificate for `name` was issued and stored.
fn report_issued(name: &str, kept: &Meta) {
    METRICS.acme_orders.with_label_values(&["ok"]).inc();
    log::info!(
        "acme: {}: certificate issued (serial {}, valid until {}); renewal due {}",
        name,
        kept.serial.as_deref().unwrap_or(""),
        clock::rfc3339(kept.not_after.unwrap_or(0)),
        clock::rfc3339(kept.renew_at.unwrap_or(0)),
    );
}

/// Records a failed order in `m`'s record, with the backoff the whole
/// fleet waits out.
fn record_failure(store: &Store, m: &Managed, mut record: Meta, e: &AcmeError, now: i64) {
    METRICS.acme_orders.with_label_values(&["error"]).inc();
    let text = e.to_string();
    let wait = schedule::after_failure(&mut record, text.clone(), now, super::random_u64());
    let served = match &m.current {
        Some(c) => format!(
            "the current certificate (valid until {}) keeps serving",
            clock::rfc3339(c.facts.not_after)
        ),
        None => "no certificate to serve yet".to_owned(),
    };
    log::warn!(
        "acme: {}: order failed ({} in a row): {text}; {served}; next attempt in {}",
        m.name,
        record.failures,
        humantime::format_duration(wait)
    );
    if let Err(e) = store.write_meta(&m.name, &record) {
        log::warn!("acme: {}: cannot record the failure: {e}", m.name);
    }
}

/// Records the CA's renewal window (start, end, Unix seconds; when to ask
/// again) in the record of the certificate served for `name`, if the
/// record is that certificate's.
fn record_window(
    store: &Store,
    name: &str,
    served: &Served,
    (start, end, retry_after): (i64, i64, Duration),
    now: i64,
) {
    let Ok(meta) = store.read_meta(name) else {
        return;
    };
    let mut record = match meta {
        Some(m) if m.serial.as_deref() == Some(served.facts.serial.as_str()) => m,
        _ => return, // not the record of this certificate
    };
    let before = record.renew_at;
    schedule::apply_window(
        &mut record,
        start,
        end,
        retry_after,
        now,
        super::random_u64(),
    );
    if record.renew_at != before {
        log::info!(
            "acme: {name}: the CA suggests renewing between {} and {}; renewal due {}",
            clock::rfc3339(start),
            clock::rfc3339(end),
            clock::rfc3339(record.renew_at.unwrap_or(start))
        );
    }
    if let Err(e) = store.write_meta(name, &record) {
        log::warn!("acme: {name}: cannot record the renewal window: {e}");
    }
}

/// Why a renewal could not be requested.
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    #[error("{0} is not a name [acme] manages")]
    NotManaged(String),
    #[error("{name}: {owner} is ordering it right now")]
    Busy { name: String, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks every node sharing `store` to renew `name` now: its record's
/// renewal time becomes `now` and any backoff is cleared (under the
/// name's lease, so an order in progress is not disturbed). `serial` is
/// the certificate served now, which the record must describe.
pub fn force(
    store: &Store,
    name: &str,
    serial: Option<&str>,
    owner: &str,
    now: i64,
) -> Result<(), ForceError> {
    let _lease = match Lease::try_take(&store.lock_file(name), owner, LEASE_TTL, now)? {
        Taken::Yes(lease) => lease,
        Taken::HeldBy(h) => {
            return Err(ForceError::Busy {
                name: name.to_owned(),
                owner: h.owner,
            })
        }
    };
    let mut record = store.read_meta(name)?.unwrap_or_default();
    if let Some(serial) = serial {
        if record.serial.as_deref() != Some(serial) {
            record = Meta {
                serial: Some(serial.to_owned()),
                ..Meta::default()
            };
        }
    }
    record.renew_at = Some(now);
    record.retry_at = None;
    record.failures = 0;
    store.write_meta(name, &record)?;
    Ok(())
}

/// Whether the record on disk describes a newer certificate than the one
/// served, still valid and on disk: another node renewed it.
fn renewed_elsewhere(
    current: Option<&Current>,
    meta: Option<&Meta>,
    store: &Store,
    name: &str,
    now: i64,
) -> bool {
    let Some(m) = meta else { return false };
    let newer = match (current, m.serial.as_deref()) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(c), Some(serial)) => c.serial != serial,
    };
    newer && m.not_after.is_some_and(|t| t > now) && store.bundle_file(name).exists()
}

/// Checks an issued certificate and stores it: the bundle first (the
/// reload watcher serves it), then its record.
fn keep(acme: &Acme, store: &Store, name: &str, issued: client::Issued) -> Result<Meta, AcmeError> {
    let file = store.bundle_file(name);
    let mut pem = issued.key_pem.trim_end().to_owned();
    pem.push('\n');
    pem.push_str(&issued.chain_pem);
    let loaded = tls::check_bundle(name, pem.as_bytes(), &file)
        .map_err(|e| AcmeError::Other(format!("the CA's certificate is not usable: {e}")))?;
    store.write_bundle(name, &issued.key_pem, &issued.chain_pem)?;
    let record = Meta {
        serial: Some(loaded.serial.clone()),
        not_after: Some(loaded.not_after),
        issued_at: Some(clock::now()),
        order_url: Some(issued.order_url),
        renew_at: Some(schedule::default_renew_at(
            loaded.not_before,
            loaded.not_after,
            acme.renew_before,
        )),
        ..Meta::default()
    };
    store
        .write_meta(name, &record)
        .map_err(|e: StoreError| AcmeError::Store(e))?;
    Ok(record)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // STYLE: allowed in tests
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A CA that offers renewal information: an HTTPS directory naming a
    /// `renewalInfo` endpoint, which suggests `window` (RFC 3339 times)
    /// with `Retry-After: 21600`. Returns its directory URL and the PEM of
    /// the certificate its HTTPS uses.
    async fn ari_ca(window: (&'static str, &'static str)) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let pem = generated.cert.pem();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![generated.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(
                    generated.signing_key.serialize_der().into(),
                ),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let directory = format!("{base}/dir");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let (extra, body) = if line.starts_with("GET /dir ") {
                        (
                            "",
                            format!(
                                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","renewalInfo":"{base}/ari"}}"#
                            ),
                        )
                    } else if line.starts_with("GET /ari/") {
                        (
                            "Retry-After: 21600\r\n",
                            format!(
                                r#"{{"suggestedWindow":{{"start":"{}","end":"{}"}}}}"#,
                                window.0, window.1
                            ),
                        )
                    } else {
                        return;
                    };
                    let response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (directory, pem)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cas_renewal_window_sets_the_renewal_time() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (directory, ca_pem) = ari_ca(("2030-01-10T00:00:00Z", "2030-01-12T00:00:00Z")).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        let config = crate::config::Config::parse(
            &dir.path().join("visitord.toml"),
            &format!(
                "[[listen]]\naddr = \"127.0.0.1:8443\"\ntls = true\n\
                 [[listen]]\naddr = \"127.0.0.1:8080\"\nredirect_https_port = 8443\n\
                 [geo]\ndatabases = [\"x.mmdb\"]\n\
                 [acme]\ndirectory = {directory:?}\ndirectory_ca = \"ca.pem\"\nstate_dir = \"state\"\ndomains = [\"a.example\"]\n"
            ),
        )
        .unwrap();
        let acme = config.acme.unwrap();
        let store = Store::new(&acme.state_dir, &acme.directory);
        store.prepare().unwrap();
        // A stored account (no request needed but the directory).
        let key = rcgen::KeyPair::generate().unwrap();
        let credentials = serde_json::json!({
            "id": format!("{directory}/acct/1"),
            "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": directory,
        });
        store
            .write_account(credentials.to_string().as_bytes())
            .unwrap();

        // The certificate served, issued by a CA (ARI names it by the
        // issuer's key id and its serial).
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let mut issuer_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let facts = Current {
            serial: "1".into(),
            not_before: 0,
            not_after: 2_000_000_000,
        };
        store
            .write_meta(
                "a.example",
                &Meta {
                    serial: Some("1".into()),
                    renew_at: Some(1_900_000_000),
                    ..Meta::default()
                },
            )
            .unwrap();
        let managed = [Managed {
            name: "a.example".into(),
            current: Some(Served {
                facts: facts.clone(),
                leaf: leaf.der().clone(),
            }),
        }];

        let mut renewer = Renewer::new("test".into());
        let pass = renewer.pass(&acme, &store, &managed).await;
        assert!(!pass.reload);
        let m = store.read_meta("a.example").unwrap().unwrap();
        let (start, end) = (1_894_233_600, 1_894_406_400); // 2030-01-10 .. 2030-01-12
        let ari = m.ari.expect("the window is recorded");
        assert_eq!((ari.start, ari.end), (start, end));
        assert!(
            ari.next_check > clock::now() + 21_000,
            "Retry-After is kept"
        );
        let at = m.renew_at.unwrap();
        assert!((start..=end).contains(&at), "{at}");
        assert_eq!(schedule::due_at(Some(&facts), Some(&m), None), at);
        // Asked again before its Retry-After: nothing moves.
        renewer.pass(&acme, &store, &managed).await;
        assert_eq!(store.read_meta("a.example").unwrap().unwrap(), m);
    }

    #[test]
    fn a_forced_renewal_is_due_now_and_clears_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "https://ca.example/dir");
        store.prepare().unwrap();
        let failing = Meta {
            serial: Some("aa".into()),
            renew_at: Some(5000),
            failures: 3,
            retry_at: Some(9000),
            ..Meta::default()
        };
        store.write_meta("a.example", &failing).unwrap();
        force(&store, "a.example", Some("aa"), "cli", 100).unwrap();
        let m = store.read_meta("a.example").unwrap().unwrap();
        assert_eq!((m.renew_at, m.retry_at, m.failures), (Some(100), None, 0));
        let current = Current {
            serial: "aa".into(),
            not_before: 0,
            not_after: 10_000,
        };
        assert_eq!(schedule::due_at(Some(&current), Some(&m), None), 100);

        // A record about another certificate is replaced by one about the
        // served certificate.
        force(&store, "b.example", Some("bb"), "cli", 7).unwrap();
        let m = store.read_meta("b.example").unwrap().unwrap();
        assert_eq!((m.serial.as_deref(), m.renew_at), (Some("bb"), Some(7)));

        let Taken::Yes(_held) =
            Lease::try_take(&store.lock_file("a.example"), "node-a", LEASE_TTL, 100).unwrap()
        else {
            panic!()
        };
        let e = force(&store, "a.example", Some("aa"), "cli", 101).unwrap_err();
        assert_eq!(e.to_string(), "a.example: node-a is ordering it right now");
    }

    #[test]
    fn a_newer_valid_record_with_its_file_means_another_node_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "https://ca.example/dir");
        store.prepare().unwrap();
        let current = Current {
            serial: "aa".into(),
            not_before: 0,
            not_after: 100,
        };
        let record = |serial: &str, not_after: i64| Meta {
            serial: Some(serial.into()),
            not_after: Some(not_after),
            ..Meta::default()
        };
        let newer = record("bb", 1000);
        assert!(
            !renewed_elsewhere(Some(&current), Some(&newer), &store, "a.example", 50),
            "no file yet"
        );
        store.write_bundle("a.example", "K", "C").unwrap();
        assert!(renewed_elsewhere(
            Some(&current),
            Some(&newer),
            &store,
            "a.example",
            50
        ));
        assert!(renewed_elsewhere(
            None,
            Some(&newer),
            &store,
            "a.example",
            50
        ));
        assert!(
            !renewed_elsewhere(
                Some(&current),
                Some(&record("aa", 100)),
                &store,
                "a.example",
                50
            ),
            "the same one"
        );
        assert!(
            !renewed_elsewhere(Some(&current), Some(&newer), &store, "a.example", 1000),
            "expired"
        );
        assert!(!renewed_elsewhere(
            Some(&current),
            None,
            &store,
            "a.example",
            50
        ));
        let failed_first = Meta {
            failures: 1,
            retry_at: Some(60),
            ..Meta::default()
        };
        assert!(!renewed_elsewhere(
            None,
            Some(&failed_first),
            &store,
            "a.example",
            50
        ));
    }
}
