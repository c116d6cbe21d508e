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
pub mod report;
pub mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{Cluster, TopologyMode};
use crate::logging::LogFormat;
use crate::procs::{SIGCONT, SIGKILL, SIGSTOP};
use crate::run::{self, LoadConfig, Mode, RunReport};
pub use check::ReadBack;
use check::{Analysis, Fault};
pub use report::WriterRef;
use report::{ms_between, opt_ms, row};
use scenario::Watch;

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
    /// stale read among them fails the run. 0: none. Not sent with --partition.
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
    pub read_errors: BTreeMap<String, u64>,
    /// The pairs that carried the read-your-writes token (absent with --token-pair-rate 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_reads: Option<run::pairs::PairReport>,
    pub proxy_metrics: Vec<String>,
    pub load: RunReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_dir: Option<String>,
}

pub async fn main(args: FailoverArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    scenario::validate(&args)?;
    if let Some(p) = args.fault.partition {
        return partition::main(args, p, log_format).await;
    }
    let fault = args.fault();
    let opts = crate::cluster::ClusterOptions {
        read_your_writes: true,
        ..scenario::cluster_options(&args, log_format)
    };
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
    report::print(args.json, &report, report.passed, render_text)
}

async fn scenario(
    args: &FailoverArgs,
    fault: Fault,
    cluster: &mut Cluster,
) -> anyhow::Result<FailoverReport> {
    // Topology timeline, to see when the election published the new writer.
    let watch = Watch::start(cluster).await?;
    let old = watch.old_writer.clone();

    let cfg = scenario::load_config(args, run::parse_target(&cluster.proxy_url).await?);
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
    // `None`: a killed writer that still had threads when the wait ended.
    let gone_at = match fault {
        Fault::Kill => wait_gone(cluster, &old.name).await,
        _ => Some(fault_at),
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
    let timeline = watch.stop();
    let publish = scenario::first_publication(&timeline, fault_at, &old.name);
    let current = cluster.topology().await.ok();
    let new_writer = current
        .as_ref()
        .and_then(|t| t.writer.as_ref().map(|w| (w.name.clone(), t.epoch)))
        .filter(|(n, _)| *n != old.name)
        .map(|(name, epoch)| WriterRef { name, epoch });

    // Let every live node apply the whole log before reading back from it.
    let live: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| !(fault == Fault::Kill && n.name == old.name))
        .cloned()
        .collect();
    let (lines, read_back) = scenario::settle(cluster, &live, &outcome.history).await?;

    let fault_us = (fault_at - start).as_micros() as u64;
    let gone_us = (gone_at.unwrap_or(fault_at + GONE_WAIT) - start).as_micros() as u64;
    let analysis = check::analyze(&outcome.history, &lines, fault_us, gone_us, &old.name);

    let mut failures = check::failures(fault, &analysis, &old.name);
    if gone_at.is_none() {
        // Every write sent while it lingered would count as in flight at the kill, so the
        // "more failed writes than in flight" rule could not fail: say so instead.
        failures.push(format!(
            "the killed writer {} still had threads {GONE_WAIT:?} after SIGKILL: which writes \
             were in flight at the kill is unknown",
            old.name
        ));
    }
    if let Some(t) = &token_reads {
        failures.extend(check::token_read_failures(&t.stats));
    }
    failures.extend(check::read_back_failures(&read_back));
    failures.extend(check::failover_time_failure(
        args.max_failover_time,
        analysis.client_failover_ms,
    ));
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
    let read_errors = check::read_errors(&outcome.report.errors, &analysis);

    Ok(FailoverReport {
        scenario: fault,
        topology_mode: match cluster.topology_mode {
            TopologyMode::Election => "election",
            TopologyMode::Static => "static",
        },
        passed: failures.is_empty(),
        failures,
        old_writer: old,
        new_writer,
        fault_at_ms: ms_between(start, fault_at),
        election_publish_ms: publish.map(|t| ms_between(fault_at, t)),
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

/// Injects the fault; returns what the target answered, when it is an HTTP call.
async fn inject(fault: Fault, cluster: &Cluster, writer: &str) -> anyhow::Result<Option<String>> {
    let admin = |path: &'static str, body: &'static str| async move {
        let node = cluster
            .node(writer)
            .with_context(|| format!("the writer {writer} is not one of our nodes"))?;
        cluster
            .client
            .post(&format!("{}{path}", node.url), body)
            .await
    };
    let r = match fault {
        Fault::Kill => {
            cluster.group.signal(writer, SIGKILL)?;
            return Ok(None);
        }
        Fault::Hang => {
            cluster.group.signal(writer, SIGSTOP)?;
            return Ok(None);
        }
        Fault::Unready => admin("/admin/ready", "false").await?,
        Fault::Demote => admin("/admin/demote", "").await?,
        Fault::Switchover => cluster.switchover().await?,
    };
    Ok(Some(format!("HTTP {} {}", r.status, r.text())))
}

/// How long a SIGKILLed writer may take to be gone before the run says it cannot judge the kill.
const GONE_WAIT: Duration = Duration::from_secs(5);

/// When a SIGKILLed child has really exited (a zombie, its sockets closed by the kernel), polled
/// every millisecond for at most [`GONE_WAIT`] (`None` if it was not gone by then); the signal
/// alone does not close its connections.
async fn wait_gone(cluster: &Cluster, name: &str) -> Option<Instant> {
    let Some(pid) = cluster.group.get(name).map(|c| c.pid()) else {
        return Some(Instant::now());
    };
    let deadline = Instant::now() + GONE_WAIT;
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
                Some('Z') | Some('X') | None if threads_left(pid) <= 1 => {
                    return Some(Instant::now())
                }
                _ => {}
            },
            Err(_) => return Some(Instant::now()),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Threads of `pid` still listed under /proc (0 once it is reaped).
fn threads_left(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
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

pub fn render_text(r: &FailoverReport) -> String {
    use std::fmt::Write;
    let a = &r.analysis;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "failover scenario: {} writer ({}), topology: {}",
        r.scenario.as_str(),
        r.old_writer.name,
        r.topology_mode
    );
    row(
        &mut s,
        "writer before -> after",
        report::writer_change(&r.old_writer, r.new_writer.as_ref()),
    );
    row(
        &mut s,
        "fault at",
        format!("{} ms into the load", r.fault_at_ms),
    );
    if let Some(resp) = &r.fault_response {
        row(&mut s, "fault call answered", resp.clone());
    }
    row(
        &mut s,
        "election published new writer",
        opt_ms(r.election_publish_ms),
    );
    row(
        &mut s,
        "client-seen failover time",
        opt_ms(a.client_failover_ms),
    );
    report::history_rows(&mut s, a, &r.read_errors, &r.read_back, &r.load);
    if let Some(t) = &r.token_reads {
        let st = &t.stats;
        row(
            &mut s,
            "stale token reads (must be 0)",
            format!(
                "{} of {} checked ({} read errors, reads by node {:?})",
                st.stale, st.checked, st.read_failed, st.reads_by_node
            ),
        );
    }
    report::verdict(&mut s, r.kept_dir.as_deref(), r.passed, &r.failures);
    s
}
