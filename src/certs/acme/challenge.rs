//! Answering the CA's checks. The node that orders writes the answer into
//! `state_dir`; whichever node of the fleet the CA's request reaches reads
//! it from there.
//!
//! HTTP-01 is a path on the plain listener. TLS-ALPN-01 (RFC 8737) is a
//! TLS handshake for the `acme-tls/1` protocol answered with a special
//! self-signed certificate; [`inspect_hello`] recognises one from the first
//! bytes of a connection, [`tls_alpn01_certificate`] makes the answer.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The largest first record read while looking for a TLS-ALPN-01
/// handshake: a TLS record's payload is at most 16 KiB (RFC 8446 §5.1).
pub const MAX_HELLO: usize = 5 + 16 * 1024;

/// Where the CA asks for an HTTP-01 token (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The token an HTTP-01 request path asks for; `None` when the path is
/// not under [`HTTP01_PREFIX`]. The token itself is checked by
/// `Store::http01_file` before it names a file.
pub fn http01_token(path: &str) -> Option<&str> {
    path.strip_prefix(HTTP01_PREFIX)
}

/// What the first bytes of a TLS connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The first record is not complete yet.
    NeedMore,
    /// Not a TLS-ALPN-01 handshake (or not TLS at all): Pingora's
    /// handshake takes over.
    Other,
    /// A CA's TLS-ALPN-01 handshake for this name.
    Acme { server_name: String },
}

/// Looks at the start of a TLS connection: once the first record (the
/// ClientHello) is complete, whether it asks for `acme-tls/1` only. Most
/// connections are told apart by a byte search; only one that mentions
/// the protocol is parsed (by rustls).
pub fn inspect_hello(bytes: &[u8]) -> Hello {
    // A record: type 22 (handshake), two version bytes, a 16-bit length.
    let Some(header) = bytes.get(..5) else {
        return if bytes.first().is_some_and(|&b| b != 0x16) {
            Hello::Other
        } else {
            Hello::NeedMore
        };
    };
    if header[0] != 0x16 {
        return Hello::Other;
    }
    let end = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    let Some(record) = bytes.get(..end) else {
        return Hello::NeedMore;
    };
    if memchr::memmem::find(record, ACME_TLS_ALPN).is_none() {
        return Hello::Other;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = record;
    if acceptor.read_tls(&mut reader).is_err() {
        return Hello::Other;
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return Hello::Other;
    };
    let hello = accepted.client_hello();
    // RFC 8737 §3: the CA offers acme-tls/1 and nothing else.
    let only_acme = hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    });
    match hello.server_name() {
        Some(name) if only_acme => Hello::Acme {
            server_name: name.to_ascii_lowercase(),
        },
        _ => Hello::Other,
    }
}

/// The certificate that answers a TLS-ALPN-01 challenge for `name` (RFC
/// 8737 §3): self-signed, `name` its only subjectAltName, and the SHA-256
/// digest of the key authorization in a critical acmeIdentifier extension.
pub fn tls_alpn01_certificate(
    name: &str,
    key_authorization: &[u8],
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization);
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first bytes a rustls client sends for `name` offering `alpn`.
    fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_cas_handshake_is_told_from_every_other() {
        let acme = client_hello("Shop.Example.com", &[ACME_TLS_ALPN]);
        assert_eq!(
            inspect_hello(&acme),
            Hello::Acme {
                server_name: "shop.example.com".into()
            }
        );
        // Byte by byte, nothing is decided before the record is complete.
        for cut in [0, 1, 4, 5, acme.len() - 1] {
            assert_eq!(inspect_hello(&acme[..cut]), Hello::NeedMore, "{cut}");
        }
        let browser = client_hello("shop.example.com", &[b"h2", b"http/1.1"]);
        assert_eq!(inspect_hello(&browser), Hello::Other);
        let mixed = client_hello("shop.example.com", &[b"h2", ACME_TLS_ALPN]);
        assert_eq!(
            inspect_hello(&mixed),
            Hello::Other,
            "a CA offers acme-tls/1 only"
        );
        assert_eq!(inspect_hello(b"GET / HTTP/1.1\r\n"), Hello::Other);
        assert_eq!(inspect_hello(b"G"), Hello::Other);
        let mut forged = vec![0x16, 3, 1, 0, 12];
        forged.extend_from_slice(b"acme-tls/1..");
        assert_eq!(inspect_hello(&forged), Hello::Other, "not a ClientHello");
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let (cert, _key) = tls_alpn01_certificate("shop.example.com", b"token.thumb").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        let digest = ring::digest::digest(&ring::digest::SHA256, b"token.thumb");
        // An OCTET STRING (tag 4, length 32) holding the digest.
        assert_eq!(&ext.value[..2], &[4, 32]);
        assert_eq!(&ext.value[2..], digest.as_ref());
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
    }

    #[test]
    fn tokens_come_from_the_well_known_path_only() {
        assert_eq!(
            http01_token("/.well-known/acme-challenge/abc-_123"),
            Some("abc-_123")
        );
        assert_eq!(http01_token("/.well-known/acme-challenge/"), Some(""));
        assert_eq!(http01_token("/.well-known/acme-challengeX"), None);
        assert_eq!(http01_token("/api/"), None);
    }
}
