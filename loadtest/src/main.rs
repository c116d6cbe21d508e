use clap::{Parser, Subcommand};

use loadtest::logging::{self, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Demo storage nodes, load generator, failover scenarios and the nginx comparison.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version, about)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one demo storage node (key-value API, shared log replication, epoch fencing).
    Node(loadtest::node::NodeArgs),
    /// Send load to a URL (open or closed loop) and report throughput, latency and errors.
    Run(loadtest::run::RunArgs),
    /// Start 3 nodes + writer-election + rw-proxy on 127.0.0.1 until Ctrl-C.
    Demo(loadtest::demo::DemoArgs),
    /// Run a cluster under load, inject a fault on the writer (or, with --partition, a network
    /// fault between hosts of their own), check that no acknowledged write was lost and no
    /// epoch was accepted by two nodes.
    Failover(loadtest::failover::FailoverArgs),
    /// nginx vs rw-proxy (vs a direct connection) in front of the same nodes, in alternation.
    Compare(loadtest::compare::CompareArgs),
    /// writer-election's CPU and memory while probing many simulated nodes.
    ElectionBench(loadtest::electionbench::ElectionBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Node(args) => loadtest::node::run(args).await.map(|()| 0u8),
            Command::Run(args) => loadtest::run::main(args).await,
            Command::Demo(args) => loadtest::demo::main(args, cli.log_format).await,
            Command::Failover(args) => loadtest::failover::main(args, cli.log_format).await,
            Command::Compare(args) => loadtest::compare::main(args, cli.log_format).await,
            Command::ElectionBench(args) => {
                loadtest::electionbench::main(args, cli.log_format).await
            }
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
