//! The `fproxy` daemon binary: parse flags, set up logging, run the library's daemon.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fproxy::admin::{client, table};
use fproxy::config::{defaults, Kind};
use fproxy::daemon::{ReloadError, Reloader};
use fproxy::{ConfigSubscriber, Daemon, FileWatcher, Registry};
use tracing_subscriber::EnvFilter;

const ENV_HELP: &str = "\
Environment:
  FPROXY_CONFIG_PATH  config file to run (same as --config)
  FPROXY_LOG_FORMAT   log format: text or json (same as --log-format)
  RUST_LOG            log filter, e.g. info, fproxy=debug (default: info)
  TOKIO_WORKER_THREADS  worker threads (default: one per CPU)

Examples:
  fproxy --config config.json          run the apps in config.json, reloading on change
  fproxy check config.json             validate a config and summarise its apps
  fproxy status                        show a running daemon's apps, targets and keys
  curl -X POST 127.0.0.1:9901/reload   re-read the config now (needs an `admin` section)

Signals: SIGTERM or SIGINT stop accepting, drain open connections (up to each app's
drain_timeout), then exit 0. SIGHUP re-reads the config file (like POST /reload).
Editing the config file reloads it live.";

/// A programmable L4 proxy with live, zero-downtime config reloads.
#[derive(Debug, Parser)]
#[command(version, about, after_help = ENV_HELP)]
struct Cli {
    /// Path of the JSON config file.
    #[arg(
        short,
        long,
        global = true,
        env = "FPROXY_CONFIG_PATH",
        value_name = "PATH"
    )]
    config: Option<PathBuf>,

    /// Log output format.
    #[arg(long, global = true, env = "FPROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a config file, print one line per app, exit non-zero on error.
    Check {
        /// Config file (default: --config / FPROXY_CONFIG_PATH).
        path: Option<PathBuf>,
    },
    /// Print a running daemon's status (from its admin API) as tables; exit non-zero
    /// if it cannot be reached.
    Status {
        /// Admin API address [default: the config file's admin.listen when
        /// --config/FPROXY_CONFIG_PATH is given, else 127.0.0.1:9901].
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Print the JSON of GET /status instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { ref path }) => check(path.clone().or(cli.config.clone())),
        Some(Command::Status { admin, json }) => status(admin, cli.config.clone(), json),
        Some(Command::Run) | None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    path.context("no config file: pass --config PATH or set FPROXY_CONFIG_PATH")
}

fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(path)?;
    let validator = Daemon::new(Registry::default()).validator();
    let config = validator
        .load(&path)
        .with_context(|| format!("{} is not a valid config", path.display()))?;
    for app in &config.apps {
        let list = |addrs: &[std::net::SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match &app.kind {
            Kind::Tcp(t) => {
                let targets: Vec<String> = t.targets.iter().map(ToString::to_string).collect();
                println!(
                    "{}: tcp listen {} -> {} ({})",
                    app.name,
                    list(&app.listen),
                    targets.join(","),
                    t.strategy
                );
            }
            Kind::Spec(s) => println!(
                "{}: spec http {} grpc {} <- {} every {}",
                app.name,
                if app.listen.is_empty() {
                    "-".into()
                } else {
                    list(&app.listen)
                },
                if s.grpc_listen.is_empty() {
                    "-".into()
                } else {
                    list(&s.grpc_listen)
                },
                s.upstream,
                humantime::format_duration(s.poll_interval)
            ),
        }
    }
    if let Some(admin) = &config.admin {
        println!("admin API: http://{}", admin.listen);
    }
    println!("{}: ok, {} app(s)", path.display(), config.apps.len());
    Ok(())
}

fn status(admin: Option<SocketAddr>, config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let addr = match admin {
        Some(a) => a,
        None => admin_from_config(config)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        if json {
            print!("{}", client::status_json(addr).await?);
        } else {
            let status = client::status(addr).await?;
            print!("{}", table::render(&status));
        }
        Ok(())
    })
}

/// The admin address of the config file, made connectable.
fn admin_from_config(config: Option<PathBuf>) -> anyhow::Result<SocketAddr> {
    let Some(path) = config else {
        return defaults::ADMIN_LISTEN
            .parse()
            .context("the default admin address does not parse");
    };
    let admin = fproxy::config::load_admin(&path).with_context(|| {
        format!(
            "cannot take the admin address from {}; pass --admin ADDR",
            path.display()
        )
    })?;
    let listen = admin
        .with_context(|| {
            format!(
                "{} has no `admin` section, so the daemon serves no admin API; add \"admin\": {{}} to it",
                path.display()
            )
        })?
        .listen;
    if listen.port() == 0 {
        anyhow::bail!("admin.listen in {} has port 0 (chosen at start); pass --admin with the port the daemon logged", path.display());
    }
    // A wildcard listener is reached through loopback.
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    init_logging(cli.log_format);
    // Two descriptors per proxied connection: the default soft limit (often 1024)
    // is far too low. Each applied config is checked against the result.
    fproxy::fdlimit::raise();
    let path = config_path(cli.config.clone())?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Before the first load: until their handlers are installed, SIGHUP and
        // SIGTERM kill the process (no reload, no drain), and a supervisor may send
        // either as soon as it sees the first log line.
        let hangup = hangup_signal();
        let shutdown = shutdown_signal();
        let daemon = Daemon::new(Registry::default());
        let reloader = daemon.reloader();
        let subscription = FileWatcher::new(&path)
            .subscribe(daemon.validator())
            .with_context(|| format!("cannot load {}", path.display()))?;
        tracing::info!(config = %path.display(), "fproxy starting");
        if let Some(hangup) = hangup {
            tokio::spawn(reload_on_hangup(hangup, reloader));
        }
        daemon.run(subscription, shutdown).await?;
        tracing::info!("fproxy stopped");
        Ok(())
    })
}

/// Installs the SIGTERM and SIGINT handlers now; the future completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                // Without signal handlers the process still dies on SIGTERM, just
                // without draining; say so rather than fail to start.
                tracing::warn!("cannot install signal handlers; shutdown will not drain");
                std::future::pending::<()>().await
            }
        }
    }
}

/// The SIGHUP stream; `None` (logged) when the handler cannot be installed.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; SIGHUP will stop the process");
            None
        }
    }
}

/// SIGHUP re-reads the config source, as `POST /reload` does (what systemd's
/// `ExecReload=kill -HUP $MAINPID` expects). SIGHUPs that arrive during a reload are
/// merged into one more.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, reloader: Reloader) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading config");
        match reloader.reload().await {
            // The daemon logs the outcome itself (applied, unchanged or refused).
            Ok(r) => {
                tracing::debug!(result = %r.result, version = r.version, "SIGHUP: reload done")
            }
            Err(ReloadError::Unsupported(why)) => {
                tracing::warn!(%why, "SIGHUP: the config source cannot reload; keeping the running config")
            }
            Err(ReloadError::Stopped) => return,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
