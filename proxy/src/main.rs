//! The `strait` binary: `run` the proxy, `check` a config file, `explain`
//! a route under one, `await` the proxy's readiness around a command,
//! print or apply the `iptables` redirect, or print the `version`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use strait_config::{Config, ConfigError, LogFormat, RouteMatch};
use strait_proxy::metrics::Metrics;
use strait_proxy::{app, iptables, log_level};
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
    /// Explain where a request would be routed under a config file, and
    /// why, without sending it (the admin port's /debug/route, offline).
    Explain {
        /// YAML config file.
        config: PathBuf,
        /// outbound | inbound
        #[arg(long, default_value = "outbound")]
        direction: String,
        /// The request's Host / :authority.
        #[arg(long)]
        authority: Option<String>,
        /// The request's path (and query).
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// A request header as name:value; repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The original destination port, for a request iptables redirected.
        #[arg(long)]
        port: Option<u16>,
        /// Explain an outbound TLS connection asking for this server name
        /// (SNI) instead of a request.
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Wait until the proxy is ready, run a command, and exit with its
    /// status (as linkerd-await).
    Await {
        /// How long to wait for the proxy's /ready before giving up.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Ask the proxy to shut down (POST /shutdown) when the command exits.
        #[arg(long)]
        shutdown: bool,
        /// The proxy's admin address; default: STRAIT_ADMIN_ADDR, else the
        /// config's (STRAIT_CONFIG), else 127.0.0.1:4191.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
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
        Command::Explain {
            config,
            direction,
            authority,
            path,
            method,
            headers,
            port,
            server_name,
        } => {
            let query = (|| -> Result<strait_proxy::explain::Query, String> {
                Ok(strait_proxy::explain::Query {
                    direction: direction.parse()?,
                    authority,
                    path,
                    method: strait_proxy::explain::parse_method(&method)?,
                    headers: headers
                        .iter()
                        .map(|h| strait_proxy::explain::parse_header(h))
                        .collect::<Result<_, _>>()?,
                    port,
                    server_name,
                })
            })();
            explain(&config, query)
        }
        Command::Await {
            timeout,
            shutdown,
            admin,
            command,
        } => await_then_run(timeout, shutdown, admin, &command),
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
    // The filter sits behind a reload handle for the admin `/log-level`.
    match config.log.format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            log_level::install(&config.log.level, move |f| {
                handle.reload(parse_filter(f)?).map_err(|e| e.to_string())
            });
        }
        LogFormat::Plain => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            log_level::install(&config.log.level, move |f| {
                handle.reload(parse_filter(f)?).map_err(|e| e.to_string())
            });
        }
    }
    app::run(config, path)
}

/// A log filter as `/log-level` takes it; an empty one is refused rather
/// than taken as "errors only".
fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    if filter.trim().is_empty() {
        return Err("the filter is empty".into());
    }
    EnvFilter::try_new(filter).map_err(|e| e.to_string())
}

fn explain(path: &PathBuf, query: Result<strait_proxy::explain::Query, String>) -> ExitCode {
    let answer = load(Some(path))
        .map_err(|e| format!("{e:#}"))
        .and_then(|config| {
            let snapshot = strait_proxy::route::Snapshot::new(config);
            strait_proxy::explain::explain(&snapshot, &query?)
        });
    match answer {
        Ok(answer) => {
            println!("{answer:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strait explain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `strait await`: the exit code is the command's, or 69 (EX_UNAVAILABLE)
/// when the proxy never became ready, or 127 when the command cannot run.
fn await_then_run(
    timeout: std::time::Duration,
    shutdown: bool,
    admin: Option<std::net::SocketAddr>,
    command: &[String],
) -> ExitCode {
    use strait_proxy::await_ready;
    let admin = match admin {
        Some(admin) => admin,
        None => match load(
            std::env::var_os("STRAIT_CONFIG")
                .map(PathBuf::from)
                .as_ref(),
        ) {
            Ok(config) => config.admin,
            Err(e) => {
                eprintln!("strait await: cannot find the admin address: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    let admin = await_ready::dial_addr(admin);
    if let Err(e) = await_ready::wait_ready(admin, timeout) {
        eprintln!("strait await: {e}");
        return ExitCode::from(69);
    }
    if !shutdown {
        // Nothing to do after it: become the command, so signals reach
        // it directly (as linkerd-await does).
        let e = await_ready::exec(command);
        eprintln!("strait await: {e}");
        return ExitCode::from(127);
    }
    let status = await_ready::run(command);
    if let Err(e) = await_ready::shutdown(admin) {
        eprintln!("strait await: the proxy did not take the shutdown request: {e}");
    }
    match status {
        Ok(status) => ExitCode::from(await_ready::exit_code(status)),
        Err(e) => {
            eprintln!("strait await: {e}");
            ExitCode::from(127)
        }
    }
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
        let to = if r.split.is_empty() {
            r.cluster.clone()
        } else {
            let parts: Vec<String> = r.split.iter().map(|(c, w)| format!("{c}={w}")).collect();
            format!("split {}", parts.join(" "))
        };
        match &r.matches {
            RouteMatch::Authority(a) => println!("  route     authority {a} -> {to}"),
            RouteMatch::Port(p) => println!("  route     port {p} -> {to}"),
            RouteMatch::Destination(d) => println!("  route     destination {d} -> {to}"),
            RouteMatch::ServerName { name, port: None } => {
                println!("  route     server name {name} -> {to}")
            }
            RouteMatch::ServerName {
                name,
                port: Some(p),
            } => println!("  route     server name {name} on port {p} -> {to}"),
        }
    }
    if let Some(t) = &config.tracing {
        println!(
            "  tracing   spans of {} to OTLP {} (sample rate {})",
            t.service_name, t.otlp_address, t.sample_rate
        );
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

// jemalloc instead of glibc's malloc. A sidecar's heap swings with its
// connections: a burst of them each allocates ~20 KiB (hyper's buffers)
// that parking frees a second later, and glibc keeps those pages (15 KiB
// of RSS per idle connection where 4 KiB is live); jemalloc hands them back
// to the kernel once unused for a second (`dirty_decay_ms`; `muzzy` 0 skips
// the lazy-free stage, whose pages would still count in RSS). One arena:
// the proxy runs one worker by default, and every other arena would hold
// its own cached pages. jemalloc purges only as a side effect of
// allocating, so a proxy that goes quiet after a burst would keep the
// burst's pages (104 MiB after 8,000 connections closed, for as long as
// it stayed quiet); its background thread purges on the decay schedule
// instead (back to 12 MiB within 3 s), for one sleeping thread.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc at its first allocation (the crate prefixes its symbols
/// with `_rjem_`); `MALLOC_CONF`-style, overridable at run time through the
/// `_RJEM_MALLOC_CONF` environment variable.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
