//! `rw-proxy --config FILE [--check] [--log-format text|json]`

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

/// `--version`: `<version> (commit <id or unknown>)`, the same pair as `rw_proxy_build_info`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RW_PROXY_COMMIT"),
    ")"
);

/// Read/write splitting proxy for a single-writer storage cluster: writes go to the elected
/// writer, reads are spread over the ready readers.
#[derive(Debug, Parser)]
#[command(name = "rw-proxy", version = VERSION)]
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

fn main() -> ExitCode {
    let args = Args::parse();
    rw_proxy::logging::init(matches!(args.log_format, LogFormat::Json));

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
    let result = rw_proxy::server::run(args.config, config, text);
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    rw_proxy::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rw-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
