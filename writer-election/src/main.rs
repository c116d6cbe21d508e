//! `writer-election --config FILE [--check] [--log-format json|text]`, and the operator commands
//! `writer-election status` / `writer-election switchover` (see `ops`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use writer_election::config::{Discovery, ElectionConfig};
use writer_election::{start, ServiceOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--version`: `<version> (commit <id or unknown>)`, the same pair as
/// `writer_election_build_info`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WRITER_ELECTION_COMMIT"),
    ")"
);

/// Elects the single writer of a storage cluster, records it durably and publishes the topology
/// on /v1/topology.
#[derive(Debug, Parser)]
#[command(name = "writer-election", version = VERSION, subcommand_negates_reqs = true)]
struct Args {
    /// The election config (YAML, see writer-election/README.md).
    #[arg(long, short = 'c', env = "WRITER_ELECTION_CONFIG", required = true)]
    config: Option<PathBuf>,
    /// Validate the config and exit: 0 if valid, else 1 with the key and the problem.
    #[arg(long)]
    check: bool,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Who is the writer and is everything fine: nodes, writer, epoch, switchover, HA leader,
    /// proxies following, last writer changes.
    Status(writer_election::ops::StatusArgs),
    /// A planned switchover to another writer, with the drain barrier (docs/failover.md).
    Switchover(writer_election::ops::SwitchoverArgs),
}

/// The operator commands need no config, no logging set-up and only a small runtime.
fn run_command(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("writer-election: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        match cmd {
            Command::Status(a) => writer_election::ops::status(a).await,
            Command::Switchover(a) => writer_election::ops::switchover(a).await,
        }
    });
    ExitCode::from(code)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(cmd) = args.command {
        return run_command(cmd);
    }
    // clap requires --config (or its env variable) when no command is given.
    let Some(config) = args.config else {
        eprintln!("writer-election: --config is required");
        return ExitCode::FAILURE;
    };
    let cfg = match ElectionConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("writer-election: {}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("writer-election: {}: ok", config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cfg))
}

async fn run(cfg: ElectionConfig) -> ExitCode {
    let kube_client = if matches!(cfg.discovery(), Discovery::Kubernetes(_)) {
        match kube_client().await {
            Ok(c) => Some(c),
            Err(e) => {
                error!(error = %e, "cannot build a Kubernetes client (in-cluster config or KUBECONFIG)");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let handle = match start(
        cfg,
        ServiceOptions {
            kube_client,
            ..Default::default()
        },
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot start");
            eprintln!("writer-election: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    info!("stopping");
    handle.stop().await;
    ExitCode::SUCCESS
}

/// In-cluster config or KUBECONFIG, without kube's built-in retry of 429/503/504: that retry
/// backs off up to minutes inside a single call, which would hide for as long that the API is
/// back. Every call here has its own timeout and is retried by the service's own loops.
async fn kube_client() -> Result<kube::Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
