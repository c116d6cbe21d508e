//! `loadtest node`: the demo storage node. It speaks the storage node library's cluster-controller
//! API (readiness, distributor role, activation, storage gauge; [`api`]) and refuses writes until
//! promoted, as the real nodes do; replication goes through a shared log file.

pub mod api;
pub mod committer;
pub mod fence;
pub mod http;
pub mod log;
pub mod promotion;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::sync::mpsc;

use api::Api;
use committer::Committer;
use promotion::Promotion;
use store::Store;

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node name (reported by /whoami and written into every log line it appends).
    #[arg(long)]
    pub name: String,
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The shared append-only log file (created if missing). Every node of a cluster gets the same.
    #[arg(long)]
    pub log: PathBuf,
    /// Simulated replication lag: a line is applied here this long after it was appended
    /// (changeable while running: POST /admin/lag with a duration body).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub lag: Duration,
    /// Which generation of the storage node API to serve (paths of readiness, distributor,
    /// activation and storage bytes).
    #[arg(long, value_enum, default_value_t = Api::Microstream)]
    pub api: Api,
    /// Accept writes without being the distributor (a single node with no election: benchmarks
    /// of the proxy, tools). By default writes are refused with 400 + the API's NAD header until the
    /// node is promoted, as a real node does.
    #[arg(long, conflicts_with = "backup")]
    pub no_promotion_needed: bool,
    /// Writes wait for promotion: the default now, accepted so older command lines still run.
    #[arg(long, hide = true, conflicts_with = "no_promotion_needed")]
    pub require_promotion: bool,
    /// A backup node: answers 400 to the distributor calls, is never promoted, refuses writes.
    #[arg(long)]
    pub backup: bool,
    /// How long a promotion takes (finish answers false until then).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub promotion_delay: Duration,
    /// How often the log is polled for lines appended by other nodes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2ms")]
    pub poll_interval: Duration,
    /// Do not fdatasync before acknowledging (benchmarks of the proxy only: not durable).
    #[arg(long)]
    pub no_sync: bool,
    /// Start unready: the API's readiness path answers 500, /health/ready 503 (switch with
    /// POST /admin/ready).
    #[arg(long)]
    pub start_unready: bool,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let name_header = HeaderValue::from_str(&args.name)
        .with_context(|| format!("--name {:?}: not usable in an HTTP header", args.name))?;
    let store = Arc::new(
        Store::open(&args.log, args.lag)
            .with_context(|| format!("--log {}: cannot open", args.log.display()))?,
    );
    {
        let mut rep = store.replica();
        store
            .poll(&mut rep, false)
            .with_context(|| format!("--log {}: cannot read", args.log.display()))?;
    }
    let promotion = Arc::new(Promotion::new(
        !args.no_promotion_needed,
        args.backup,
        args.promotion_delay,
    ));
    let file = log::open_for_append(&args.log)
        .with_context(|| format!("--log {}: cannot open for append", args.log.display()))?;
    let (tx, rx) = mpsc::channel(8192);
    let committer = Committer {
        node: args.name.clone(),
        store: store.clone(),
        promotion: promotion.clone(),
        file,
        sync: !args.no_sync,
    };
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || committer.run(rx))
        .context("spawning the committer thread")?;

    let stop = Arc::new(AtomicBool::new(false));
    let tailer = {
        let store = store.clone();
        let stop = stop.clone();
        let every = args.poll_interval.max(Duration::from_micros(100));
        std::thread::Builder::new()
            .name("tailer".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let mut rep = store.replica();
                    if let Err(e) = store.poll(&mut rep, false) {
                        tracing::warn!(error = %e, "reading the log failed");
                    }
                }
            })
            .context("spawning the tailer thread")?
    };

    let node = Arc::new(http::Node {
        name: args.name.clone(),
        api: args.api,
        name_header,
        store,
        promotion,
        ready: AtomicBool::new(!args.start_unready),
        writes: tx,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    tracing::info!(
        name = %args.name,
        listen = %args.listen,
        log = %args.log.display(),
        lag = ?args.lag,
        api = %args.api,
        promotion_needed = !args.no_promotion_needed,
        backup = args.backup,
        "demo node listening"
    );
    axum::serve(listener, http::router(node))
        .with_graceful_shutdown(crate::signals::terminated())
        .await
        .context("serving HTTP")?;
    stop.store(true, Ordering::Relaxed);
    let _ = tailer.join();
    tracing::info!("demo node stopped");
    Ok(())
}
