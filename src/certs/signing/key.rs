//! One signing key: an Ed25519 (`EdDSA`, RFC 8037) or P-256 (`ES256`,
//! RFC 7518 §3.4) private key from PKCS#8, its public JWK (RFC 7517), its
//! RFC 7638 thumbprint (the `kid`), and compact JWS signatures (RFC 7515
//! §7.1) made with `ring`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, Signature, ECDSA_P256_SHA256_FIXED_SIGNING,
};

/// A signature could not be made (only ECDSA can fail: its random nonce).
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(&'static str);

impl SignError {
    /// `[signing]` has no key (cannot happen: `keys` may not be empty).
    pub const NO_KEY: SignError = SignError("no signing key");
}

#[derive(Debug)]
enum Pair {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// A private key ready to sign, with what is published about it.
#[derive(Debug)]
pub struct SigningKey {
    pair: Pair,
    kid: String,
    /// `base64url({"alg":..,"kid":..,"typ":"JWT"})`: the same for every
    /// token, so encoded once.
    header_b64: String,
}

impl SigningKey {
    /// The key in a PKCS#8 document (v1 or v2), if it is Ed25519 or P-256.
    pub fn from_pkcs8(der: &[u8]) -> Option<SigningKey> {
        let pair = match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Ok(k) => Pair::Ed25519(k),
            Err(_) => Pair::P256(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .ok()?,
            ),
        };
        Some(SigningKey::new(pair))
    }

    fn new(pair: Pair) -> SigningKey {
        let kid = thumbprint(&public_members(&pair));
        let alg = alg(&pair);
        let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
        SigningKey {
            pair,
            kid,
            header_b64: URL_SAFE_NO_PAD.encode(header),
        }
    }

    /// The JWS `alg`: `EdDSA` or `ES256`.
    pub fn alg(&self) -> &'static str {
        alg(&self.pair)
    }

    /// The RFC 7638 thumbprint of the public key, base64url of SHA-256.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = serde_json::Map::new();
        for (name, value) in public_members(&self.pair) {
            jwk.insert(name.to_owned(), value.into());
        }
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("alg".into(), self.alg().into());
        jwk.insert("use".into(), "sig".into());
        serde_json::Value::Object(jwk)
    }

    /// Appends the compact JWS of `claims` (a JSON object) to `out`:
    /// `header.payload.signature`, all base64url, so the characters need
    /// no escaping inside a JSON string.
    pub fn append_token(&self, out: &mut Vec<u8>, claims: &[u8]) -> Result<(), SignError> {
        let start = out.len();
        out.extend_from_slice(self.header_b64.as_bytes());
        out.push(b'.');
        append_b64(out, claims);
        let signature = self.sign(&out[start..])?;
        out.push(b'.');
        append_b64(out, signature.as_ref());
        Ok(())
    }

    fn sign(&self, input: &[u8]) -> Result<Signature, SignError> {
        match &self.pair {
            Pair::Ed25519(k) => Ok(k.sign(input)),
            Pair::P256(k) => k
                .sign(&SystemRandom::new(), input)
                .map_err(|_| SignError("no random nonce for ECDSA")),
        }
    }
}

fn alg(pair: &Pair) -> &'static str {
    match pair {
        Pair::Ed25519(_) => "EdDSA",
        Pair::P256(_) => "ES256",
    }
}

/// The required members of the public JWK in lexicographic order, as
/// RFC 7638 §3.2 hashes them (`crv`, `kty`, `x`, `y`).
fn public_members(pair: &Pair) -> Vec<(&'static str, String)> {
    match pair {
        Pair::Ed25519(k) => vec![
            ("crv", "Ed25519".to_owned()),
            ("kty", "OKP".to_owned()),
            ("x", URL_SAFE_NO_PAD.encode(k.public_key().as_ref())),
        ],
        // ring gives the uncompressed point: 0x04, then x and y, 32 bytes each.
        Pair::P256(k) => {
            let xy = k.public_key().as_ref().get(1..).unwrap_or_default();
            let (x, y) = xy.split_at(xy.len() / 2);
            vec![
                ("crv", "P-256".to_owned()),
                ("kty", "EC".to_owned()),
                ("x", URL_SAFE_NO_PAD.encode(x)),
                ("y", URL_SAFE_NO_PAD.encode(y)),
            ]
        }
    }
}

/// RFC 7638: SHA-256 of the required members as JSON with no whitespace,
/// in lexicographic order, base64url. The values are base64url or fixed
/// names, so they need no escaping.
fn thumbprint(members: &[(&'static str, String)]) -> String {
    let fields: Vec<String> = members
        .iter()
        .map(|(name, value)| format!(r#""{name}":"{value}""#))
        .collect();
    let json = format!("{{{}}}", fields.join(","));
    URL_SAFE_NO_PAD.encode(digest(&SHA256, json.as_bytes()))
}

fn append_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    // 4 characters per 3 bytes, rounded up, without padding.
    out.resize(start + (bytes.len() * 4).div_ceil(3), 0);
    let written = URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
pub(crate) mod tests {
    use super::*;

    /// RFC 8037 Appendix A.1: the Ed25519 key of the examples.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn rfc8037_key() -> SigningKey {
        let d = URL_SAFE_NO_PAD.decode(RFC8037_D).unwrap();
        let x = URL_SAFE_NO_PAD.decode(RFC8037_X).unwrap();
        SigningKey::new(Pair::Ed25519(
            Ed25519KeyPair::from_seed_and_public_key(&d, &x).unwrap(),
        ))
    }

    /// RFC 8037 Appendix A.3: the thumbprint of that key.
    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        let key = rfc8037_key();
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(key.public_jwk()["x"], RFC8037_X);
        assert_eq!(key.alg(), "EdDSA");
    }

    /// RFC 8037 Appendix A.4: the JWS of "Example of Ed25519 signing"
    /// under `{"alg":"EdDSA"}`. Ed25519 is deterministic, so the framing
    /// (base64url of header and payload, the signing input, the signature's
    /// encoding) must give exactly the published token.
    #[test]
    fn the_framing_gives_rfc_8037s_example_token() {
        let mut key = rfc8037_key();
        key.header_b64 = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        let mut out = b"prefix:".to_vec();
        key.append_token(&mut out, b"Example of Ed25519 signing")
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "prefix:eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
             hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    /// A P-256 key signs 64-byte (r || s) signatures that its public JWK
    /// verifies.
    #[test]
    fn p256_tokens_verify_with_the_published_key() {
        let rng = SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = SigningKey::from_pkcs8(der.as_ref()).unwrap();
        assert_eq!(key.alg(), "ES256");
        let jwk = key.public_jwk();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        let mut point = vec![4u8];
        for c in ["x", "y"] {
            let v = URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap();
            assert_eq!(v.len(), 32);
            point.extend(v);
        }
        let mut out = Vec::new();
        key.append_token(&mut out, br#"{"a":1}"#).unwrap();
        let token = std::str::from_utf8(&out).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert_eq!(sig.len(), 64);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(input.as_bytes(), &sig)
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"})
        );
    }

    #[test]
    fn other_keys_are_not_taken() {
        assert!(SigningKey::from_pkcs8(b"not der").is_none());
        let rng = SystemRandom::new();
        let p384 =
            EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .unwrap();
        assert!(SigningKey::from_pkcs8(p384.as_ref()).is_none());
    }
}
