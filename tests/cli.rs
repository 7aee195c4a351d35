//! `visitord check`, `lookup`, `dev-cert`, `man`, `--version`, the packaged
//! configuration, and start-up refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_cli, Options, Server, TestCa, CHROME_WINDOWS};

/// A config folder with certificates, ready for `check`/`run`.
fn prepared(o: &Options) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = Server::prepare(dir.path(), o);
    TestCa::new().leaf(&dir.path().join("tls"), "server", &["localhost"]);
    (dir, config)
}

/// The version, and in a build from git the commit it was built from.
#[test]
fn version_is_printed() {
    let (ok, out, _) = run_cli(&["--version"]);
    assert!(ok);
    let version = env!("CARGO_PKG_VERSION");
    let expected = match option_env!("VISITORD_COMMIT") {
        Some(commit) => format!("visitord {version} (commit {commit})"),
        None => format!("visitord {version}"),
    };
    assert_eq!(out.trim(), expected);
    let head = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|h| h.status.success());
    if let Some(head) = head {
        let head = String::from_utf8_lossy(&head.stdout);
        assert_eq!(option_env!("VISITORD_COMMIT"), Some(head.trim()));
    }
}

/// The version `--version` prints is the one both changelogs name.
#[test]
fn changelogs_name_this_version() {
    let root = env!("CARGO_MANIFEST_DIR");
    let version = env!("CARGO_PKG_VERSION");
    let changelog = std::fs::read_to_string(format!("{root}/CHANGELOG.md")).unwrap();
    assert!(
        changelog.contains(&format!("\n## [{version}] - ")),
        "CHANGELOG.md has no section for {version}"
    );
    let debian = std::fs::read_to_string(format!("{root}/debian/changelog")).unwrap();
    assert!(
        debian.starts_with(&format!("visitord ({version}-")),
        "debian/changelog: {}",
        debian.lines().next().unwrap_or("")
    );
}

/// visitord(8) has a subsection, with its options, for every subcommand
/// `--help` lists, and the page's own sections.
#[test]
fn man_page_describes_every_subcommand() {
    let (ok, help, _) = run_cli(&["--help"]);
    assert!(ok);
    let subcommands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(
        subcommands.contains(&"run") && subcommands.contains(&"dev-cert"),
        "{help}"
    );
    assert!(!subcommands.contains(&"man"), "man is hidden: {help}");
    let (ok, page, err) = run_cli(&["man"]);
    assert!(ok, "{err}");
    assert!(
        page.lines().any(|l| l.starts_with(".TH VISITORD 8 ")),
        "{page}"
    );
    for name in &subcommands {
        assert!(
            page.lines()
                .any(|l| l.starts_with(".SS") && l.ends_with(&format!("visitord {name}\""))),
            "no subsection for {name}:\n{page}"
        );
    }
    for text in [
        "\\-\\-config",
        "\\-\\-renew",
        "\\-\\-user\\-agent",
        "\\-\\-name",
        "VISITORD_CONFIG",
    ] {
        assert!(page.contains(text), "{text} missing:\n{page}");
    }
    for section in [
        "SYNOPSIS",
        "COMMANDS",
        "FILES",
        "SIGNALS",
        "ENVIRONMENT",
        "EXIT STATUS",
    ] {
        assert!(
            page.lines()
                .any(|l| l.starts_with(".SH") && l.contains(section)),
            "{section}"
        );
    }
}

/// The configuration the Debian package installs passes `check` as it
/// stands (its /usr/share paths pointed at this tree): two listeners, the
/// self-signed pair the package makes, and no project.
#[test]
fn check_accepts_the_packaged_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let toml = std::fs::read_to_string(format!("{root}/debian/visitord.toml"))
        .unwrap()
        .replace("/usr/share/visitord/geo-db/", &format!("{root}/geo-db/"))
        .replace(
            "/usr/share/visitord/uap-core/",
            &format!("{root}/conf/uap-core/"),
        );
    assert!(!toml.contains("/usr/share/visitord"), "{toml}");
    let config = dir.path().join("visitord.toml");
    std::fs::write(&config, toml).unwrap();
    std::fs::copy(
        format!("{root}/debian/projects.toml"),
        dir.path().join("projects.toml"),
    )
    .unwrap();
    let tls = dir.path().join("tls");
    let (cert, key) = (tls.join("selfsigned.crt"), tls.join("selfsigned.key"));
    let (ok, out, err) = run_cli(&[
        "dev-cert",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--name",
        "visitor.example.com",
        "--name",
        "localhost",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("for visitor.example.com, localhost"), "{out}");
    let (ok, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok: 2 listener(s), 0 project(s), 1 database(s), 1 certificate(s), 0 site(s)"),
        "{out}"
    );
    // --cert without --key is refused by the command line.
    let (ok, _, err) = run_cli(&["dev-cert", "--cert", cert.to_str().unwrap()]);
    assert!(!ok && err.contains("--key"), "{err}");
}

