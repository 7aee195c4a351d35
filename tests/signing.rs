//! Signed visitor facts (docs/signing.md) with the real binary: tokens
//! checked by two independent JOSE libraries from their registries —
//! Python's jwcrypto and Node's jose (`tests/verifiers/`, installed by
//! `scripts/test`) — against the JWKS visitord serves; rotation by live
//! reload; refused key files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{eventually, metric, run_cli, Options, Server};
use serde_json::{json, Value};

const ORIGIN: &str = "https://www.example.com";
const ISSUER: &str = "https://visitor.example.com";

const PROJECTS: &str = r#"
[[project]]
id = "signed"
domains = ["*.example.com"]
signed = true

[[project]]
id = "plain"
domains = ["*.example.com"]
"#;

fn verifiers() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers")
}

/// Runs one verifier (`python3 verify.py` or `node verify.mjs`) on a request.
fn verify(program: &str, script: &str, request: &Value) -> Value {
    let mut child = Command::new(program)
        .arg(verifiers().join(script))
        .current_dir(verifiers())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {script} failed (scripts/test installs jwcrypto and tests/verifiers/node_modules): {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// Both libraries' verdicts on `token` against `jwks`.
fn verify_both(jwks: &Value, token: &str, audience: &str, now: Option<i64>) -> [Value; 2] {
    let mut request = json!({"jwks": jwks, "token": token, "issuer": ISSUER, "audience": audience});
    if let Some(now) = now {
        request["now"] = json!(now);
    }
    [
        verify("python3", "verify.py", &request),
        verify("node", "verify.mjs", &request),
    ]
}

fn generate(dir: &Path, name: &str) -> String {
    let file = dir.join(name);
    let (ok, out, err) = run_cli(&["signing-key", "generate", "--out", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    out.split("kid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned()
}

fn signing_section(keys: &[&str], ttl: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "[signing]\nkeys = [{}]\nttl = \"{ttl}\"\nissuer = \"{ISSUER}\"\n",
        keys.join(", ")
    )
}

/// A server whose `signed` project signs with `a.pem` (made by the CLI
/// before the server starts).
fn signed_server() -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let kid = generate(dir.path(), "a.pem");
    let o = Options {
        projects: PROJECTS.to_owned(),
        extra: signing_section(&[dir.path().join("a.pem").to_str().unwrap()], "10m"),
        ..Options::default()
    };
    let config = Server::prepare(dir.path(), &o);
    let ca = std::sync::Arc::new(common::TestCa::new());
    ca.leaf(&dir.path().join("tls"), "server", &o.cert_names);
    (Server::spawn(dir, config, ca, "info"), kid)
}

fn answer(s: &Server, pid: &str) -> common::Reply {
    s.api(
        &format!("?pid={pid}"),
        &[("origin", ORIGIN), ("x-forwarded-for", "81.2.69.142")],
    )
}

fn jwks(s: &Server, path: &str) -> Value {
    let r = common::Reply::from(s.client().get(s.url(path)).send().unwrap());
    assert_eq!(r.status, 200, "{path}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=600"));
    r.json()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn tokens_verify_with_jwcrypto_and_jose_and_carry_the_answer() {
    let (s, kid) = signed_server();
    let set = jwks(&s, "/.well-known/jwks.json");
    assert_eq!(set, jwks(&s, "/api/jwks.json"));
    let r = answer(&s, "signed");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    let mut body = r.json();
    let token = body["data"]
        .as_object_mut()
        .unwrap()
        .remove("token")
        .unwrap();
    let token = token.as_str().unwrap();
    // Nothing else in the answer changes: it is the unsigned project's.
    assert_eq!(body, answer(&s, "plain").json());
    assert!(answer(&s, "plain").json()["data"].get("token").is_none());

    for verdict in verify_both(&set, token, ORIGIN, None) {
        assert_eq!(verdict["ok"], true, "{verdict}");
        assert_eq!(verdict["thumbprints"], json!([kid]), "RFC 7638 kid");
        assert_eq!(
            verdict["header"],
            json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"})
        );
        let c = &verdict["claims"];
        assert_eq!(c["aud"], ORIGIN);
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["pid"], "signed");
        assert_eq!(c["ip"], body["data"]["ipAddress"]);
        assert_eq!(c["ip"], "81.2.69.142");
        for (name, value) in body["data"].as_object().unwrap() {
            if name != "ipAddress" {
                assert_eq!(&c[name], value, "{name}");
            }
        }
        assert_eq!(c["countryCode"], "GB");
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
        let now = common_now();
        assert!((c["iat"].as_i64().unwrap() - now).abs() < 30);
    }

    // Expired: one second after exp, past jwcrypto's leeway too.
    let exp = claims_of(token)["exp"].as_i64().unwrap();
    for verdict in verify_both(&set, token, ORIGIN, Some(exp + 61)) {
        assert_eq!(verdict["ok"], false, "{verdict}");
        let error = verdict["error"].as_str().unwrap();
        assert!(error.to_lowercase().contains("expired"), "{error}");
    }
    // Another site's page cannot replay it: the audience is the origin.
    for verdict in verify_both(&set, token, "https://evil.example", None) {
        assert_eq!(verdict["ok"], false, "{verdict}");
    }
    // A token whose claims were edited (another country) fails.
    let mut claims = claims_of(token);
    claims["countryCode"] = json!("US");
    let parts: Vec<&str> = token.split('.').collect();
    let edited = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = format!("{}.{edited}.{}", parts[0], parts[2]);
    for verdict in verify_both(&set, &tampered, ORIGIN, None) {
        assert_eq!(verdict["ok"], false, "{verdict}");
    }
    // Nothing about tokens is logged.
    assert!(!s.logs().contains(parts[2]), "{}", s.logs());
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

fn token(s: &Server) -> String {
    answer(s, "signed").json()["data"]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_prepended_key_signs_after_a_live_reload_and_the_old_one_stays_published() {
    let (s, old_kid) = signed_server();
    let old_token = token(&s);
    assert_eq!(kid_of(&old_token), old_kid);
    let new_kid = generate(s.dir.path(), "b.pem");
    let a = s.path("a.pem");
    let b = s.path("b.pem");
    let rewrite = |keys: &[&str]| {
        let text = std::fs::read_to_string(&s.config).unwrap();
        let head = text.split("[signing]").next().unwrap().to_owned();
        std::fs::write(&s.config, head + &signing_section(keys, "10m")).unwrap();
    };
    rewrite(&[b.to_str().unwrap(), a.to_str().unwrap()]);
    assert!(
        eventually(Duration::from_secs(10), || kid_of(&token(&s)) == new_kid),
        "the new key does not sign:\n{}",
        s.logs()
    );
    let set = jwks(&s, "/.well-known/jwks.json");
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
    // Tokens of both keys verify against the published set.
    for t in [token(&s), old_token] {
        for verdict in verify_both(&set, &t, ORIGIN, None) {
            assert_eq!(verdict["ok"], true, "{verdict}");
        }
    }

    // A key file others may read is refused on reload: the keys before it
    // keep signing, and the failure is counted.
    let errors = "visitord_reloads_total{kind=\"signing\",result=\"error\"}";
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    rewrite(&[a.to_str().unwrap()]);
    assert!(
        eventually(Duration::from_secs(10), || metric(&s, errors) >= 1.0),
        "{}",
        s.logs()
    );
    assert_eq!(kid_of(&token(&s)), new_kid);
    assert!(s.logs().contains("signing.keys[0]"), "{}", s.logs());
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_refuses_bad_key_files_naming_the_key_the_file_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        projects: PROJECTS.to_owned(),
        ..Options::default()
    };
    let config = Server::prepare(dir.path(), &o);
    common::TestCa::new().leaf(&dir.path().join("tls"), "server", &o.cert_names);
    let base = std::fs::read_to_string(&config).unwrap();
    let key = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    generate(dir.path(), "good.pem");
    // openssl's own keys: Ed25519 is PKCS#8 v1, P-256 PKCS#8 with its public key.
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &key("ossl-ed.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &key("p256.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &key("rsa.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        &key("p384.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-aes-256-cbc",
        "-pass",
        "pass:secret",
        "-out",
        &key("encrypted.pem"),
    ]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &key("sec1.pem"),
    ]);
    std::fs::copy(key("good.pem"), key("loose.pem")).unwrap();
    for name in [
        "ossl-ed.pem",
        "p256.pem",
        "rsa.pem",
        "p384.pem",
        "encrypted.pem",
    ] {
        std::fs::set_permissions(key(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(key("loose.pem"), std::fs::Permissions::from_mode(0o604)).unwrap();
    let check = |keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| key(k)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        std::fs::write(&config, format!("{base}{}", signing_section(&keys, "10m"))).unwrap();
        run_cli(&["check", "--config", config.to_str().unwrap()])
    };
    let (ok, out, err) = check(&["good.pem", "ossl-ed.pem", "p256.pem"]);
    assert!(ok, "{err}");
    assert!(out.contains("signing: 3 key(s) published"), "{out}");
    for (file, reason) in [
        ("loose.pem", "mode 0604"),
        ("rsa.pem", "not an Ed25519 or P-256 key"),
        ("p384.pem", "not an Ed25519 or P-256 key"),
        ("encrypted.pem", "an encrypted key"),
        ("sec1.pem", "a SEC1"),
    ] {
        let (ok, _, err) = check(&["good.pem", file]);
        assert!(!ok, "{file} was accepted");
        let want = format!("signing.keys[1]: {}: {reason}", key(file));
        assert!(err.contains(&want), "{err}\nwanted {want}");
    }
    // The public set, offline: every key, the first first.
    check(&["p256.pem", "good.pem"]);
    let (ok, out, err) = run_cli(&["signing-key", "jwks", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(set["keys"][0]["alg"], "ES256");
    assert_eq!(set["keys"][1]["alg"], "EdDSA");
    assert!(set["keys"][0].get("d").is_none(), "no private part");
    // A signed project without [signing] is refused too.
    std::fs::write(&config, &base).unwrap();
    let (ok, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("project[0].signed"), "{err}");
}

#[test]
fn generate_writes_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.pem");
    generate(dir.path(), "k.pem");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&file).unwrap();
    let (ok, _, err) = run_cli(&["signing-key", "generate", "--out", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}
