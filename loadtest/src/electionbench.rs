//! `loadtest election-bench`: writer-election's CPU and memory while it probes many nodes, with
//! and without progress rounds (`--progress off,on`: `election.progress`, every ready node's
//! replication offset read once per round and published as `replication`).
//! The nodes are simulated by this process: one listener per node on 127.0.0.1, answering
//! the MicroStream API's readiness probe and promotion calls and the progress endpoint
//! (`/replication/offset`), whose offset moves all the time (one per millisecond) with each
//! node a little behind the one before, so every round publishes a new measurement.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::json;

use crate::cluster::{log_tail, promotion_config, Binaries};
use crate::httpc::HttpClient;
use crate::logging::LogFormat;
use crate::node::api::Api;
use crate::procs::{free_port, Group};

#[derive(clap::Args, Debug, Clone)]
pub struct ElectionBenchArgs {
    /// Node counts to measure, one writer-election run each.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub nodes: Vec<usize>,
    /// Measured time per run (after the first election).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// probe.interval given to writer-election (the default of the election config is 1s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub probe_interval: Duration,
    /// Progress rounds off and/or on (`election.progress`), one run each per node count.
    #[arg(long, value_delimiter = ',', default_value = "off")]
    pub progress: Vec<ProgressMode>,
    /// election.progress.interval with `--progress on` (default: the probe interval).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub progress_interval: Option<Duration>,
    /// Directory holding writer-election (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    Off,
    On,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElectionBenchResult {
    pub nodes: usize,
    pub probe_interval_ms: u64,
    pub progress: ProgressMode,
    /// election.progress.interval in effect (progress on).
    pub progress_interval_ms: Option<u64>,
    pub duration_s: f64,
    /// CPU time used / wall time, in % of one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// From writer_election_probe_duration_seconds, when exported.
    pub probes: Option<u64>,
    pub mean_probe_ms: Option<f64>,
    /// From writer_election_progress_round_seconds (progress on).
    pub progress_rounds: Option<u64>,
    pub mean_round_ms: Option<f64>,
    /// Revisions of /v1/topology published during the measured time.
    pub revisions: u64,
    /// Size of one /v1/topology answer at the end.
    pub topology_bytes: usize,
}

/// (utime + stime) clock ticks of `pid`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = process(pid)?.stat().ok()?;
    Some(stat.utime + stat.stime)
}

/// VmRSS and VmHWM of `pid`, KiB; 0 for what cannot be read.
fn rss_and_peak_kib(pid: u32) -> (u64, u64) {
    match process(pid).and_then(|p| p.status().ok()) {
        Some(s) => (s.vmrss.unwrap_or(0), s.vmhwm.unwrap_or(0)),
        None => (0, 0),
    }
}

fn process(pid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()
}

/// Sum and count of a Prometheus histogram in a /metrics text.
pub fn histogram_sum_count(text: &str, name: &str) -> Option<(f64, u64)> {
    let value = |suffix: &str| -> Option<f64> {
        let prefix = format!("{name}{suffix}");
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with(&prefix) && l[prefix.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total)
    };
    let count = value("_count")? as u64;
    if count == 0 {
        return None;
    }
    Some((value("_sum")?, count))
}

/// The offset simulated node `i` reports `elapsed` after the fleet started: one per millisecond,
/// each node 10 ms further behind than the one before, in ten steps (node 0, the writer elected
/// by name, is level).
pub fn simulated_offset(i: usize, elapsed: Duration) -> u64 {
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    ms.saturating_sub((i % 10) as u64 * 10)
}

async fn start_fleet(n: usize) -> anyhow::Result<(Vec<String>, Vec<tokio::task::JoinHandle<()>>)> {
    // The storage node API (readiness, and the promotion the first election runs), so the
    // election runs with the preset it has in production. Every node says it is not the
    // distributor yet and promotes at once.
    let api = Api::Microstream;
    let started = Arc::new(Instant::now());
    let base = Router::new()
        .route(&api.ready_path(), get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
        .route(&api.distributor_path(), get(|| async { "false" }))
        .route(&api.start_path(), post(|| async { "" }))
        .route(&api.finish_path(), post(|| async { "true" }));
    let mut addrs = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a simulated node")?;
        addrs.push(l.local_addr()?.to_string());
        let started = started.clone();
        let app = base.clone().route(
            "/replication/offset",
            get(move || async move {
                axum::Json(json!({"offset": simulated_offset(i, started.elapsed())}))
            }),
        );
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        }));
    }
    Ok((addrs, tasks))
}