#[test]
fn check_accepts_a_good_config() {
    let (_dir, config) = prepared(&Options::default());
    let (ok, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok: 2 listener(s), 2 project(s), 1 database(s), 1 certificate(s), 0 site(s)"),
        "{out}"
    );
    let (_dir, config) = prepared(&Options {
        extra: "[[site]]\nhosts = [\"app.example.com\"]\nupstreams = [\"127.0.0.1:3000\"]\n".into(),
        ..Options::default()
    });
    let (ok, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(", 1 site(s)"), "{out}");
}

/// `$VISITORD_CONFIG` stands in for `--config`; without either, the default
/// path is named in the error.
#[test]
fn config_comes_from_the_environment_or_the_default_path() {
    let (_dir, config) = prepared(&Options::default());
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .env("VISITORD_CONFIG", &config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: 2 listener(s)"), "{stdout}");

    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .env_remove("VISITORD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/etc/visitord/visitord.toml"), "{stderr}");
}

#[test]
fn check_accepts_the_shipped_example() {
    // The example's certificate is created by `dev-cert`; do that in a copy.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("uap-core")).unwrap();
    std::fs::create_dir_all(dir.path().join("geo-db")).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for f in ["visitord.toml", "projects.toml", "uap-core/regexes.yaml"] {
        std::fs::copy(format!("{root}/conf/{f}"), conf.join(f)).unwrap();
    }
    std::fs::copy(
        format!("{root}/geo-db/iptoasn-country.mmdb"),
        dir.path().join("geo-db/iptoasn-country.mmdb"),
    )
    .unwrap();
    let config = conf.join("visitord.toml");
    let config = config.to_str().unwrap();
    let (ok, _, err) = run_cli(&["check", "--config", config]);
    assert!(!ok, "no certificate yet");
    assert!(err.contains("tls/localhost.crt: cannot read"), "{err}");
    let (ok, out, err) = run_cli(&["dev-cert", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote a self-signed certificate"), "{out}");
    let (ok, out, err) = run_cli(&["check", "--config", config]);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 project(s), 1 database(s), 1 certificate(s)"),
        "{out}"
    );
    let (ok, out, _) = run_cli(&["dev-cert", "--config", config]);
    assert!(ok);
    assert!(out.contains("left as is"), "{out}");
}

/// Each broken input is refused, naming the file and the key or reason.
#[test]
fn check_refuses_bad_inputs_naming_file_and_key() {
    type Breaker = fn(&std::path::Path);
    let cases: &[(&str, Breaker, &[&str])] = &[
        (
            "unknown key",
            |d| append(d, "visitord.toml", "\n[geo2]\nx = 1\n"),
            &["visitord.toml: geo2: unknown field `geo2`"],
        ),
        (
            "bad domain",
            |d| {
                std::fs::write(
                    d.join("projects.toml"),
                    "[[project]]\nid = \"a\"\ndomains = [\"ok.com\", \"*.\"]\n",
                )
                .unwrap()
            },
            &["projects.toml: project[0].domains[1]: \"*.\""],
        ),
        (
            "missing database",
            |d| std::fs::remove_file(d.join("fixture.mmdb")).unwrap(),
            &[
                "visitord.toml: geo.databases[0]: ",
                "fixture.mmdb: cannot read file: No such file or directory",
            ],
        ),
        (
            "garbage database",
            |d| std::fs::write(d.join("fixture.mmdb"), b"not a database").unwrap(),
            &[
                "visitord.toml: geo.databases[0]: ",
                "fixture.mmdb: not a MaxMind DB file",
            ],
        ),
        (
            "key of another certificate",
            |d| {
                TestCa::new().leaf(&d.join("tls"), "other", &["localhost"]);
                std::fs::rename(d.join("tls/other.key"), d.join("tls/server.key")).unwrap();
            },
            &[
                "visitord.toml: tls.certificates[0].key: ",
                "server.key: does not fit certificate ",
            ],
        ),
        (
            "missing certificate",
            |d| std::fs::remove_file(d.join("tls/server.crt")).unwrap(),
            &[
                "visitord.toml: tls.certificates[0].cert: ",
                "server.crt: cannot read: No such file or directory",
            ],
        ),
        (
            "broken user agent rules",
            |d| {
                std::fs::write(
                    d.join("ua.yaml"),
                    "user_agent_parsers: [{regex: '('}]\nos_parsers: []\ndevice_parsers: []\n",
                )
                .unwrap();
                append(
                    d,
                    "visitord.toml",
                    "\n[user_agent]\nregexes = \"ua.yaml\"\n",
                );
            },
            &[
                "visitord.toml: user_agent.regexes: ",
                "ua.yaml: user_agent_parsers[0]: ",
                "unclosed group",
            ],
        ),
        (
            "missing projects file",
            |d| std::fs::remove_file(d.join("projects.toml")).unwrap(),
            &[
                "visitord.toml: api.projects: ",
                "projects.toml: cannot read: No such file or directory",
            ],
        ),
        (
            "missing ACME directory CA",
            |d| {
                append(
                    d,
                    "visitord.toml",
                    "\n[acme]\nemail = \"a@example.com\"\ndomains = [\"a.example.com\"]\n\
                     state_dir = \"acme\"\ndirectory_ca = \"ca.pem\"\n",
                )
            },
            &[
                "visitord.toml: acme.directory_ca: ",
                "ca.pem: cannot read: No such file or directory",
            ],
        ),
    ];
    for (name, breaker, expected) in cases {
        let (dir, config) = prepared(&Options::default());
        breaker(dir.path());
        let (ok, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
        assert!(!ok, "{name}: accepted");
        for part in *expected {
            assert!(err.contains(part), "{name}: {part:?} not in {err}");
        }
        assert!(err.starts_with("visitord: "), "{name}: {err}");
    }
}

fn append(dir: &std::path::Path, file: &str, text: &str) {
    let path = dir.join(file);
    let mut s = std::fs::read_to_string(&path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

#[test]
fn lookup_prints_the_data_object() {
    let (_dir, config) = prepared(&Options::default());
    let (ok, out, err) = run_cli(&[
        "lookup",
        "81.2.69.142",
        "--user-agent",
        CHROME_WINDOWS,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ipAddress"], "81.2.69.142");
    assert_eq!(v["countryCode"], "GB");
    assert_eq!(v["city"], "London");
    assert_eq!(v["browser"], "Chrome");
    assert!(out.contains("\n  \"countryCode\""), "pretty printed: {out}");
}

#[test]
fn lookup_with_the_shipped_database() {
    let db = concat!(env!("CARGO_MANIFEST_DIR"), "/geo-db/iptoasn-country.mmdb");
    let (_dir, config) = prepared(&Options {
        databases: Some(vec![db.to_owned()]),
        ..Options::default()
    });
    let config = config.to_str().unwrap();
    for (ip, country) in [
        ("8.8.8.8", "US"),
        ("2001:4860:4860::8888", "US"),
        ("::ffff:8.8.8.8", "US"),
    ] {
        let (ok, out, err) = run_cli(&["lookup", ip, "--config", config]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["countryCode"], country, "{ip}");
    }
    let (ok, _, err) = run_cli(&["lookup", "not-an-ip", "--config", config]);
    assert!(!ok);
    assert!(err.contains("invalid value 'not-an-ip'"), "{err}");
}

#[test]
fn run_refuses_a_busy_port_and_exits() {
    let (_dir, config) = prepared(&Options::default());
    let text = std::fs::read_to_string(&config).unwrap();
    let https: std::net::SocketAddr = text
        .lines()
        .find(|l| l.starts_with("addr"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let _busy = std::net::TcpListener::bind(https).unwrap();
    let out = Command::new(common::BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listen[0].addr: cannot listen on {https}")),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}

#[test]
fn run_refuses_a_bad_certificate_and_exits() {
    let (dir, config) = prepared(&Options::default());
    std::fs::write(dir.path().join("tls/server.crt"), "garbage").unwrap();
    let mut child = Command::new(common::BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("server.crt: no CERTIFICATE block"), "{err}");
}

/// An error's reason is printed once, not once per layer that carries it.
#[test]
fn reasons_are_printed_once() {
    let (dir, config) = prepared(&Options::default());
    std::fs::remove_file(dir.path().join("tls/server.crt")).unwrap();
    let (ok, _, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Every argument and option of every subcommand says what it is for.
#[test]
fn every_argument_has_a_description() {
    let (ok, top, err) = run_cli(&["--help"]);
    assert!(ok, "{err}");
    let commands: Vec<String> = section(&top, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{top}");
    for command in &commands {
        let (ok, help, err) = run_cli(&[command, "--help"]);
        assert!(ok, "{command}: {err}");
        let mut entries = section(&help, "Options:");
        entries.extend(section(&help, "Arguments:"));
        assert!(!entries.is_empty(), "{command}: {help}");
        for entry in entries {
            // `  <IP>  The address…` / `  -c, --config <CONFIG>  The main…`:
            // the name, two spaces or more, then a description.
            let described = entry
                .trim_start()
                .split_once("  ")
                .is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "{command}: no description: {entry:?}\n{help}");
        }
    }
    let (_, lookup, _) = run_cli(&["lookup", "--help"]);
    assert!(
        section(&lookup, "Arguments:")[0].contains("<IP>"),
        "{lookup}"
    );
}

/// The entry lines of a help section (continuation lines left out).
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            let t = l.trim_start();
            l.len() - t.len() <= 6 && !t.is_empty()
        })
        .collect()
}

/// The install steps of docs/operations.md and of the unit's comment, run
/// as written in a scratch root (`/etc`, `/var` and `/usr/local` moved
/// under it), end with a configuration `check` accepts. Left out: building,
/// installing the binary and the unit, `systemctl`; the one documented
/// hand edit, the certificate, is a pair written where the file points.
#[test]
fn the_documented_install_steps_pass_check() {
    let root_dir = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root_dir}/docs/operations.md")).unwrap();
    let from_docs: Vec<String> = docs
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("cp -r conf/"))
        .expect("no install block in docs/operations.md")
        .lines()
        .map(str::to_owned)
        .collect();
    let unit = std::fs::read_to_string(format!("{root_dir}/systemd/visitord.service")).unwrap();
    let from_unit: Vec<String> = unit
        .lines()
        .skip_while(|l| !l.starts_with("# Install:"))
        .skip(1)
        .map_while(|l| l.strip_prefix("#   "))
        .map(str::to_owned)
        .collect();
    for (what, steps) in [("docs/operations.md", from_docs), ("the unit", from_unit)] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().to_str().unwrap();
        let mut checked = false;
        for step in &steps {
            let step = step.split(" # ").next().unwrap().trim();
            let skipped = [
                "scripts/run",
                "systemctl",
                "target/release",
                "systemd/",
                "(",
            ];
            if step.is_empty() || step.starts_with('#') || skipped.iter().any(|s| step.contains(s))
            {
                continue;
            }
            let step = ["/etc/", "/var/", "/usr/local/"]
                .iter()
                .fold(step.to_owned(), |s, dir| {
                    s.replace(dir, &format!("{root}{dir}"))
                });
            if let Some(args) = step.strip_prefix("visitord ") {
                let config = format!("{root}/etc/visitord/visitord.toml");
                let text = std::fs::read_to_string(&config).unwrap();
                let cert = text
                    .lines()
                    .find_map(|l| l.strip_prefix("certificates = [{ cert = \""))
                    .and_then(|l| l.split('"').next())
                    .unwrap();
                let tls = std::path::Path::new(&config).parent().unwrap().join(cert);
                let name = tls.file_stem().unwrap().to_str().unwrap().to_owned();
                std::fs::create_dir_all(tls.parent().unwrap()).unwrap();
                TestCa::new().leaf(tls.parent().unwrap(), &name, &["localhost"]);
                let args: Vec<&str> = args.split_whitespace().collect();
                let (ok, out, err) = run_cli(&args);
                assert!(ok, "{what}: `{step}` failed: {err}");
                assert!(out.contains(": ok: "), "{what}: {out}");
                checked = true;
                continue;
            }
            let out = Command::new("sh")
                .args(["-c", &step])
                .current_dir(root_dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: `{step}`: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(checked, "{what}: no `visitord check` step");
    }
}
