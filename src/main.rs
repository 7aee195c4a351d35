//! `visitord`: the command line. `run` serves, `check` validates exactly what
//! `run` would load, `lookup` answers one address from the shell.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use visitord::snapshot::Snapshot;
use visitord::{server, tls};

#[derive(Debug, Parser)]
#[command(
    name = "visitord",
    version,
    about = "A self-hosted VisitorAPI on Pingora"
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
    /// Serve until SIGTERM (graceful) or SIGINT (immediate).
    Run(ConfigArg),
    /// Load and validate everything `run` would (config, projects,
    /// certificates, databases, user-agent rules) and exit 0 if it is sound.
    Check(ConfigArg),
    /// Print the `data` object the API would answer for IP.
    Lookup {
        ip: IpAddr,
        /// A User-Agent string to parse along with the address.
        #[arg(long)]
        user_agent: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create a self-signed development certificate for localhost at the
    /// first [tls] certificate pair of the config, unless both files exist.
    DevCert(ConfigArg),
}

fn main() -> ExitCode {
    install_abort_on_panic();
    visitord::logging::init();
    pingora::tls::install_default_crypto_provider();

    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Run(ConfigArg { config }) => run(config),
        Command::Check(ConfigArg { config }) => check(config),
        Command::Lookup {
            ip,
            user_agent,
            config: ConfigArg { config },
        } => lookup(config, ip, user_agent.as_deref()),
        Command::DevCert(ConfigArg { config }) => dev_cert(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("visitord: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn run(config: PathBuf) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    server::run(snapshot)?;
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
    Ok(())
}

fn lookup(config: PathBuf, ip: IpAddr, user_agent: Option<&str>) -> anyhow::Result<()> {
    let snapshot = Snapshot::load(&config, 1)?;
    let visitor = snapshot.visitor(ip, user_agent.unwrap_or(""));
    println!("{}", serde_json::to_string_pretty(&visitor.data())?);
    Ok(())
}

fn dev_cert(config: PathBuf) -> anyhow::Result<()> {
    let c = visitord::config::Config::load(&config)?;
    let pair = c
        .tls
        .as_ref()
        .and_then(|t| t.certificates.first())
        .with_context(|| format!("{}: tls.certificates: none configured", config.display()))?;
    if tls::ensure_dev_certificate(&pair.cert, &pair.key)? {
        println!(
            "wrote a self-signed certificate for localhost: {} and {}",
            pair.cert.display(),
            pair.key.display()
        );
    } else {
        println!("{} exists; left as is", pair.cert.display());
    }
    Ok(())
}
