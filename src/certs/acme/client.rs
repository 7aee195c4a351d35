//! The conversation with the CA through `instant-acme` (RFC 8555): the
//! account, one order per name, and renewal windows (RFC 9773). Each
//! network step has a deadline. This runs on the ACME background
//! service's runtime, never on a request thread.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, BodyWrapper,
    CertificateIdentifier, ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder,
    Order, OrderStatus, Problem, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::lease::{Lease, Taken};
use super::store::{Store, StoreError};
use crate::config::{Acme, Challenge};

/// The longest wait for one request to the CA.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the CA to validate, and then to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a lease lasts: longer than any order takes (each of its few
/// steps is bounded above), so a live holder never loses it; a node that
/// dies holding one delays the others by at most this.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// Why talking to the CA failed. Messages name the CA's problem document
/// (type and detail) when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the CA refused: {0}")]
    Refused(String),
    #[error("validation failed: {0}")]
    Validation(String),
    #[error("cannot reach the CA: {0}")]
    Unreachable(String),
    #[error("no answer from the CA within {0:?}")]
    Timeout(Duration),
    #[error("the CA offers no {0} challenge for this name")]
    NoChallenge(&'static str),
    #[error("{file}: {reason}")]
    DirectoryCa { file: PathBuf, reason: String },
    #[error("another node ({0}) is creating the ACME account")]
    AccountBusy(String),
    #[error("the CA does not support {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        use instant_acme::Error as E;
        match e {
            E::Api(p) => AcmeError::Refused(problem(&p)),
            E::Timeout(_) => AcmeError::Timeout(POLL_TIMEOUT),
            E::Unsupported(what) => AcmeError::Unsupported(what),
            E::Hyper(e) => AcmeError::Unreachable(e.to_string()),
            E::Other(e) => AcmeError::Unreachable(chain(&*e)),
            other => AcmeError::Other(other.to_string()),
        }
    }
}

/// An error and its causes, `: `-separated (hyper's own message alone
/// says only "client error (Connect)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A problem document as one line: `TYPE: DETAIL`, then its subproblems.
pub fn problem(p: &Problem) -> String {
    let mut out = match (&p.r#type, &p.detail) {
        (Some(t), Some(d)) => format!("{t}: {d}"),
        (Some(t), None) => t.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => "a problem document without type or detail".to_owned(),
    };
    for sub in &p.subproblems {
        out.push_str("; ");
        out.push_str(&sub.to_string());
    }
    out
}

async fn step<T, E: Into<AcmeError>>(
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, AcmeError> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(AcmeError::Timeout(STEP_TIMEOUT)),
    }
}

/// The certificates in `file`, to trust for a private CA's directory.
pub fn read_roots(file: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let fail = |reason: String| AcmeError::DirectoryCa {
        file: file.to_path_buf(),
        reason,
    };
    let pem =
        crate::lookup::input::read(file, None).map_err(|e| fail(format!("cannot read: {e}")))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
    if roots.is_empty() {
        return Err(fail("no CERTIFICATE block found".into()));
    }
    Ok(roots)
}