/// The revision and the number of nodes in `replication` of a /v1/topology answer.
fn revision_and_measured(doc: &serde_json::Value) -> (u64, usize) {
    let revision = doc["revision"].as_u64().unwrap_or(0);
    let measured = doc["replication"]["nodes"]
        .as_array()
        .map_or(0, |nodes| nodes.len());
    (revision, measured)
}

async fn one_run(
    args: &ElectionBenchArgs,
    bin: &Path,
    n: usize,
    progress: ProgressMode,
    log_format: LogFormat,
) -> anyhow::Result<ElectionBenchResult> {
    let dir = tempfile::Builder::new()
        .prefix("loadtest-election-bench-")
        .tempdir()?;
    let (addrs, fleet) = start_fleet(n).await?;
    let port = free_port()?;
    let progress_interval = args.progress_interval.unwrap_or(args.probe_interval);
    let mut election = json!({});
    if progress == ProgressMode::On {
        election["progress"] = json!({
            "path": "/replication/offset",
            "json_pointer": "/offset",
            "interval": format!("{}ms", progress_interval.as_millis()),
        });
    }
    let cfg = json!({
        "listen": format!("127.0.0.1:{port}"),
        "discovery": {"static": {"nodes": addrs.iter().enumerate()
            .map(|(i, a)| json!({"name": format!("node-{i:04}"), "address": a}))
            .collect::<Vec<_>>()}},
        "probe": {"interval": format!("{}ms", args.probe_interval.as_millis())},
        "promotion": promotion_config(Api::Microstream),
        "election": election,
        "state": {"file": dir.path().join("state.json")}
    });
    let cfg_path = dir.path().join("election.yaml");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
    let log = dir.path().join("writer-election.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--log-format")
        .arg(log_format.as_str())
        .arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut group = Group::new();
    let pid = group.spawn("writer-election", cmd)?;
    let client = HttpClient::new(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    // Measured from the first election on; with progress, from the first round that read every
    // node.
    loop {
        let doc: Option<serde_json::Value> = client
            .get(&format!("{url}/v1/topology"))
            .await
            .ok()
            .and_then(|r| r.json().ok());
        let settled = doc.as_ref().is_some_and(|v| {
            v["writer"].is_object()
                && (progress == ProgressMode::Off || revision_and_measured(v).1 == n)
        });
        if settled {
            break;
        }
        if let Some((_, st)) = group.reap().into_iter().next() {
            bail!("writer-election exited ({st}):\n{}", log_tail(&log, 20));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no writer elected (or, with progress, not every node measured) among {n} nodes within 120s:\n{}",
                log_tail(&log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A proxy's view: one blocking query after another, counting the revisions it is woken for.
    let watched = Arc::new(AtomicU64::new(0));
    let watcher = {
        let client = HttpClient::new(Duration::from_secs(40));
        let url = url.clone();
        let watched = watched.clone();
        tokio::spawn(async move {
            let mut revision = 0u64;
            let mut seen = 0u64;
            loop {
                let q = if revision == 0 {
                    format!("{url}/v1/topology")
                } else {
                    format!("{url}/v1/topology?after={revision}&wait=30s")
                };
                let Some(doc) = client.get(&q).await.ok().and_then(|r| r.json().ok()) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (r, _) = revision_and_measured(&doc);
                if revision != 0 && r != revision {
                    seen += 1;
                }
                revision = r;
                watched.store(seen, Ordering::Relaxed);
            }
        })
    };
    let before = cpu_ticks(pid).context("reading writer-election's CPU time")?;
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(args.duration).await;
    let after = cpu_ticks(pid).context("reading writer-election's CPU time")?;
    watcher.abort();
    let revisions = watched.load(Ordering::Relaxed);
    let topology_bytes = client
        .get(&format!("{url}/v1/topology"))
        .await
        .map(|r| r.text().len())
        .unwrap_or(0);
    let wall = t0.elapsed().as_secs_f64();
    let tck = procfs::ticks_per_second().max(1) as f64;
    let (rss, peak) = rss_and_peak_kib(pid);
    let metrics = client
        .get(&format!("{url}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    let probe = histogram_sum_count(&metrics, "writer_election_probe_duration_seconds");
    let rounds = histogram_sum_count(&metrics, "writer_election_progress_round_seconds");
    tokio::task::block_in_place(|| group.shutdown(Duration::from_secs(10)));
    for t in fleet {
        t.abort();
    }
    Ok(ElectionBenchResult {
        nodes: n,
        probe_interval_ms: args.probe_interval.as_millis() as u64,
        progress,
        progress_interval_ms: (progress == ProgressMode::On)
            .then_some(progress_interval.as_millis() as u64),
        duration_s: (wall * 10.0).round() / 10.0,
        cpu_percent: ((after - before) as f64 / tck / wall * 1000.0).round() / 10.0,
        rss_kib: rss,
        peak_rss_kib: peak,
        probes: probe.map(|(_, c)| c),
        mean_probe_ms: probe.map(|(s, c)| (s / c as f64 * 1e6).round() / 1000.0),
        progress_rounds: rounds.map(|(_, c)| c),
        mean_round_ms: rounds.map(|(s, c)| (s / c as f64 * 1e6).round() / 1000.0),
        revisions,
        topology_bytes,
    })
}

pub async fn main(args: ElectionBenchArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    let mut results = Vec::new();
    for &n in &args.nodes {
        if n == 0 {
            bail!("--nodes: every count must be at least 1");
        }
        for &progress in &args.progress {
            eprintln!(
                "writer-election probing {n} simulated nodes for {:?}, progress {progress:?} ...",
                args.duration
            );
            results.push(one_run(&args, &bins.writer_election, n, progress, log_format).await?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{:>6} {:>9} {:>9} {:>8} {:>10} {:>10} {:>9} {:>10} {:>7} {:>9} {:>6} {:>9}",
            "nodes",
            "interval",
            "progress",
            "cpu %",
            "rss KiB",
            "peak KiB",
            "probes",
            "probe ms",
            "rounds",
            "round ms",
            "revs",
            "doc bytes"
        );
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        for r in &results {
            println!(
                "{:>6} {:>7}ms {:>9} {:>8.1} {:>10} {:>10} {:>9} {:>10} {:>7} {:>9} {:>6} {:>9}",
                r.nodes,
                r.probe_interval_ms,
                opt(r.progress_interval_ms.map(|i| format!("{i}ms"))),
                r.cpu_percent,
                r.rss_kib,
                r.peak_rss_kib,
                r.probes
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.mean_probe_ms
                    .map(|p| format!("{p:.3}"))
                    .unwrap_or_else(|| "-".into()),
                opt(r.progress_rounds.map(|c| c.to_string())),
                opt(r.mean_round_ms.map(|m| format!("{m:.3}"))),
                r.revisions,
                r.topology_bytes
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_histogram_sum_and_count_across_labels() {
        let text = "# HELP x\nwriter_election_probe_duration_seconds_bucket{le=\"0.1\"} 3\n\
                    writer_election_probe_duration_seconds_sum{node=\"a\"} 0.5\n\
                    writer_election_probe_duration_seconds_sum{node=\"b\"} 1.5\n\
                    writer_election_probe_duration_seconds_count{node=\"a\"} 10\n\
                    writer_election_probe_duration_seconds_count{node=\"b\"} 30\n";
        let (sum, count) =
            histogram_sum_count(text, "writer_election_probe_duration_seconds").unwrap();
        assert_eq!(count, 40);
        assert!((sum - 2.0).abs() < 1e-9);
        assert_eq!(histogram_sum_count("", "x"), None);
    }

    #[test]
    fn simulated_nodes_trail_the_writer_in_ten_steps() {
        let t = Duration::from_secs(5);
        assert_eq!(simulated_offset(0, t), 5000);
        assert_eq!(simulated_offset(3, t), 4970);
        assert_eq!(simulated_offset(13, t), 4970);
        assert_eq!(simulated_offset(9, Duration::from_millis(20)), 0);
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn memory_of_this_process() {
        let (rss, peak) = rss_and_peak_kib(std::process::id());
        assert!(rss > 0 && peak >= rss, "VmRSS {rss} KiB, VmHWM {peak} KiB");
    }
}
