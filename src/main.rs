//! `visitord`: the command line. `run` serves, `check` validates exactly what
//! `run` would load, `lookup` answers one address from the shell, `certs`
//! lists the certificates served, `dev-cert` makes a self-signed pair,
//! `signing-key` makes a signing key and prints the public set, and the
//! hidden `man` prints visitord(8) from these definitions.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use visitord::certs::acme;
use visitord::certs::signing;
use visitord::clock;
use visitord::snapshot::Snapshot;

/// mimalloc instead of glibc's malloc: see Cargo.toml and
/// docs/performance.md ("The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use visitord::certs::tls;
use visitord::certs::tls::{CertSource, LoadedCertificate};
use visitord::server;

#[derive(Debug, Parser)]
#[command(
    name = "visitord",
    // The package version and, when built from git, the commit (build.rs).
    version = env!("VISITORD_VERSION"),
    about = "A self-hosted VisitorAPI on Pingora",
    long_about = "A self-hosted VisitorAPI on Pingora: a website's own frontend \
        calls it to learn its visitor's IP address, country, region, city, \
        currencies, languages and browser, as VisitorAPI's JSON. Only the \
        origins listed for a project may call it. It terminates TLS itself, \
        can stand in front of existing sites as their reverse proxy, reloads \
        its files live, and stores and logs no visitor data."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The main configuration file; other files resolve from its folder.
    #[arg(
        long,
        short,
        env = "VISITORD_CONFIG",
        default_value = "/etc/visitord/visitord.toml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until SIGTERM (graceful) or SIGINT (immediate). SIGHUP reloads
    /// the files; SIGUSR2 starts a new instance (`run --upgrade`) from the
    /// same executable path and hands the listening sockets over to it.
    Run {
        /// Take over the listening sockets of the instance running on this
        /// configuration (over `server.upgrade_socket`) instead of binding
        /// them: everything is loaded and checked first; the running
        /// instance hands over on SIGQUIT, then drains and exits.
        #[arg(long)]
        upgrade: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load and validate everything `run` would (config, projects,
    /// certificates, databases, user-agent rules) and exit 0 if it is sound.
    Check(ConfigArg),
    /// Print the `data` object the API would answer for IP.
    Lookup {
        /// The IPv4 or IPv6 address to look up (an IPv4-mapped IPv6
        /// address counts as its IPv4 address).
        ip: IpAddr,
        /// A User-Agent string to parse along with the address.
        #[arg(long)]
        user_agent: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create a self-signed certificate (for localhost unless --name is
    /// given) at the first [tls] certificate pair of the config, or at
    /// --cert and --key, unless both files exist.
    DevCert {
        /// A name (DNS name or IP address) for the certificate; repeat for
        /// more. Default: localhost, 127.0.0.1 and ::1.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Write the certificate here instead of the config's first pair.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// Write the private key (mode 0600) here; with --cert.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the certificates served (file pairs and ACME), their issuer,
    /// expiry and next renewal, and the names waiting for one.
    Certs {
        /// Ask every node sharing acme.state_dir to renew NAME's ACME
        /// certificate now.
        #[arg(long, value_name = "NAME")]
        renew: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Keys that sign visitor facts (docs/signing.md).
    SigningKey {
        #[command(subcommand)]
        action: SigningKeyCommand,
    },
    /// Print the manual page, visitord(8), in roff (for packaging).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
enum SigningKeyCommand {
    /// Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) to FILE;
    /// an existing file is never replaced.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public keys of [signing] (the JWKS visitord serves),
    /// without a running server.
    Jwks(ConfigArg),
}

fn main() -> ExitCode {
    install_abort_on_panic();
    visitord::observe::logging::init();
    pingora::tls::install_default_crypto_provider();

    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Run {
            upgrade,
            config: ConfigArg { config },
        } => run(config, upgrade),
        Command::Check(ConfigArg { config }) => check(config),
        Command::Lookup {
            ip,
            user_agent,
            config: ConfigArg { config },
        } => lookup(config, ip, user_agent.as_deref()),
        Command::DevCert {
            names,
            cert,
            key,
            config: ConfigArg { config },
        } => dev_cert(config, cert.zip(key), &names),
        Command::Certs {
            renew,
            config: ConfigArg { config },
        } => certs(config, renew.as_deref()),
        Command::SigningKey { action } => signing_key(action),
        Command::Man => man::print(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("visitord: {}", reason(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and each of its sources, once: most of visitord's messages
/// already end with their source's text (`cannot read: <os error>`), and
/// anyhow's `{:#}` would print it a second time.
fn reason(error: &anyhow::Error) -> String {
    let mut out = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// A panic in any thread aborts the whole process, so that systemd restarts
/// it instead of leaving a process that lost a listener or a runtime.
fn install_abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
}

fn run(config: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    let sockets = match upgrade {
        true => server::Sockets::TakeOver,
        false => server::Sockets::Bind,
    };
    server::run(snapshot, sockets)?;
    Ok(())
}

fn check(config: PathBuf) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    let c = &snapshot.config;
    println!(
        "{}: ok: {} listener(s), {} project(s), {} database(s), {} certificate(s), {} site(s)",
        config.display(),
        c.listeners.len(),
        snapshot.projects.len(),
        snapshot.geo.databases().len(),
        snapshot.certificates.iter().count(),
        snapshot.sites.len(),
    );
    if let Some(s) = &snapshot.signing {
        println!(
            "signing: {} key(s) published, {} signs; ttl {}s; issuer {}",
            s.keys().len(),
            s.signer().map_or("none", |k| k.kid()),
            s.ttl_secs(),
            s.issuer()
        );
    }
    if let (Some(acme), Some(plan)) = (&c.acme, &snapshot.acme) {
        let waiting: Vec<&str> = snapshot.certificates.waiting().collect();
        println!(
            "acme: {} name(s) from {}{}: {} with a certificate, {} waiting{}",
            plan.managed.len(),
            acme.directory,
            if acme.domains_from_sites {
                " (the sites' hosts)"
            } else {
                ""
            },
            plan.managed.len() - waiting.len(),
            waiting.len(),
            list(": ", &waiting),
        );
        if !plan.covered.is_empty() {
            println!(
                "acme: served from a [tls] file pair instead: {}",
                plan.covered.join(", ")
            );
        }
    }
    Ok(())
}

/// `", a, b"`-style: `prefix` and the items, or nothing for none.
fn list(prefix: &str, items: &[&str]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{prefix}{}", items.join(", "))
    }
}

fn certs(config: PathBuf, renew: Option<&str>) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    if let Some(name) = renew {
        let plan = snapshot
            .acme
            .as_ref()
            .filter(|p| p.managed.iter().any(|n| n == name))
            .ok_or_else(|| acme::renew::ForceError::NotManaged(name.to_owned()))?;
        let serial = snapshot
            .certificates
            .for_name(name)
            .filter(|c| c.source == CertSource::Acme)
            .map(|c| c.serial.as_str());
        acme::renew::force(
            &plan.store,
            name,
            serial,
            "visitord certs --renew",
            clock::now(),
        )?;
        println!("{name}: renewal requested; running nodes order it within seconds");
        return Ok(());
    }
    for cert in snapshot.certificates.iter() {
        print_certificate(&snapshot, cert);
    }
    for name in snapshot.certificates.waiting() {
        println!(
            "{name}\n  source:       acme: waiting for its first certificate (handshakes refused)"
        );
        if let Some(plan) = &snapshot.acme {
            println!(
                "  next attempt: {}",
                next_order(plan, name, None, &snapshot)
            );
        }
    }
    if let Some(plan) = snapshot.acme.as_ref().filter(|p| !p.covered.is_empty()) {
        println!(
            "served from a [tls] file pair instead of ACME: {}",
            plan.covered.join(", ")
        );
    }
    Ok(())
}

fn print_certificate(snapshot: &Snapshot, cert: &LoadedCertificate) {
    println!("{}", cert.names.join(", "));
    match (cert.source, &snapshot.acme) {
        (CertSource::Acme, Some(plan)) => {
            let name = cert.names.first().map_or("", String::as_str);
            println!("  source:       acme: {}", cert.files.cert.display());
            println!("  issuer:       {}", cert.issuer);
            println!("  not after:    {}", clock::rfc3339(cert.not_after));
            println!(
                "  next renewal: {}",
                next_order(plan, name, Some(cert), snapshot)
            );
        }
        _ => {
            println!("  source:       file: {}", cert.files.cert.display());
            println!("  issuer:       {}", cert.issuer);
            println!("  not after:    {}", clock::rfc3339(cert.not_after));
            println!("  next renewal: none here (replace the files; they reload live)");
        }
    }
}

/// When the next order for `name` is due, from its record, and the last
/// failure if it is backing off.
fn next_order(
    plan: &acme::Plan,
    name: &str,
    cert: Option<&LoadedCertificate>,
    snapshot: &Snapshot,
) -> String {
    let meta = match plan.store.read_meta(name) {
        Ok(meta) => meta,
        Err(e) => return format!("unknown: {e}"),
    };
    let current = cert.map(|c| acme::schedule::Current {
        serial: c.serial.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
    });
    let renew_before = snapshot.config.acme.as_ref().and_then(|a| a.renew_before);
    let due = acme::schedule::due_at(current.as_ref(), meta.as_ref(), renew_before);
    let mut out = if due <= clock::now() {
        "now".to_owned()
    } else {
        clock::rfc3339(due)
    };
    if let Some(m) = meta.as_ref().filter(|m| m.failures > 0) {
        out.push_str(&format!(
            " (after {} failed order(s); last: {})",
            m.failures,
            m.last_error.as_deref().unwrap_or("")
        ));
    } else if let Some(w) = meta.as_ref().and_then(|m| m.ari) {
        out.push_str(&format!(
            " (inside the CA's window {} .. {})",
            clock::rfc3339(w.start),
            clock::rfc3339(w.end)
        ));
    }
    out
}

fn lookup(config: PathBuf, ip: IpAddr, user_agent: Option<&str>) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    let visitor = snapshot.visitor(ip, user_agent.unwrap_or(""));
    println!("{}", serde_json::to_string_pretty(&visitor.data())?);
    Ok(())
}

fn signing_key(action: SigningKeyCommand) -> anyhow::Result<()> {
    match action {
        SigningKeyCommand::Generate { out } => {
            let key = signing::generate_key_file(&out).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} ({}, kid {}): list it first in [signing] keys to sign with it",
                out.display(),
                key.alg(),
                key.kid()
            );
        }
        SigningKeyCommand::Jwks(ConfigArg { config }) => {
            let c = visitord::config::Config::load(&config)?;
            let files = c
                .signing
                .as_ref()
                .map(|s| s.keys.as_slice())
                .with_context(|| {
                    format!(
                        "{}: signing: no [signing] keys configured",
                        config.display()
                    )
                })?;
            let keys = signing::load_keys(&config, files)?;
            let set: serde_json::Value = serde_json::from_slice(&signing::jwks(&keys))?;
            println!("{}", serde_json::to_string_pretty(&set)?);
        }
    }
    Ok(())
}

/// The pair to write: `--cert`/`--key` when given, else the config's first.
fn dev_cert(
    config: PathBuf,
    files: Option<(PathBuf, PathBuf)>,
    names: &[String],
) -> anyhow::Result<()> {
    let (cert, key) = match files {
        Some(files) => files,
        None => {
            let c = visitord::config::Config::load(&config)?;
            let pair = c
                .tls
                .as_ref()
                .and_then(|t| t.certificates.first())
                .with_context(|| {
                    format!("{}: tls.certificates: none configured", config.display())
                })?;
            (pair.cert.clone(), pair.key.clone())
        }
    };
    let written = if names.is_empty() {
        tls::ensure_dev_certificate(&cert, &key)?
    } else {
        tls::ensure_self_signed_certificate(&cert, &key, names)?
    };
    if written {
        let names = if names.is_empty() {
            "localhost".to_owned()
        } else {
            names.join(", ")
        };
        println!(
            "wrote a self-signed certificate for {names}: {} and {}",
            cert.display(),
            key.display()
        );
    } else {
        println!("{} exists; left as is", cert.display());
    }
    Ok(())
}

/// visitord(8): clap_mangen's sections for the command and each of its
/// subcommands, then what an operator looks up in a manual page (files,
/// signals, environment, exit status). One page for every subcommand, as
/// Debian's nginx(8) or haproxy(1).
mod man {
    use std::io::Write;

    use clap::CommandFactory;
    use clap_mangen::roff::{bold, roman, Roff};
    use clap_mangen::Man;

    pub fn print() -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        render(&mut out)?;
        out.flush()?;
        Ok(())
    }

    pub fn render(out: &mut dyn Write) -> std::io::Result<()> {
        let mut cmd = super::Cli::command().disable_help_subcommand(true);
        cmd.build();
        let man = Man::new(cmd.clone())
            .title("VISITORD")
            .section("8")
            .manual("System Administration")
            .source(format!("visitord {}", env!("CARGO_PKG_VERSION")));
        man.render_title(out)?;
        man.render_name_section(out)?;
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
        Roff::new().control("SH", ["COMMANDS"]).to_writer(out)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            subcommand(out, sub)?;
        }
        let mut roff = Roff::new();
        roff.control("SH", ["FILES"]);
        definitions(&mut roff, FILES);
        roff.control("SH", ["SIGNALS"]);
        definitions(&mut roff, SIGNALS);
        roff.control("SH", ["ENVIRONMENT"]);
        definitions(&mut roff, ENVIRONMENT);
        roff.control("SH", ["EXIT STATUS"])
            .text([roman(EXIT_STATUS)])
            .control("SH", ["SEE ALSO"])
            .text([roman(SEE_ALSO)]);
        roff.to_writer(out)
    }

    /// `visitord NAME` as a subsection: its synopsis, description and
    /// options, without clap_mangen's section headings.
    fn subcommand(out: &mut dyn Write, sub: &clap::Command) -> std::io::Result<()> {
        let name = format!("visitord {}", sub.get_name());
        Roff::new().control("SS", [name.as_str()]).to_writer(out)?;
        let man = Man::new(sub.clone().bin_name(&name));
        for render in [
            Man::render_synopsis_section,
            Man::render_description_section,
            Man::render_options_section,
        ] {
            let mut section = Vec::new();
            render(&man, &mut section)?;
            let text = String::from_utf8_lossy(&section);
            for line in text.lines().filter(|l| !l.starts_with(".SH ")) {
                writeln!(out, "{line}")?;
            }
            Roff::new().control("PP", []).to_writer(out)?;
        }
        Ok(())
    }

    /// Tagged paragraphs: a term in bold, then its text.
    fn definitions(roff: &mut Roff, items: &[(&str, &str)]) {
        for (term, text) in items {
            roff.control("TP", [])
                .text([bold(*term)])
                .text([roman(*text)]);
        }
    }

    const FILES: &[(&str, &str)] = &[
        (
            "/etc/visitord/visitord.toml",
            "The configuration: listeners, certificates, databases, limits, sites. \
             Relative paths in it resolve from its folder.",
        ),
        (
            "/etc/visitord/projects.toml",
            "The projects that may call the API and the origins each allows. \
             As installed it lists none, so the API answers no origin.",
        ),
        (
            "/etc/visitord/tls/",
            "The self-signed certificate the package makes for this machine's \
             name until a real one is configured.",
        ),
        (
            "/usr/share/visitord/",
            "The shipped country database (geo-db/) and user-agent rules (uap-core/).",
        ),
        (
            "/var/lib/visitord/",
            "State: city databases (geo-db/) and, with [acme], the ACME account \
             and certificates (acme/). No visitor data.",
        ),
    ];

    const SIGNALS: &[(&str, &str)] = &[
        (
            "SIGHUP",
            "Reload the configuration, projects, databases and certificates \
             without dropping connections; a refused reload keeps the old state.",
        ),
        (
            "SIGTERM",
            "Stop accepting, let running requests finish, exit when no connection \
             is left or server.grace_period has passed.",
        ),
        ("SIGINT", "Exit at once."),
    ];

    const ENVIRONMENT: &[(&str, &str)] = &[
        (
            "VISITORD_CONFIG",
            "The configuration file when --config is not given.",
        ),
        (
            "RUST_LOG",
            "The log level (default info). No log line carries a client address.",
        ),
        (
            "NOTIFY_SOCKET",
            "Set by systemd; visitord reports readiness and reloads there.",
        ),
    ];

    const EXIT_STATUS: &str = "0 on success; 1 when the configuration, a file it names, \
        or a listener is refused, with the file, key and reason on standard error.";

    const SEE_ALSO: &str = "systemctl(1), systemd.exec(5); \
        /usr/share/doc/visitord/README.md, SECURITY.md and PRIVACY.md.";
}
