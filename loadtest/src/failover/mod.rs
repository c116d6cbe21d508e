//! `loadtest failover`: its own cluster, open-loop load through rw-proxy, one fault, then the
//! history check ([`check`]). Exits non-zero when a check fails.
//!
//! Timeline: cluster up -> load starts -> at `--fault-after` the fault is injected on the
//! current writer (kill -9 / SIGSTOP / readiness off / POST /v1/switchover) -> the load runs
//! to `--duration` (a hung writer gets SIGCONT then) -> every live node catches up with the
//! log -> each acknowledged write is looked for in the log, on every live node and through the
//! proxy.
//!
//! Beside the load, clients write keys of their own and read them back carrying rw-proxy's
//! read-your-writes token (`run --read-your-writes`), through the fault: a read that does not
//! return the value just written fails the run (docs/consistency.md says what a token promises
//! across a change of writer).

pub mod check;
pub mod partition;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use topology_client::topology::Topology;

use crate::cluster::{Cluster, ClusterOptions, TopologyMode};
use crate::logging::LogFormat;
use crate::node::log::read_all;
use crate::procs::{SIGCONT, SIGKILL, SIGSTOP};
use crate::run::history::WriteRecord;
use crate::run::{self, LoadConfig, Mode, RunReport};
use check::{Analysis, Fault};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Victim {
    /// The writer when the fault is injected.
    Writer,
}

/// Exactly one fault per run.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct FaultArgs {
    /// kill -9 the writer.
    #[arg(long, value_enum)]
    pub kill: Option<Victim>,
    /// SIGSTOP the writer (SIGCONT when the load ends).
    #[arg(long, value_enum)]
    pub hang: Option<Victim>,
    /// Turn the writer's readiness off (POST /admin/ready false).
    #[arg(long, value_enum)]
    pub unready: Option<Victim>,
    /// The writer loses its distributor role (POST /admin/demote), as a writer that restarted
    /// does: it refuses writes (400 + NAD) until writer-election promotes it again; rw-proxy
    /// holds and resends them. No failover; no write may fail or be applied twice.
    #[arg(long, value_enum)]
    pub demote: Option<Victim>,
    /// Planned switchover: POST /v1/switchover with the bearer token.
    #[arg(long)]
    pub switchover: bool,
    /// A network fault between hosts of their own (network namespaces, needs root):
    /// election-writer | proxy-election | writer-isolated | proxy-writer |
    /// one-way:FROM->TO | loss:HOST=P% | delay:writer=D. Healed after --fault-for.
    #[arg(long, value_parser = parse_partition, value_name = "SPEC")]
    pub partition: Option<partition::Partition>,
}

