//! `loadtest compare`: nginx (configured like the reference ConfigMap, plus upstream keep-alive)
//! and rw-proxy in front of the same demo nodes, the same closed-loop load against each in
//! alternation, with our generator and (if installed) wrk. Optionally the resident memory of
//! both with many idle client connections.
//!
//! The backend nodes run with `--no-sync` so that PUT measures the proxies, not the disk.
//!
//! Here the scenario; beside it the nginx config and process (`nginx`), the other processes
//! (`setup`), what is read from /proc and the rlimits (`resources`), the statistics (`stats`),
//! the report (`report`) and wrk (`wrk`).

pub mod nginx;
pub mod report;
pub mod resources;
pub mod setup;
pub mod stats;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::logging::LogFormat;
use crate::run::{self, LoadConfig, Mode};
use report::{render_text, CompareReport, IdleMemory};
use setup::Setup;
use stats::{ratios, summarize, Measurement};

/// Every target, in the order of the first round.
const TARGETS: [&str; 3] = ["nginx", "rw-proxy", "direct"];

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Connection counts to measure (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub connections: Vec<usize>,
    /// Methods to measure: GET (reads, to the readers) and/or PUT (writes, to the writer).
    #[arg(long, value_delimiter = ',', default_value = "GET,PUT")]
    pub methods: Vec<String>,
    /// Targets, measured in alternation: nginx, rw-proxy, direct (one node, no proxy).
    #[arg(long, value_delimiter = ',', default_value = "nginx,rw-proxy,direct")]
    pub targets: Vec<String>,
    /// Measured time per (method, connections, target, tool, round).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// How many times the whole alternation is repeated (the order flips every round).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Skip wrk even if it is installed.
    #[arg(long)]
    pub no_wrk: bool,
    /// Skip our own generator (wrk only).
    #[arg(long)]
    pub no_own: bool,
    /// Also measure RSS of rw-proxy and nginx holding this many idle client connections.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// wrk binary.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Directory holding rw-proxy (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|c| c.is_file())
    })
}

/// What clap cannot check: the names and counts it takes as given.
fn check_args(args: &CompareArgs) -> anyhow::Result<()> {
    for m in &args.methods {
        if m != "GET" && m != "PUT" {
            bail!("--methods {m}: only GET and PUT are measured");
        }
    }
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("--targets {t}: expected nginx, rw-proxy or direct");
        }
    }
    if args.connections.contains(&0) {
        bail!("--connections: every count must be at least 1");
    }
    Ok(())
}

