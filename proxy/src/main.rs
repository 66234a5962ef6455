//! The `strait` binary: `run` the proxy, `check` a config file, print or
//! apply the `iptables` redirect, or print the `version`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use strait_config::{Config, ConfigError, LogFormat, RouteMatch};
use strait_proxy::metrics::Metrics;
use strait_proxy::{app, iptables};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "strait: a service-mesh sidecar proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default config when no file is given).
    Run {
        /// YAML config file; watched and reloaded when it changes.
        #[arg(long, short, env = "STRAIT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what it would run.
    Check {
        /// YAML config file.
        file: PathBuf,
    },
    /// Print (or apply) the iptables rules that redirect a pod's TCP to strait.
    Iptables {
        /// The uid strait runs as; its own traffic is not redirected.
        #[arg(long, default_value_t = 2102)]
        proxy_uid: u32,
        /// The proxy's inbound listener port: inbound TCP (nat PREROUTING)
        /// is redirected here.
        #[arg(long, default_value_t = 4143)]
        inbound_port: u16,
        /// The proxy's outbound listener port: the pod's outgoing TCP (nat
        /// OUTPUT) is redirected here.
        #[arg(long, default_value_t = 4140)]
        outbound_port: u16,
        /// Inbound ports left alone (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "4191")]
        skip_inbound_ports: Vec<u16>,
        /// Outbound ports left alone (comma separated).
        #[arg(long, value_delimiter = ',')]
        skip_outbound_ports: Vec<u16>,
        /// Emit ip6tables rules.
        #[arg(long)]
        ipv6: bool,
        /// Install the rules instead of printing them. Safe to repeat: a
        /// second run leaves one copy of every rule.
        #[arg(long, conflicts_with = "clean")]
        apply: bool,
        /// Remove what --apply installed (strait's chains and the jumps to
        /// them), and nothing else.
        #[arg(long)]
        clean: bool,
        /// Which iptables to run: default (the iptables on PATH), nft
        /// (iptables-nft) or legacy (iptables-legacy); use the one the
        /// node's kube-proxy uses.
        #[arg(long, default_value = "default")]
        mode: iptables::Mode,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strait: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { file } => check(&file),
        Command::Iptables {
            proxy_uid,
            inbound_port,
            outbound_port,
            skip_inbound_ports,
            skip_outbound_ports,
            ipv6,
            apply,
            clean,
            mode,
        } => {
            let redirect = iptables::Redirect {
                proxy_uid,
                inbound_port,
                outbound_port,
                skip_inbound_ports,
                skip_outbound_ports,
                ipv6,
                mode,
            };
            let result = if apply {
                iptables::apply(&redirect)
            } else if clean {
                iptables::clean(&redirect)
            } else {
                print!("{}", iptables::script(&redirect));
                return ExitCode::SUCCESS;
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait iptables: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("strait {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let mut config = match path {
        // A read error names the path itself; a field error gets it prefixed.
        Some(path) => match Config::from_path(path) {
            Ok(config) => config,
            Err(e @ ConfigError::Read { .. }) => return Err(e.into()),
            Err(e) => return Err(anyhow::Error::new(e).context(path.display().to_string())),
        },
        None => Config::embedded_default().context("embedded default config")?,
    };
    config
        .apply_env(|k| std::env::var(k).ok())
        .context("environment override")?;
    Ok(config)
}

/// Log lines buffered for the writer thread before new ones are dropped.
const LOG_BUFFER_LINES: usize = 4096;

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path.as_ref())?;
    let filter = EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log level '{}' is not a valid filter", config.log.level))?;
    // Logging never blocks the data path: lines go through a buffer to a
    // writer thread (and are dropped, counted, if it falls behind).
    // The buffer is bounded small: its slots are allocated up front and
    // the default (128k lines) alone would cost megabytes of RSS.
    let (writer, _flush_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    app::run(config, path)
}

fn check(path: &PathBuf) -> ExitCode {
    let config = match load(Some(path)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(identity) = &config.identity {
        // `run` refuses to start without a loadable identity; so does check.
        if let Err(e) = strait_proxy::tls::Tls::load(identity, Metrics::new()) {
            eprintln!("{}: {}", path.display(), identity_error(path, identity, &e));
            return ExitCode::FAILURE;
        }
    }
    if let Some(Err(e)) = config.xds.as_ref().map(strait_proxy::xds::check_tls) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("{}: ok", path.display());
    println!(
        "  outbound  {}{}",
        config.outbound.addr,
        default_note(&config.outbound.default_cluster)
    );
    println!(
        "  inbound   {} -> {}:<original port>{}",
        config.inbound.addr,
        config.inbound.forward_ip,
        default_note(&config.inbound.default_cluster)
    );
    println!("  admin     {}", config.admin);
    for l in &config.extra_listeners {
        let forward = l
            .forward_ip
            .map(|ip| format!(" -> {ip}:<original port>"))
            .unwrap_or_default();
        println!(
            "  listener  {} [{:?}] {}{forward}{}",
            l.name,
            l.direction,
            l.addr,
            default_note(&l.default_cluster)
        );
    }
    if let Some(x) = &config.xds {
        println!(
            "  xds       {} as node {} ({}; its clusters and routes join the ones below)",
            x.address,
            x.node.id,
            match x.mode {
                strait_config::XdsMode::Sotw => "state of the world",
                strait_config::XdsMode::Delta => "delta",
            }
        );
    }
    for c in &config.clusters {
        let endpoints: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| format!("{} (weight {})", e.addr, e.weight))
            .collect();
        println!(
            "  cluster   {} [{:?}, connect {:?}, response {:?}]: {}",
            c.name,
            c.protocol,
            c.connect_timeout,
            c.response_timeout,
            endpoints.join(", ")
        );
    }
    for host in &config.virtual_hosts {
        println!(
            "  vhost     {} [{}]: {} route(s): {}",
            host.name,
            host.domains.join(", "),
            host.routes.len(),
            host.routes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match config.identity.as_ref().map(|i| &i.source) {
        Some(strait_config::IdentitySource::Files(files)) => println!(
            "  identity  {} (key {}, trust {})",
            files.certificate.display(),
            files.private_key.display(),
            files.trust_bundle.display()
        ),
        Some(strait_config::IdentitySource::Sds(sds)) => println!(
            "  identity  xDS secret {} (trust: secret {})",
            sds.certificate, sds.trust_bundle
        ),
        None => {}
    }
    for r in &config.routes {
        match &r.matches {
            RouteMatch::Authority(a) => println!("  route     authority {a} -> {}", r.cluster),
            RouteMatch::Port(p) => println!("  route     port {p} -> {}", r.cluster),
        }
    }
    ExitCode::SUCCESS
}

fn default_note(default: &Option<String>) -> String {
    match default {
        Some(c) => format!(" (unrouted traffic -> cluster {c})"),
        None => " (unrouted traffic -> original destination)".into(),
    }
}

/// `identity.<field>: <error> (line N)` for an identity that does not
/// load, naming the field whose file is at fault.
fn identity_error(
    path: &PathBuf,
    identity: &strait_config::Identity,
    error: &strait_proxy::tls::TlsError,
) -> String {
    let field = match (&identity.source, error.path()) {
        (strait_config::IdentitySource::Files(f), Some(p)) if p == f.certificate => {
            "identity.certificate"
        }
        (strait_config::IdentitySource::Files(f), Some(p)) if p == f.private_key => {
            "identity.private_key"
        }
        (strait_config::IdentitySource::Files(f), Some(p)) if p == f.trust_bundle => {
            "identity.trust_bundle"
        }
        _ => "identity",
    };
    let line = std::fs::read_to_string(path)
        .ok()
        .and_then(|source| strait_config::lines::LineIndex::build(&source).line_of(field));
    match line {
        Some(line) => format!("{field}: {error} (line {line})"),
        None => format!("{field}: {error}"),
    }
}