fn parse_partition(s: &str) -> Result<partition::Partition, String> {
    s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub fault: FaultArgs,
    /// Length of the load.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    pub duration: Duration,
    /// When the fault is injected, from the start of the load.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub fault_after: Duration,
    /// How long a --partition fault lasts before it is healed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub fault_for: Duration,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Share of reads among requests.
    #[arg(long, default_value_t = 0.2)]
    pub read_ratio: f64,
    /// PUT->GET pairs per second carrying the read-your-writes token, besides the load; every
    /// stale read among them fails the run. 0: none.
    #[arg(long, default_value_t = 50.0)]
    pub token_pair_rate: f64,
    /// Longest wait between a pair's write and its read (each read draws from 0 to this), so
    /// that some token reads come after the readers caught up and go to them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub token_read_delay: Duration,
    /// Client timeout per request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Demo nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Storage node API of the nodes (and of the election's promotion calls).
    #[arg(long, value_enum, default_value_t = crate::node::api::Api::Microstream)]
    pub api: crate::node::api::Api,
    /// Simulated replication lag of the nodes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub lag: Duration,
    /// Directory holding rw-proxy and writer-election (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Also fail when the client-seen failover time is longer than this.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_failover_time: Option<Duration>,
    /// Write the client's write history (JSON lines) here.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Keep the cluster's directory (configs, shared log, child logs) and print where it is.
    #[arg(long)]
    pub keep_dir: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl FailoverArgs {
    pub fn fault(&self) -> Fault {
        let f = &self.fault;
        if f.kill.is_some() {
            Fault::Kill
        } else if f.hang.is_some() {
            Fault::Hang
        } else if f.unready.is_some() {
            Fault::Unready
        } else if f.demote.is_some() {
            Fault::Demote
        } else {
            Fault::Switchover
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WriterRef {
    pub name: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadBack {
    /// Acknowledged writes checked.
    pub checked: u64,
    /// node -> acknowledged writes missing or different there after catch-up.
    pub missing_on_node: std::collections::BTreeMap<String, u64>,
    /// Acknowledged writes the proxy could not return (with X-Consistency: strong).
    pub missing_via_proxy: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub scenario: Fault,
    pub topology_mode: &'static str,
    pub passed: bool,
    pub failures: Vec<String>,
    pub old_writer: WriterRef,
    pub new_writer: Option<WriterRef>,
    pub fault_at_ms: f64,
    /// Fault -> a topology with another writer seen on /v1/topology.
    pub election_publish_ms: Option<f64>,
    pub fault_response: Option<String>,
    pub analysis: Analysis,
    pub read_back: ReadBack,
    pub read_errors: std::collections::BTreeMap<String, u64>,
    /// The pairs that carried the read-your-writes token (absent with --token-pair-rate 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_reads: Option<run::pairs::PairReport>,
    pub proxy_metrics: Vec<String>,
    pub load: RunReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_dir: Option<String>,
}

pub(crate) fn ms_between(a: Instant, b: Instant) -> f64 {
    let d = if b >= a { b - a } else { Duration::ZERO };
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub async fn main(args: FailoverArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    if !(args.token_pair_rate >= 0.0 && args.token_pair_rate.is_finite()) {
        bail!(
            "--token-pair-rate {}: must be 0 (none) or a positive number of pairs per second",
            args.token_pair_rate
        );
    }
    if args.fault_after >= args.duration {
        bail!(
            "--fault-after {:?} must be shorter than --duration {:?}",
            args.fault_after,
            args.duration
        );
    }
    if let Some(p) = args.fault.partition {
        return partition::main(args, p, log_format).await;
    }
    let fault = args.fault();
    let opts = ClusterOptions {
        nodes: args.nodes,
        api: args.api,
        bin_dir: args.bin_dir.clone(),
        node_args: if args.lag.is_zero() {
            vec![]
        } else {
            vec![
                "--lag".into(),
                humantime::format_duration(args.lag).to_string(),
            ]
        },
        log_format,
        read_your_writes: true,
        ..ClusterOptions::default()
    };
    if args.nodes < 2 {
        bail!("--nodes {}: a failover needs at least 2 nodes", args.nodes);
    }
    eprintln!(
        "failover {}: starting a {}-node cluster ...",
        fault.as_str(),
        args.nodes
    );
    let mut cluster = Cluster::start(&opts).await?;
    let result = scenario(&args, fault, &mut cluster).await;
    tokio::task::block_in_place(|| cluster.stop(Duration::from_secs(10)));
    let kept = if args.keep_dir {
        let path = cluster.dir.keep();
        Some(path.display().to_string())
    } else {
        None
    };
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(k) = &kept {
                eprintln!("cluster files kept in {k}");
            }
            return Err(e);
        }
    };
    report.kept_dir = kept;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(if report.passed { 0 } else { 1 })
}

async fn scenario(
    args: &FailoverArgs,
    fault: Fault,
    cluster: &mut Cluster,
) -> anyhow::Result<FailoverReport> {
    let first = cluster.topology().await?;
    let Some(old) = first.writer.clone() else {
        bail!("writer-election has no writer before the fault");
    };
    let old_writer = WriterRef {
        name: old.name.clone(),
        epoch: first.epoch,
    };

    // Topology timeline, to see when the election published the new writer.
    let timeline: Arc<Mutex<Vec<(Instant, Topology)>>> = Arc::default();
    let follower = {
        let timeline = timeline.clone();
        tokio::spawn(crate::topo::follow(
            cluster.election_url.clone(),
            move |_, t| {
                if let Ok(mut v) = timeline.lock() {
                    v.push((Instant::now(), t.clone()));
                }
            },
        ))
    };

    let cfg = LoadConfig {
        target: run::parse_target(&cluster.proxy_url).await?,
        mode: Mode::Open {
            rate: args.rate,
            connections: 64,
        },
        duration: args.duration,
        read_ratio: args.read_ratio,
        keys: 1000,
        value_size: 64,
        timeout: args.timeout,
        headers: vec![],
        unique_write_keys: true,
        record_history: true,
        progress: false,
    };
    let start = Instant::now();
    let pairs = (args.token_pair_rate > 0.0).then(|| {
        let mut pc = run::pairs::PairConfig::new(run::pairs::TokenUse::On);
        pc.read_delay = run::pairs::ReadDelay {
            min: Duration::ZERO,
            max: args.token_read_delay,
        };
        let pair_load = LoadConfig {
            mode: Mode::Open {
                rate: args.token_pair_rate,
                connections: 16,
            },
            ..cfg.clone()
        };
        tokio::spawn(run::execute_with(
            pair_load,
            Some(pc),
            cluster.proxy_url.clone(),
            start,
        ))
    });
    let load = tokio::spawn(run::execute_at(cfg, cluster.proxy_url.clone(), start));

    tokio::time::sleep_until(start + args.fault_after).await;
    let fault_at = Instant::now();
    let fault_response = inject(fault, cluster, &old.name).await?;
    let gone_at = match fault {
        Fault::Kill => wait_gone(cluster, &old.name).await,
        _ => fault_at,
    };
    tracing::info!(fault = fault.as_str(), writer = %old.name, "fault injected");

    if fault == Fault::Hang {
        tokio::time::sleep_until(start + args.duration).await;
        cluster.group.signal(&old.name, SIGCONT)?;
        tracing::info!(writer = %old.name, "SIGCONT");
    }
    let mut outcome = load.await.context("the load task failed")?;
    let token_reads = match pairs {
        Some(p) => {
            let o = p.await.context("the token pairs task failed")?;
            // The pairs' writes are writes like any other: the same no-loss checks apply.
            outcome.history.extend(o.history);
            outcome.history.sort_by_key(|r| (r.intended_us, r.worker));
            o.report.read_your_writes
        }
        None => None,
    };
    follower.abort();

    let new_topology = timeline.lock().ok().and_then(|v| {
        v.iter()
            .find(|(t, topo)| {
                *t >= fault_at && topo.writer.as_ref().is_some_and(|w| w.name != old.name)
            })
            .cloned()
    });
    let current = cluster.topology().await.ok();
    let new_writer = current
        .as_ref()
        .and_then(|t| t.writer.as_ref().map(|w| (w.name.clone(), t.epoch)))
        .filter(|(n, _)| *n != old.name)
        .map(|(name, epoch)| WriterRef { name, epoch });

    // Let every live node apply the whole log before reading back from it.
    let lines = read_all(&cluster.stream_log).context("reading the shared log")?;
    let live: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| !(fault == Fault::Kill && n.name == old.name))
        .cloned()
        .collect();
    for n in &live {
        wait_caught_up(&cluster.client, &n.url, lines.len() as u64).await?;
    }

    let fault_us = (fault_at - start).as_micros() as u64;
    let gone_us = (gone_at - start).as_micros() as u64;
    let analysis = check::analyze(&outcome.history, &lines, fault_us, gone_us, &old.name);
    let read_back = read_back(&cluster.client, &cluster.proxy_url, &live, &outcome.history).await;

    let mut failures = check::failures(fault, &analysis, &old.name);
    if let Some(t) = &token_reads {
        failures.extend(token_read_failures(&t.stats));
    }
    for (node, missing) in &read_back.missing_on_node {
        if *missing > 0 {
            failures.push(format!(
                "{missing} acknowledged writes missing or different on {node} after catch-up"
            ));
        }
    }
    if read_back.missing_via_proxy > 0 {
        failures.push(format!(
            "{} acknowledged writes not returned through rw-proxy",
            read_back.missing_via_proxy
        ));
    }
    if let (Some(max), Some(got)) = (args.max_failover_time, analysis.client_failover_ms) {
        if got > max.as_secs_f64() * 1000.0 {
            failures.push(format!(
                "client-seen failover took {got} ms, over --max-failover-time {max:?}"
            ));
        }
    }
    if fault == Fault::Switchover {
        if let Some(r) = &fault_response {
            if !r.starts_with("HTTP 2") {
                failures.push(format!("POST /v1/switchover answered {r}"));
            }
        }
    }
    if cluster.topology_mode == TopologyMode::Static {
        failures.push(
            "rw-proxy ran with a static topology (it does not accept topology.election_url \
             yet): writer changes cannot reach it, so this run says nothing about failover"
                .into(),
        );
    }
    if let Some(path) = &args.history {
        run::history::write_jsonl(path, &outcome.history)?;
    }
    let proxy_metrics = proxy_metrics(cluster).await;
    let read_errors = read_errors(&outcome.report, &analysis);

    Ok(FailoverReport {
        scenario: fault,
        topology_mode: match cluster.topology_mode {
            TopologyMode::Election => "election",
            TopologyMode::Static => "static",
        },
        passed: failures.is_empty(),
        failures,
        old_writer,
        new_writer,
        fault_at_ms: ms_between(start, fault_at),
        election_publish_ms: new_topology.map(|(t, _)| ms_between(fault_at, t)),
        fault_response,
        analysis,
        read_back,
        read_errors,
        token_reads,
        proxy_metrics,
        load: outcome.report,
        kept_dir: None,
    })
}

/// A token read that misses the write before it breaks read-your-writes; so does a run whose
/// token pairs checked nothing (then the check proved nothing).
pub(crate) fn token_read_failures(p: &run::pairs::PairStats) -> Vec<String> {
    let mut f = Vec::new();
    if p.stale > 0 {
        f.push(format!(
            "{} of {} reads carrying a read-your-writes token did not return the write before \
             them (e.g. {})",
            p.stale,
            p.checked,
            p.stale_examples
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if p.checked == 0 {
        f.push("no read carrying a read-your-writes token was answered: nothing checked".into());
    }
    f
}

/// The run counts errors of reads and writes together; the history has the write ones.
pub(crate) fn read_errors(r: &RunReport, a: &Analysis) -> std::collections::BTreeMap<String, u64> {
    r.errors
        .iter()
        .map(|(k, v)| {
            let writes = a.writes.failed_by_kind.get(k).copied().unwrap_or(0);
            (k.clone(), v.saturating_sub(writes))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Injects the fault; returns what the target answered, when it is an HTTP call.
async fn inject(fault: Fault, cluster: &Cluster, writer: &str) -> anyhow::Result<Option<String>> {
    match fault {
        Fault::Kill => {
            cluster.group.signal(writer, SIGKILL)?;
            Ok(None)
        }
        Fault::Hang => {
            cluster.group.signal(writer, SIGSTOP)?;
            Ok(None)
        }
        Fault::Unready => {
            let node = cluster
                .node(writer)
                .with_context(|| format!("the writer {writer} is not one of our nodes"))?;
            let r = cluster
                .client
                .post(&format!("{}/admin/ready", node.url), "false")
                .await?;
            Ok(Some(format!("HTTP {} {}", r.status, r.text())))
        }
        Fault::Demote => {
            let node = cluster
                .node(writer)
                .with_context(|| format!("the writer {writer} is not one of our nodes"))?;
            let r = cluster
                .client
                .post(&format!("{}/admin/demote", node.url), "")
                .await?;
            Ok(Some(format!("HTTP {} {}", r.status, r.text())))
        }
        Fault::Switchover => {
            let auth = format!("Bearer {}", cluster.token);
            // A switchover answers only after the proxies drained and the new writer was
            // promoted: longer than the cluster client's 5 s.
            let r = crate::httpc::HttpClient::new(Duration::from_secs(60))
                .send(
                    http::Method::POST,
                    &format!("{}/v1/switchover", cluster.election_url),
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    "{}",
                )
                .await?;
            Ok(Some(format!("HTTP {} {}", r.status, r.text())))
        }
    }
}

/// When a SIGKILLed child has really exited (a zombie, its sockets closed by the kernel), polled
/// every millisecond for at most 5 s; the signal alone does not close its connections.
async fn wait_gone(cluster: &Cluster, name: &str) -> Instant {
    let Some(pid) = cluster.group.get(name).map(|c| c.pid()) else {
        return Instant::now();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let stat = format!("/proc/{pid}/stat");
    while Instant::now() < deadline {
        match std::fs::read_to_string(&stat) {
            // Field 3, after the parenthesised command name, is the state: Z (zombie) or X (dead).
            Ok(text) => match text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
            {
                // The leader thread turns zombie while the others may still be exiting, with
                // the node's sockets still open: gone means no other thread is left, so a
                // write sent from now on cannot reach the node's connections any more.
                Some('Z') | Some('X') | None if threads_left(pid) <= 1 => break,
                _ => {}
            },
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Instant::now()
}

/// Threads of `pid` still listed under /proc (0 once it is reaped).
fn threads_left(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

pub(crate) async fn wait_caught_up(
    client: &crate::httpc::HttpClient,
    url: &str,
    lines: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offset = client
            .get(&format!("{url}/replication/offset"))
            .await
            .ok()
            .and_then(|r| r.json().ok())
            .and_then(|v| v["offset"].as_u64());
        if offset.is_some_and(|o| o >= lines) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{url} did not apply the {lines} log lines within 30s (offset {offset:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every acknowledged write back from every live node and through the proxy.
pub(crate) async fn read_back(
    client: &crate::httpc::HttpClient,
    proxy_url: &str,
    live: &[crate::cluster::NodeInfo],
    history: &[WriteRecord],
) -> ReadBack {
    let acked: Vec<&WriteRecord> = history.iter().filter(|h| h.acked()).collect();
    let mut rb = ReadBack {
        checked: acked.len() as u64,
        ..ReadBack::default()
    };
    // (name, base URL, extra headers)
    type ReadTarget = (String, String, Vec<(&'static str, &'static str)>);
    let mut targets: Vec<ReadTarget> = live
        .iter()
        .map(|n| (n.name.clone(), n.url.clone(), vec![]))
        .collect();
    targets.push((
        "rw-proxy".into(),
        proxy_url.to_owned(),
        vec![("X-Consistency", "strong")],
    ));
    for (name, base, headers) in targets {
        let results: Vec<Option<String>> = futures::stream::iter(acked.iter().map(|h| {
            let url = format!("{base}/kv/{}", h.key);
            let headers = headers.clone();
            async move {
                match client.send(http::Method::GET, &url, &headers, "").await {
                    Ok(r) if r.status == 200 && r.body == h.value.as_bytes() => None,
                    Ok(r) => Some(format!("{}: HTTP {}", h.key, r.status)),
                    Err(e) => Some(format!("{}: {e}", h.key)),
                }
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
        let bad: Vec<String> = results.into_iter().flatten().collect();
        for b in bad.iter().take(3) {
            rb.examples.push(format!("{name}: {b}"));
        }
        if name == "rw-proxy" {
            rb.missing_via_proxy = bad.len() as u64;
        } else {
            rb.missing_on_node.insert(name, bad.len() as u64);
        }
    }
    rb
}

async fn proxy_metrics(cluster: &Cluster) -> Vec<String> {
    let Ok(r) = cluster
        .client
        .get(&format!("{}/metrics", cluster.admin_url))
        .await
    else {
        return vec![];
    };
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.contains("held")
                || l.contains("hold")
                || l.contains("upstream_errors")
                || l.contains("refusals")
                || l.starts_with("rw_proxy_writer_epoch")
                || l.starts_with("rw_proxy_topology_updates_total")
                || l.starts_with("rw_proxy_read_your_writes")
                || l.starts_with("rw_proxy_lagging_readers")
        })
        .map(str::to_owned)
        .collect()
}

/// `old (epoch N) -> new (epoch M)`, or `-> unchanged`.
pub(crate) fn writer_change(old: &WriterRef, new: Option<&WriterRef>) -> String {
    format!(
        "{} (epoch {}) -> {}",
        old.name,
        old.epoch,
        new.map(|n| format!("{} (epoch {})", n.name, n.epoch))
            .unwrap_or_else(|| "unchanged".into())
    )
}

/// The rows every failover report shares: the write history, the log and the read-back.
pub(crate) fn history_rows(
    a: &Analysis,
    read_errors: &std::collections::BTreeMap<String, u64>,
    read_back: &ReadBack,
    load: &RunReport,
    row: &mut dyn FnMut(&str, String),
) {
    let w = &a.writes;
    row(
        "writes sent / acked / failed",
        format!("{} / {} / {}", w.sent, w.acked, w.failed),
    );
    row("failed writes by kind", format!("{:?}", w.failed_by_kind));
    row(
        "writes in flight at the fault",
        w.in_flight_at_fault.to_string(),
    );
    row(
        "held writes (max hold)",
        format!("{} ({} ms)", w.held, w.max_held_ms),
    );
    row("read errors by kind", format!("{read_errors:?}"));
    row(
        "acked writes lost (must be 0)",
        a.lost_acked_writes.to_string(),
    );
    row(
        "epochs on two nodes (must be 0)",
        a.log.epochs_on_two_nodes.len().to_string(),
    );
    row(
        "epoch regressions in log",
        a.log.epoch_regressions.to_string(),
    );
    row("epochs by node", format!("{:?}", a.log.epochs_by_node));
    row(
        "read-back missing (nodes, proxy)",
        format!(
            "{:?}, {}",
            read_back.missing_on_node, read_back.missing_via_proxy
        ),
    );
    row(
        "load",
        format!(
            "{} requests, {:.0} req/s, write p99 {}, max {}",
            load.requests,
            load.requests_per_s,
            crate::run::stats::fmt_us(load.latency.write.p99_us),
            crate::run::stats::fmt_us(load.latency.write.max_us)
        ),
    );
}

/// PASS, or FAIL and one line per broken rule.
pub(crate) fn verdict(s: &mut String, passed: bool, failures: &[String]) {
    use std::fmt::Write;
    if passed {
        let _ = writeln!(s, "PASS");
    } else {
        let _ = writeln!(s, "FAIL");
        for f in failures {
            let _ = writeln!(s, "  - {f}");
        }
    }
}

pub fn render_text(r: &FailoverReport) -> String {
    use std::fmt::Write;
    let a = &r.analysis;
    let opt = |v: Option<f64>| v.map(|x| format!("{x} ms")).unwrap_or_else(|| "-".into());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "failover scenario: {} writer ({}), topology: {}",
        r.scenario.as_str(),
        r.old_writer.name,
        r.topology_mode
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<34} {v}");
    };
    row(
        "writer before -> after",
        writer_change(&r.old_writer, r.new_writer.as_ref()),
    );
    row("fault at", format!("{} ms into the load", r.fault_at_ms));
    if let Some(resp) = &r.fault_response {
        row("fault call answered", resp.clone());
    }
    row("election published new writer", opt(r.election_publish_ms));
    row("client-seen failover time", opt(a.client_failover_ms));
    history_rows(a, &r.read_errors, &r.read_back, &r.load, &mut row);
    if let Some(t) = &r.token_reads {
        let st = &t.stats;
        row(
            "stale token reads (must be 0)",
            format!(
                "{} of {} checked ({} read errors, reads by node {:?})",
                st.stale, st.checked, st.read_failed, st.reads_by_node
            ),
        );
    }
    if let Some(k) = &r.kept_dir {
        row("cluster files", k.clone());
    }
    verdict(&mut s, r.passed, &r.failures);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_token_read_or_none_checked_fails_the_run() {
        let clean = run::pairs::PairStats {
            checked: 10,
            fresh: 10,
            ..Default::default()
        };
        assert!(token_read_failures(&clean).is_empty());
        let stale = run::pairs::PairStats {
            checked: 10,
            fresh: 9,
            stale: 1,
            stale_examples: vec!["p1: node-2 answered 404".into()],
            ..Default::default()
        };
        let f = token_read_failures(&stale);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("1 of 10") && f[0].contains("node-2"), "{f:?}");
        let none = run::pairs::PairStats::default();
        assert!(token_read_failures(&none)[0].contains("nothing checked"));
    }
}