pub async fn main(args: CompareArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    check_args(&args)?;
    let nofile = resources::raise_nofile();
    if args.idle as u64 + 512 > nofile {
        bail!(
            "--idle {}: the open-file limit is {nofile}; raise it (ulimit -n) or lower --idle",
            args.idle
        );
    }
    let nginx = which(&args.nginx);
    let wrk = if args.no_wrk { None } else { which(&args.wrk) };
    if wrk.is_none() && !args.no_wrk {
        eprintln!("wrk not found: measuring with our generator only (apt-get install wrk)");
    }
    let mut setup = setup::setup(&args, log_format, nginx.as_deref()).await?;
    let result = measure(&args, &setup, wrk.as_deref()).await;
    let idle = match &result {
        Ok(_) if args.idle > 0 => idle_memory(&args, &setup).await,
        _ => Ok(vec![]),
    };
    tokio::task::block_in_place(|| setup.group.shutdown(Duration::from_secs(10)));
    let measurements = result?;
    let summary = summarize(&measurements);
    let report = CompareReport {
        machine: resources::machine(nginx::version(nginx.as_deref())),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ratios: ratios(&summary),
        measurements,
        summary,
        idle: idle?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(0)
}

/// Closed-loop load on `url` with `headers` on every request: reads only (`read_ratio` 1) or
/// writes only (0), over the keys and value size asked for.
async fn load(
    args: &CompareArgs,
    url: &str,
    headers: &[(String, String)],
    connections: usize,
    read_ratio: f64,
    duration: Duration,
) -> anyhow::Result<LoadConfig> {
    Ok(LoadConfig {
        target: run::parse_target(url).await?,
        mode: Mode::Closed { connections },
        duration,
        read_ratio,
        keys: args.keys,
        value_size: args.value_size,
        timeout: Duration::from_secs(10),
        headers: headers
            .iter()
            .map(|(k, v)| run::parse_header(&format!("{k}: {v}")))
            .collect::<anyhow::Result<_>>()?,
        unique_write_keys: false,
        record_history: false,
        progress: false,
    })
}

async fn measure(
    args: &CompareArgs,
    setup: &Setup,
    wrk: Option<&Path>,
) -> anyhow::Result<Vec<Measurement>> {
    let (writer_url, writer_headers) = match setup.urls.get("direct-writer") {
        Some(w) => w.clone(),
        None => setup
            .urls
            .get("rw-proxy")
            .or_else(|| setup.urls.get("nginx"))
            .cloned()
            .ok_or_else(|| anyhow!("no target to prefill through"))?,
    };
    // Prefill so that every GET finds its key.
    let prefill = load(
        args,
        &writer_url,
        &writer_headers,
        16,
        0.0,
        Duration::from_secs(1),
    );
    run::prefill(&prefill.await?).await?;

    let scripts = tempfile::tempdir()?;
    let mut out = Vec::new();
    let targets: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| args.targets.iter().any(|x| x == t))
        .collect();
    for method in &args.methods {
        for &c in &args.connections {
            for round in 0..args.rounds {
                let mut order = targets.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                for target in order {
                    let key = if target == "direct" && method == "PUT" {
                        "direct-writer"
                    } else {
                        target
                    };
                    let (url, headers) = setup
                        .urls
                        .get(key)
                        .cloned()
                        .ok_or_else(|| anyhow!("target {key} is not running"))?;
                    let point = |tool: &str, requests_per_s, p50_us, p99_us, errors| Measurement {
                        method: method.clone(),
                        connections: c,
                        target: target.to_owned(),
                        tool: tool.to_owned(),
                        round,
                        requests_per_s,
                        p50_us,
                        p99_us,
                        errors,
                    };
                    let read_ratio = if method == "GET" { 1.0 } else { 0.0 };
                    let cfg = load(args, &url, &headers, c, read_ratio, args.warmup).await?;
                    if !args.warmup.is_zero() {
                        run::execute(cfg.clone(), &url).await;
                    }
                    if !args.no_own {
                        eprintln!("{method} c={c} {target}: loadtest run {:?}", args.duration);
                        let cfg = LoadConfig {
                            duration: args.duration,
                            ..cfg
                        };
                        let r = run::execute(cfg, &url).await.report;
                        let lat = if method == "GET" {
                            r.latency.read
                        } else {
                            r.latency.write
                        };
                        out.push(point(
                            "loadtest",
                            (r.requests_per_s * 10.0).round() / 10.0,
                            lat.p50_us,
                            lat.p99_us,
                            r.read_errors + r.write_errors,
                        ));
                    }
                    if let Some(wrk) = wrk {
                        eprintln!("{method} c={c} {target}: wrk {:?}", args.duration);
                        let script = scripts.path().join(format!("{method}-{key}.lua"));
                        std::fs::write(
                            &script,
                            wrk::script(method, args.keys, args.value_size, &headers),
                        )?;
                        let (wrk, url, dur) = (wrk.to_path_buf(), url.clone(), args.duration);
                        let r = tokio::task::spawn_blocking(move || {
                            wrk::run(&wrk, &script, &url, c, dur)
                        })
                        .await??;
                        out.push(point("wrk", r.requests_per_s, r.p50_us, r.p99_us, r.errors));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Opens `--idle` connections to each proxy (one GET each, then silence) and reads the RSS
/// of the proxy's process tree before and with them.
async fn idle_memory(args: &CompareArgs, setup: &Setup) -> anyhow::Result<Vec<IdleMemory>> {
    let mut out = Vec::new();
    for (target, pid) in &setup.pids {
        let Some((url, _)) = setup.urls.get(target) else {
            continue;
        };
        let t = run::parse_target(url).await?;
        let before = resources::rss_tree_kib(*pid);
        eprintln!("{target}: opening {} idle connections", args.idle);
        let mut conns = Vec::with_capacity(args.idle);
        for _ in 0..args.idle {
            let Ok(mut c) = run::conn::Conn::connect(t.addr, Duration::from_secs(5)).await else {
                break;
            };
            let req = run::build_request(&t, &[], http::Method::GET, "k0", bytes::Bytes::new());
            if c.send(req).await.is_err() {
                break;
            }
            conns.push(c);
        }
        // Let the proxy settle (buffers shrink, workers account their sockets).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with = resources::rss_tree_kib(*pid);
        let n = conns.len();
        out.push(IdleMemory {
            target: target.clone(),
            connections_open: n,
            rss_before_kib: before,
            rss_with_idle_kib: with,
            bytes_per_connection: stats::bytes_per_connection(before, with, n),
        });
        drop(conns);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        compare: CompareArgs,
    }

    fn check(args: &[&str]) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(std::iter::once("compare").chain(args.iter().copied()))?;
        check_args(&cli.compare)
    }

    #[test]
    fn arguments_name_the_flag_they_break() {
        check(&[]).unwrap();
        check(&[
            "--methods",
            "PUT",
            "--targets",
            "direct,nginx",
            "--connections",
            "3",
        ])
        .unwrap();
        let e = check(&["--methods", "GET,POST"]).unwrap_err().to_string();
        assert!(e.starts_with("--methods POST:"), "{e}");
        let e = check(&["--targets", "rw-proxy,haproxy"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--targets haproxy:"), "{e}");
        let e = check(&["--connections", "1,0"]).unwrap_err().to_string();
        assert!(e.starts_with("--connections:"), "{e}");
    }
}
