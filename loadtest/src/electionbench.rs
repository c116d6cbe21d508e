//! `loadtest election-bench`: writer-election's CPU and memory while it probes many nodes.
//! The nodes are simulated by this process: one listener per node on 127.0.0.1, answering
//! the MicroStream API's readiness probe and promotion calls and the progress endpoint
//! (`/replication/offset`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    /// probe.interval given to writer-election (the SPEC default is 1s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub probe_interval: Duration,
    /// Directory holding writer-election (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElectionBenchResult {
    pub nodes: usize,
    pub probe_interval_ms: u64,
    pub duration_s: f64,
    /// CPU time used / wall time, in % of one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// From writer_election_probe_duration_seconds, when exported.
    pub probes: Option<u64>,
    pub mean_probe_ms: Option<f64>,
}

/// (utime + stime) clock ticks of `pid`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
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

async fn start_fleet(n: usize) -> anyhow::Result<(Vec<String>, Vec<tokio::task::JoinHandle<()>>)> {
    // The storage node API (readiness, and the promotion the first election runs), so the
    // election runs with the preset it has in production. Every node says it is not the
    // distributor yet and promotes at once.
    let api = Api::Microstream;
    let app = Router::new()
        .route(&api.ready_path(), get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
        .route(&api.distributor_path(), get(|| async { "false" }))
        .route(&api.start_path(), post(|| async { "" }))
        .route(&api.finish_path(), post(|| async { "true" }))
        .route(
            "/replication/offset",
            get(|| async { axum::Json(json!({"offset": 0})) }),
        );
    let mut addrs = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a simulated node")?;
        addrs.push(l.local_addr()?.to_string());
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        }));
    }
    Ok((addrs, tasks))
}

async fn one_run(
    args: &ElectionBenchArgs,
    bin: &Path,
    n: usize,
    log_format: LogFormat,
) -> anyhow::Result<ElectionBenchResult> {
    let dir = tempfile::Builder::new()
        .prefix("loadtest-election-bench-")
        .tempdir()?;
    let (addrs, fleet) = start_fleet(n).await?;
    let port = free_port()?;
    let cfg = json!({
        "listen": format!("127.0.0.1:{port}"),
        "discovery": {"static": {"nodes": addrs.iter().enumerate()
            .map(|(i, a)| json!({"name": format!("node-{i:04}"), "address": a}))
            .collect::<Vec<_>>()}},
        "probe": {"interval": format!("{}ms", args.probe_interval.as_millis())},
        "promotion": promotion_config(Api::Microstream),
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
    loop {
        let writer = client
            .get(&format!("{url}/v1/topology"))
            .await
            .ok()
            .and_then(|r| r.json().ok())
            .is_some_and(|v| v["writer"].is_object());
        if writer {
            break;
        }
        if let Some((_, st)) = group.reap().into_iter().next() {
            bail!("writer-election exited ({st}):\n{}", log_tail(&log, 20));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no writer elected among {n} nodes within 120s:\n{}",
                log_tail(&log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = cpu_ticks(pid).context("reading writer-election's CPU time")?;
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(args.duration).await;
    let after = cpu_ticks(pid).context("reading writer-election's CPU time")?;
    let wall = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let rss = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    let metrics = client
        .get(&format!("{url}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    let probe = histogram_sum_count(&metrics, "writer_election_probe_duration_seconds");
    tokio::task::block_in_place(|| group.shutdown(Duration::from_secs(10)));
    for t in fleet {
        t.abort();
    }
    Ok(ElectionBenchResult {
        nodes: n,
        probe_interval_ms: args.probe_interval.as_millis() as u64,
        duration_s: (wall * 10.0).round() / 10.0,
        cpu_percent: ((after - before) as f64 / tck / wall * 1000.0).round() / 10.0,
        rss_kib: rss,
        peak_rss_kib: peak,
        probes: probe.map(|(_, c)| c),
        mean_probe_ms: probe.map(|(s, c)| (s / c as f64 * 1e6).round() / 1000.0),
    })
}

pub async fn main(args: ElectionBenchArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    let mut results = Vec::new();
    for &n in &args.nodes {
        if n == 0 {
            bail!("--nodes: every count must be at least 1");
        }
        eprintln!(
            "writer-election probing {n} simulated nodes for {:?} ...",
            args.duration
        );
        results.push(one_run(&args, &bins.writer_election, n, log_format).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{:>6} {:>9} {:>8} {:>10} {:>10} {:>9} {:>10}",
            "nodes", "interval", "cpu %", "rss KiB", "peak KiB", "probes", "probe ms"
        );
        for r in &results {
            println!(
                "{:>6} {:>7}ms {:>8.1} {:>10} {:>10} {:>9} {:>10}",
                r.nodes,
                r.probe_interval_ms,
                r.cpu_percent,
                r.rss_kib,
                r.peak_rss_kib,
                r.probes
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.mean_probe_ms
                    .map(|p| format!("{p:.3}"))
                    .unwrap_or_else(|| "-".into())
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
    fn cpu_ticks_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