/// An account builder whose HTTPS trusts the system's roots, or only
/// `directory_ca`'s certificates when set.
fn builder(acme: &Acme) -> Result<AccountBuilder, AcmeError> {
    let Some(file) = &acme.directory_ca else {
        return Account::builder().map_err(AcmeError::from);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_roots(file)? {
        roots.add(cert).map_err(|e| AcmeError::DirectoryCa {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(https);
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The account stored for this CA, or a new one (created by one node of a
/// fleet at a time, under the `account` lease, and stored at once).
pub async fn account(acme: &Acme, store: &Store, owner: &str) -> Result<Account, AcmeError> {
    if let Some(account) = stored_account(acme, store).await? {
        return Ok(account);
    }
    let lease = match Lease::try_take(
        &store.lock_file("account"),
        owner,
        LEASE_TTL,
        crate::clock::now(),
    )? {
        Taken::Yes(lease) => lease,
        Taken::HeldBy(h) => return Err(AcmeError::AccountBusy(h.owner)),
    };
    // Another node may have created it while we looked.
    if let Some(account) = stored_account(acme, store).await? {
        return Ok(account);
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        // Configuring [acme] with a CA is agreeing to its terms
        // (docs/certificates.md says so).
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let eab = acme
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, credentials) =
        step(builder(acme)?.create(&new, acme.directory.clone(), eab.as_ref())).await?;
    let json = serde_json::to_vec_pretty(&credentials)
        .map_err(|e| AcmeError::Other(format!("cannot encode the account: {e}")))?;
    store.write_account(&json)?;
    drop(lease);
    log::info!(
        "acme: created an account with {} ({})",
        acme.directory,
        store.account_file().display()
    );
    Ok(account)
}

async fn stored_account(acme: &Acme, store: &Store) -> Result<Option<Account>, AcmeError> {
    let Some(json) = store.read_account()? else {
        return Ok(None);
    };
    let credentials: AccountCredentials =
        serde_json::from_slice(&json).map_err(|e| StoreError::Damaged {
            file: store.account_file(),
            reason: e.to_string(),
        })?;
    Ok(Some(
        step(builder(acme)?.from_credentials(credentials)).await?,
    ))
}

/// A certificate the CA issued: its private key and chain (PEM), and the
/// order it came from.
pub struct Issued {
    pub key_pem: String,
    pub chain_pem: String,
    pub order_url: String,
}

/// Removes the challenge answers written for an order when it ends, on
/// success, failure or cancellation alike.
struct Answers<'s> {
    store: &'s Store,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.store.remove_http01(token);
        }
        for name in &self.names {
            self.store.remove_tls_alpn01(name);
        }
    }
}

impl Answers<'_> {
    /// Writes the answer to one challenge where the listener serves it.
    fn write(
        &mut self,
        challenge: Challenge,
        name: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        match challenge {
            Challenge::Http01 => {
                self.store.write_http01(token, key_authorization)?;
                self.tokens.push(token.to_owned());
            }
            Challenge::TlsAlpn01 => {
                self.store.write_tls_alpn01(name, key_authorization)?;
                self.names.push(name.to_owned());
            }
        }
        Ok(())
    }
}

/// Orders a certificate for `name`: one authorization, answered with
/// `challenge` from `store`; a new P-256 key; the chain once issued.
/// `replaces` names the certificate being renewed, for a CA that offers
/// renewal information.
pub async fn order(
    account: &Account,
    store: &Store,
    name: &str,
    challenge: Challenge,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, AcmeError> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(id) = replaces {
        new_order = new_order.replaces(id);
    }
    let mut order = step(account.new_order(&new_order)).await?;
    let answers = answer_authorizations(&mut order, store, name, challenge).await?;

    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .timeout(POLL_TIMEOUT);
    let status = poll(order.poll_ready(&retries)).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Validation(
            validation_problem(&mut order)
                .await
                .unwrap_or_else(|| format!("the order is {status:?}")),
        ));
    }
    drop(answers);

    let (key, csr) = certificate_request(name)?;
    step(order.finalize_csr(&csr)).await?;
    let chain_pem = poll(order.poll_certificate(&retries)).await?;
    Ok(Issued {
        key_pem: key.serialize_pem(),
        chain_pem,
        order_url: order.url().to_owned(),
    })
}

/// Answers each pending authorization of `order` with `challenge`; the
/// answers stay in `store` until the returned guard is dropped.
async fn answer_authorizations<'s>(
    order: &mut Order,
    store: &'s Store,
    name: &str,
    challenge: Challenge,
) -> Result<Answers<'s>, AcmeError> {
    let mut answers = Answers {
        store,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    loop {
        let next = tokio::time::timeout(STEP_TIMEOUT, authorizations.next())
            .await
            .map_err(|_| AcmeError::Timeout(STEP_TIMEOUT))?;
        let Some(authz) = next else { break };
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Validation(format!(
                    "the authorization for {name} is {other:?}"
                )))
            }
        }
        let mut ch = authz
            .challenge(kind.clone())
            .ok_or(AcmeError::NoChallenge(challenge.as_str()))?;
        let key_authorization = ch.key_authorization();
        answers.write(challenge, name, &ch.token, key_authorization.as_str())?;
        step(ch.set_ready()).await?;
    }
    Ok(answers)
}

