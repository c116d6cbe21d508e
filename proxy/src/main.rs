//! `rw-proxy --config FILE [--check] [--log-format text|json]`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use rw_proxy::config::ProxyConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Read/write splitting proxy for a single-writer storage cluster: writes go to the elected
/// writer, reads are spread over the ready readers.
#[derive(Debug, Parser)]
#[command(name = "rw-proxy", version)]
struct Args {
    /// Configuration file (YAML; see proxy/README.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 if valid, 1 with the key and the reason if not.
    #[arg(long)]
    check: bool,
    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // try_init also routes Pingora's `log` records into tracing.
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("rw-proxy: cannot set up logging: {e}");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);

    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rw-proxy: cannot read {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match ProxyConfig::from_yaml_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rw-proxy: {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("rw-proxy: {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    match rw_proxy::server::run(args.config, config, text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rw-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
