//! CA files that visitord trusts for its own connections: a site's
//! upstream (`[[site]] upstream_ca`) and the shared store
//! (`limits.shared_store_ca`). One reader, so both refuse the same files
//! with the same reasons.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A CA file as read and checked: its PEM text and its certificates.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub pem: Vec<u8>,
    pub certs: Vec<CertificateDer<'static>>,
}

/// Reads the PEM certificates at `path` and checks that each is X.509 and
/// usable as a trust anchor; the error is the reason, for a message that
/// names the file and key.
pub fn read_ca(path: &Path) -> Result<CaFile, String> {
    let pem = crate::lookup::input::read(path, None).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (k, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("certificate {k}: not X.509: {e}"))?;
        roots
            .add(c.clone())
            .map_err(|e| format!("certificate {k}: not usable as a CA: {e}"))?;
    }
    Ok(CaFile { pem, certs })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_ca(&dir.path().join("none.pem")).unwrap_err();
        assert!(missing.starts_with("cannot read"), "{missing}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        assert_eq!(read_ca(&empty).unwrap_err(), "no CERTIFICATE block");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_ca(&junk).unwrap_err().starts_with("certificate 0"));
    }

    #[test]
    fn a_ca_certificate_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        let ca = read_ca(&path).unwrap();
        assert_eq!(ca.certs.len(), 1);
        assert_eq!(ca.pem, cert.pem().into_bytes());
    }
}