/// Waits for the CA to finish polling: validation, or issuance.
async fn poll<T, E: Into<AcmeError>>(
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, AcmeError> {
    match tokio::time::timeout(POLL_TIMEOUT + STEP_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(AcmeError::Timeout(POLL_TIMEOUT)),
    }
}

/// A new key pair and a certificate signing request (DER) for `name`
/// alone, with an empty subject (the name is in subjectAltName).
fn certificate_request(name: &str) -> Result<(rcgen::KeyPair, Vec<u8>), AcmeError> {
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Other(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// The CA's reason a validation failed: the problem document of the
/// challenge that failed.
async fn validation_problem(order: &mut Order) -> Option<String> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = step(authz.refresh()).await else {
            continue;
        };
        let name = state.identifier().to_string();
        if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return Some(format!("{name}: {}", problem(p)));
        }
    }
    None
}

/// The CA's suggested renewal window for `leaf` (start, end, Unix
/// seconds) and when to ask again; `None` when the CA offers none.
pub async fn renewal_window(
    account: &Account,
    leaf: &CertificateDer<'_>,
) -> Result<Option<(i64, i64, Duration)>, AcmeError> {
    let id = certificate_id(leaf)?;
    match tokio::time::timeout(STEP_TIMEOUT, account.renewal_info(&id)).await {
        Err(_) => Err(AcmeError::Timeout(STEP_TIMEOUT)),
        Ok(Err(instant_acme::Error::Unsupported(_))) => Ok(None),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok((info, retry_after))) => Ok(Some((
            info.suggested_window.start.unix_timestamp(),
            info.suggested_window.end.unix_timestamp(),
            retry_after,
        ))),
    }
}

/// The ARI identifier of a certificate (authority key id and serial).
pub fn certificate_id(
    leaf: &CertificateDer<'_>,
) -> Result<CertificateIdentifier<'static>, AcmeError> {
    CertificateIdentifier::try_from(leaf)
        .map(CertificateIdentifier::into_owned)
        .map_err(AcmeError::Other)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn problem_documents_read_as_one_line() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"Policy forbids issuing for name","status":400,
                "subproblems":[{"type":"urn:ietf:params:acme:error:caa","detail":"CAA forbids","identifier":{"type":"dns","value":"a.example"}}]}"#,
        )
        .unwrap();
        let text = problem(&p);
        assert!(
            text.starts_with(
                "urn:ietf:params:acme:error:rejectedIdentifier: Policy forbids issuing for name; "
            ),
            "{text}"
        );
        assert!(text.contains("CAA forbids"), "{text}");
        let bare: Problem = serde_json::from_str("{}").unwrap();
        assert_eq!(problem(&bare), "a problem document without type or detail");
        let e: AcmeError = instant_acme::Error::Api(p).into();
        assert!(e.to_string().starts_with("the CA refused: urn:ietf"), "{e}");
    }

    #[test]
    fn a_certificate_request_names_only_the_name() {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::prelude::FromDer;

        let (key, der) = certificate_request("shop.example.com").unwrap();
        assert!(key
            .serialize_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let names: Vec<String> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(&san.general_names),
                _ => None,
            })
            .flatten()
            .map(|n| match n {
                GeneralName::DNSName(d) => (*d).to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["shop.example.com"]);
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
    }

    #[test]
    fn directory_ca_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        let e = read_roots(&file).unwrap_err().to_string();
        assert!(e.contains("ca.pem: cannot read"), "{e}");
        std::fs::write(&file, "nothing here").unwrap();
        let e = read_roots(&file).unwrap_err().to_string();
        assert!(e.contains("ca.pem: no CERTIFICATE block found"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        std::fs::write(&file, format!("{}{}", ca.cert.pem(), ca.cert.pem())).unwrap();
        assert_eq!(read_roots(&file).unwrap().len(), 2);
    }
}
