//! `loadtest compare`: nginx (configured like the reference ConfigMap, plus upstream keep-alive)
//! and rw-proxy in front of the same demo nodes, the same closed-loop load against each in
//! alternation, with our generator and (if installed) wrk. Optionally the resident memory of
//! both with many idle client connections.
//!
//! The backend nodes run with `--no-sync` so that PUT measures the proxies, not the disk.

pub mod wrk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Serialize;

use crate::cluster::{log_tail, Binaries};
use crate::httpc::HttpClient;
use crate::logging::LogFormat;
use crate::procs::{free_port, wait_for, Group};
use crate::run::{self, LoadConfig, Mode};

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

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub method: String,
    pub connections: usize,
    pub target: String,
    pub tool: String,
    pub round: usize,
    pub requests_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub method: String,
    pub connections: usize,
    pub tool: String,
    /// rw-proxy req/s / nginx req/s (target >= 1.0).
    pub rps_ratio: f64,
    /// rw-proxy p99 / nginx p99 (target <= 1.0).
    pub p99_ratio: f64,
    /// rw-proxy p50 - direct p50, µs (target < 100).
    pub added_p50_us_over_direct: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    pub target: String,
    pub connections_open: usize,
    pub rss_before_kib: u64,
    pub rss_with_idle_kib: u64,
    pub bytes_per_connection: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub nginx: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub machine: Machine,
    pub command: String,
    pub measurements: Vec<Measurement>,
    /// Median over rounds per (method, connections, target, tool).
    pub summary: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    pub idle: Vec<IdleMemory>,
}

/// The reference nginx, shared with loadtest/bench/instructions.sh: the ConfigMap's shape (map
/// $request_method -> writer or readers, access log off, HTTP/1.1 upstream) with pooled upstream
/// connections (`keepalive` + `Connection ""`) instead of one request per connection, and the
/// header work rw-proxy does on every request (X-Forwarded-*, X-Request-Id both ways, the fencing
/// token to the writer only), so that both proxies do the same work per request.
const NGINX_TEMPLATE: &str = include_str!("../../bench/nginx-reference.conf");

/// nginx.conf of the reference proxy: `worker_processes auto` under a master process.
pub fn nginx_conf(
    dir: &Path,
    listen: u16,
    writer: &str,
    readers: &[String],
    worker_connections: u64,
) -> String {
    let readers: Vec<String> = readers.iter().map(|r| format!("    server {r};")).collect();
    NGINX_TEMPLATE
        .replace("@MASTER_PROCESS@", "on")
        .replace("@WORKER_PROCESSES@", "auto")
        .replace("@RLIMIT_NOFILE@", &(worker_connections * 2).to_string())
        .replace("@WORKER_CONNECTIONS@", &worker_connections.to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@WRITER@", writer)
        .replace("@READERS@", &readers.join("\n"))
        .replace("@LISTEN@", &listen.to_string())
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        l.rlim_cur
    }
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

/// VmRSS of `pid` and of its direct children (nginx workers), KiB.
pub fn rss_tree_kib(pid: u32) -> u64 {
    let rss = |p: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut total = rss(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("PPid:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u32>().ok())
                });
            if ppid == Some(pid) {
                total += rss(child);
            }
        }
    }
    total
}

fn machine(nginx: Option<&Path>) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let nginx = nginx
        .and_then(|n| Command::new(n).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|| "not installed".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel,
        nginx,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    group: Group,
    /// target name -> (base URL, extra headers for writes)
    urls: BTreeMap<String, (String, Vec<(String, String)>)>,
    /// target name -> pid whose RSS tree is measured
    pids: BTreeMap<String, u32>,
}

async fn wait_port(name: &str, url: &str, log: &Path, group: &mut Group) -> anyhow::Result<()> {
    let c = HttpClient::new(Duration::from_secs(2));
    let mut exited = None;
    let r = wait_for(name, Duration::from_secs(30), || {
        if exited.is_none() {
            exited = group.reap().into_iter().next();
        }
        let done = exited.is_some();
        let c = c.clone();
        let url = url.to_owned();
        async move {
            if done {
                return Some(false);
            }
            c.get(&url).await.ok().map(|_| true)
        }
    })
    .await;
    match (r, exited) {
        (Ok(true), _) => Ok(()),
        (_, Some((n, st))) => bail!("{n} exited at start ({st}):\n{}", log_tail(log, 20)),
        (Err(e), _) => Err(anyhow!("{e}:\n{}", log_tail(log, 20))),
        (Ok(false), None) => bail!("{name} did not start"),
    }
}

async fn setup(
    args: &CompareArgs,
    log_format: LogFormat,
    nginx: Option<&Path>,
) -> anyhow::Result<Setup> {
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("loadtest-compare-")
        .tempdir()?;
    let d = dir.path().to_path_buf();
    let mut group = Group::new();
    let stream = d.join("stream.log");
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let port = free_port()?;
        let name = format!("node-{i}");
        let log = d.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bins.loadtest);
        cmd.args(["--log-format", log_format.as_str(), "node", "--name", &name])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log")
            .arg(&stream)
            .arg("--no-sync")
            // A static writer with no election: nobody promotes node-1.
            .arg("--no-promotion-needed")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        group.spawn(&name, cmd)?;
        let addr = format!("127.0.0.1:{port}");
        wait_port(&name, &format!("http://{addr}/health"), &log, &mut group).await?;
        nodes.push(addr);
    }
    let writer = nodes[0].clone();
    let readers = nodes[1..].to_vec();
    let mut urls = BTreeMap::new();
    let mut pids = BTreeMap::new();
    let want = |t: &str| args.targets.iter().any(|x| x == t);

    if want("direct") {
        // Reads to one reader, writes to the writer with the epoch the proxies would add.
        urls.insert(
            "direct".to_owned(),
            (format!("http://{}", readers[0]), vec![]),
        );
        urls.insert(
            "direct-writer".to_owned(),
            (
                format!("http://{writer}"),
                vec![("X-Writer-Epoch".to_owned(), "1".to_owned())],
            ),
        );
    }
    if want("rw-proxy") {
        let port = free_port()?;
        let admin = free_port()?;
        let node =
            |a: &str, i: usize| serde_json::json!({"name": format!("node-{i}"), "address": a});
        let cfg = serde_json::json!({
            "listen": format!("127.0.0.1:{port}"),
            "admin_listen": format!("127.0.0.1:{admin}"),
            "topology": {"static": {
                "writer": node(&writer, 1),
                "readers": readers.iter().enumerate().map(|(i, r)| node(r, i + 2)).collect::<Vec<_>>()
            }},
            "access_log": "errors"
        });
        let path = d.join("proxy.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
        let log = d.join("rw-proxy.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bins.rw_proxy);
        cmd.arg("--log-format")
            .arg(log_format.as_str())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let pid = group.spawn("rw-proxy", cmd)?;
        wait_port(
            "rw-proxy",
            &format!("http://127.0.0.1:{admin}/health/ready"),
            &log,
            &mut group,
        )
        .await?;
        urls.insert(
            "rw-proxy".to_owned(),
            (format!("http://127.0.0.1:{port}"), vec![]),
        );
        pids.insert("rw-proxy".to_owned(), pid);
    }
    if want("nginx") {
        let nginx = nginx.ok_or_else(|| {
            anyhow!(
                "nginx not found (--nginx {}): install it with `apt-get install nginx wrk` \
                 (scripts/bootstrap.sh --bench), or leave nginx out of --targets",
                args.nginx.display()
            )
        })?;
        let port = free_port()?;
        let wc = (args.idle as u64 + 1024).max(4096);
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&d, port, &writer, &readers, wc))?;
        let log = d.join("nginx-error.log");
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let pid = group.spawn("nginx", cmd)?;
        wait_port(
            "nginx",
            &format!("http://127.0.0.1:{port}/health"),
            &log,
            &mut group,
        )
        .await?;
        urls.insert(
            "nginx".to_owned(),
            (format!("http://127.0.0.1:{port}"), vec![]),
        );
        pids.insert("nginx".to_owned(), pid);
    }
    Ok(Setup {
        _dir: dir,
        group,
        urls,
        pids,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn summarize(ms: &[Measurement]) -> Vec<Measurement> {
    let mut groups: BTreeMap<(String, usize, String, String), Vec<&Measurement>> = BTreeMap::new();
    for m in ms {
        groups
            .entry((
                m.method.clone(),
                m.connections,
                m.target.clone(),
                m.tool.clone(),
            ))
            .or_default()
            .push(m);
    }
    groups
        .into_iter()
        .map(|((method, connections, target, tool), v)| Measurement {
            method,
            connections,
            target,
            tool,
            round: v.len(),
            requests_per_s: median(v.iter().map(|m| m.requests_per_s).collect()),
            p50_us: median(v.iter().map(|m| m.p50_us as f64).collect()) as u64,
            p99_us: median(v.iter().map(|m| m.p99_us as f64).collect()) as u64,
            errors: v.iter().map(|m| m.errors).sum(),
        })
        .collect()
}

pub fn ratios(summary: &[Measurement]) -> Vec<Ratio> {
    let find = |method: &str, c: usize, target: &str, tool: &str| {
        summary.iter().find(|m| {
            m.method == method && m.connections == c && m.target == target && m.tool == tool
        })
    };
    let mut out = Vec::new();
    for m in summary.iter().filter(|m| m.target == "rw-proxy") {
        let Some(n) = find(&m.method, m.connections, "nginx", &m.tool) else {
            continue;
        };
        let direct = find(&m.method, m.connections, "direct", &m.tool);
        out.push(Ratio {
            method: m.method.clone(),
            connections: m.connections,
            tool: m.tool.clone(),
            rps_ratio: (m.requests_per_s / n.requests_per_s.max(1e-9) * 100.0).round() / 100.0,
            p99_ratio: (m.p99_us as f64 / (n.p99_us as f64).max(1.0) * 100.0).round() / 100.0,
            added_p50_us_over_direct: direct.map(|d| m.p50_us as i64 - d.p50_us as i64),
        });
    }
    out
}

pub async fn main(args: CompareArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    for m in &args.methods {
        if m != "GET" && m != "PUT" {
            bail!("--methods {m}: only GET and PUT are measured");
        }
    }
    for t in &args.targets {
        if !["nginx", "rw-proxy", "direct"].contains(&t.as_str()) {
            bail!("--targets {t}: expected nginx, rw-proxy or direct");
        }
    }
    if args.connections.contains(&0) {
        bail!("--connections: every count must be at least 1");
    }
    let nofile = raise_nofile();
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
    let mut setup = setup(&args, log_format, nginx.as_deref()).await?;
    let result = measure(&args, &setup, wrk.as_deref()).await;
    let idle = match &result {
        Ok(_) if args.idle > 0 => idle_memory(&args, &setup).await,
        _ => Ok(vec![]),
    };
    tokio::task::block_in_place(|| setup.group.shutdown(Duration::from_secs(10)));
    let measurements = result?;
    let summary = summarize(&measurements);
    let report = CompareReport {
        machine: machine(nginx.as_deref()),
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
    let prefill = LoadConfig {
        target: run::parse_target(&writer_url).await?,
        mode: Mode::Closed { connections: 16 },
        duration: Duration::from_secs(1),
        read_ratio: 0.0,
        keys: args.keys,
        value_size: args.value_size,
        timeout: Duration::from_secs(10),
        headers: writer_headers
            .iter()
            .map(|(k, v)| run::parse_header(&format!("{k}: {v}")))
            .collect::<anyhow::Result<_>>()?,
        unique_write_keys: false,
        record_history: false,
        progress: false,
    };
    run::prefill(&prefill).await?;

    let scripts = tempfile::tempdir()?;
    let mut out = Vec::new();
    let targets: Vec<&str> = ["nginx", "rw-proxy", "direct"]
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
                    let cfg = LoadConfig {
                        target: run::parse_target(&url).await?,
                        mode: Mode::Closed { connections: c },
                        duration: args.warmup,
                        read_ratio: if method == "GET" { 1.0 } else { 0.0 },
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
                    };
                    if !args.warmup.is_zero() {
                        run::execute(cfg.clone(), &url).await;
                    }
                    if !args.no_own {
                        eprintln!("{method} c={c} {target}: loadtest run {:?}", args.duration);
                        let r = run::execute(
                            LoadConfig {
                                duration: args.duration,
                                ..cfg.clone()
                            },
                            &url,
                        )
                        .await
                        .report;
                        let lat = if method == "GET" {
                            r.latency.read
                        } else {
                            r.latency.write
                        };
                        out.push(Measurement {
                            method: method.clone(),
                            connections: c,
                            target: target.to_owned(),
                            tool: "loadtest".into(),
                            round,
                            requests_per_s: (r.requests_per_s * 10.0).round() / 10.0,
                            p50_us: lat.p50_us,
                            p99_us: lat.p99_us,
                            errors: r.read_errors + r.write_errors,
                        });
                    }
                    if let Some(wrk) = wrk {
                        eprintln!("{method} c={c} {target}: wrk {:?}", args.duration);
                        let script = scripts.path().join(format!("{method}-{key}.lua"));
                        std::fs::write(
                            &script,
                            wrk::script(method, args.keys, args.value_size, &headers),
                        )?;
                        let (wrk, script, url, dur) = (
                            wrk.to_path_buf(),
                            script.clone(),
                            url.clone(),
                            args.duration,
                        );
                        let r = tokio::task::spawn_blocking(move || {
                            wrk::run(&wrk, &script, &url, c, dur)
                        })
                        .await??;
                        out.push(Measurement {
                            method: method.clone(),
                            connections: c,
                            target: target.to_owned(),
                            tool: "wrk".into(),
                            round,
                            requests_per_s: r.requests_per_s,
                            p50_us: r.p50_us,
                            p99_us: r.p99_us,
                            errors: r.errors,
                        });
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
        let before = rss_tree_kib(*pid);
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
        let with = rss_tree_kib(*pid);
        let n = conns.len();
        out.push(IdleMemory {
            target: target.clone(),
            connections_open: n,
            rss_before_kib: before,
            rss_with_idle_kib: with,
            bytes_per_connection: if n == 0 {
                0.0
            } else {
                ((with.saturating_sub(before)) as f64 * 1024.0 / n as f64).round()
            },
        });
        drop(conns);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(out)
}

pub fn render_text(r: &CompareReport) -> String {
    use crate::run::stats::fmt_us;
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores), kernel {}, {}, {}",
        m.cpu, m.cores, m.kernel, m.nginx, m.date
    );
    let _ = writeln!(
        s,
        "{:<6} {:>5}  {:<9} {:<9} {:>11} {:>9} {:>9} {:>7}",
        "method", "conns", "target", "tool", "req/s", "p50", "p99", "errors"
    );
    for x in &r.summary {
        let _ = writeln!(
            s,
            "{:<6} {:>5}  {:<9} {:<9} {:>11.0} {:>9} {:>9} {:>7}",
            x.method,
            x.connections,
            x.target,
            x.tool,
            x.requests_per_s,
            fmt_us(x.p50_us),
            fmt_us(x.p99_us),
            x.errors
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nrw-proxy vs nginx (req/s ratio >= 1.0 and p99 ratio <= 1.0 are the targets):"
        );
        for x in &r.ratios {
            let added = x
                .added_p50_us_over_direct
                .map(|v| format!(", p50 {v:+} µs over direct"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {} c={:<4} {:<9} req/s {:.2}x  p99 {:.2}x{added}",
                x.method, x.connections, x.tool, x.rps_ratio, x.p99_ratio
            );
        }
    }
    for i in &r.idle {
        let _ = writeln!(
            s,
            "idle: {} with {} connections: RSS {} KiB -> {} KiB ({:.0} bytes/connection)",
            i.target,
            i.connections_open,
            i.rss_before_kib,
            i.rss_with_idle_kib,
            i.bytes_per_connection
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(method: &str, c: usize, target: &str, rps: f64, p50: u64, p99: u64) -> Measurement {
        Measurement {
            method: method.into(),
            connections: c,
            target: target.into(),
            tool: "loadtest".into(),
            round: 0,
            requests_per_s: rps,
            p50_us: p50,
            p99_us: p99,
            errors: 0,
        }
    }

    #[test]
    fn ratios_compare_rw_proxy_with_nginx_and_direct() {
        let s = summarize(&[
            m("GET", 64, "nginx", 1000.0, 400, 2000),
            m("GET", 64, "rw-proxy", 1100.0, 380, 1800),
            m("GET", 64, "rw-proxy", 900.0, 420, 2200),
            m("GET", 64, "rw-proxy", 1200.0, 390, 1900),
            m("GET", 64, "direct", 2000.0, 300, 900),
        ]);
        let rp = s.iter().find(|x| x.target == "rw-proxy").unwrap();
        assert_eq!(rp.requests_per_s, 1100.0, "median of 3 rounds");
        assert_eq!(rp.round, 3);
        let r = ratios(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rps_ratio, 1.1);
        assert_eq!(r[0].p99_ratio, 0.95);
        assert_eq!(r[0].added_p50_us_over_direct, Some(90));
    }

    fn conf() -> String {
        nginx_conf(
            Path::new("/tmp/x"),
            8088,
            "127.0.0.1:9001",
            &["127.0.0.1:9002".into(), "127.0.0.1:9003".into()],
            4096,
        )
    }

    #[test]
    fn nginx_conf_keeps_the_reference_shape_with_keepalive() {
        let c = conf();
        assert!(c.contains("map $request_method $upstream_location"));
        assert!(c.contains("keepalive 256;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("    server 127.0.0.1:9002;\n    server 127.0.0.1:9003;\n"));
        assert!(c.contains("server 127.0.0.1:9001;"));
        assert!(c.contains("listen 127.0.0.1:8088;"));
        assert!(c.contains("access_log off;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        assert!(c.contains("worker_connections 4096;"));
        assert!(c.contains("worker_rlimit_nofile 8192;"));
        assert!(c.contains("master_process on;"));
        assert!(c.contains("worker_processes auto;"));
        assert!(!c.contains("Connection close"));
        assert!(!c.contains('@'), "every marker is filled in:\n{c}");
    }

    #[test]
    fn nginx_conf_does_the_header_work_rw_proxy_does() {
        let c = conf();
        // Appends the client address to the client's X-Forwarded-For.
        assert!(c.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
        // X-Forwarded-Proto and -Host: the client's if sent, else this hop's scheme and Host.
        assert!(c.contains("map $http_x_forwarded_proto $forwarded_proto {\n    \"\" $scheme;"));
        assert!(c.contains("proxy_set_header X-Forwarded-Proto $forwarded_proto;"));
        assert!(c.contains("map $http_x_forwarded_host $forwarded_host {\n    \"\" $http_host;"));
        assert!(c.contains("proxy_set_header X-Forwarded-Host $forwarded_host;"));
        // X-Request-Id: the client's, else generated; upstream, and on the response unless the
        // upstream's response has one.
        assert!(c.contains("map $http_x_request_id $request_id_out {\n    \"\" $request_id;"));
        assert!(c.contains("proxy_set_header X-Request-Id $request_id_out;"));
        assert!(c.contains("map $upstream_http_x_request_id $response_request_id {"));
        assert!(c.contains("add_header X-Request-Id $response_request_id always;"));
        // The fencing token goes to the writer only and replaces any the client sent.
        assert!(
            c.contains("map $upstream_location $writer_epoch {\n    writer 1;\n    default \"\";")
        );
        assert!(c.contains("proxy_set_header X-Writer-Epoch $writer_epoch;"));
    }

    fn known_report() -> CompareReport {
        let mut put = m("PUT", 1, "rw-proxy", 123.45, 999, 1_500_000);
        put.tool = "wrk".into();
        put.errors = 2;
        let summary = vec![m("GET", 64, "nginx", 1000.0, 400, 2000), put];
        CompareReport {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                kernel: "6.1.0".into(),
                nginx: "nginx version: nginx/1.22.1".into(),
                date: "2026-01-01T00:00:00Z".into(),
            },
            command: "loadtest compare --idle 10".into(),
            measurements: summary.clone(),
            summary,
            ratios: vec![
                Ratio {
                    method: "GET".into(),
                    connections: 64,
                    tool: "loadtest".into(),
                    rps_ratio: 1.1,
                    p99_ratio: 0.95,
                    added_p50_us_over_direct: Some(-5),
                },
                Ratio {
                    method: "PUT".into(),
                    connections: 1,
                    tool: "wrk".into(),
                    rps_ratio: 0.5,
                    p99_ratio: 2.0,
                    added_p50_us_over_direct: None,
                },
            ],
            idle: vec![IdleMemory {
                target: "nginx".into(),
                connections_open: 10,
                rss_before_kib: 1000,
                rss_with_idle_kib: 1100,
                bytes_per_connection: 10240.0,
            }],
        }
    }

    #[test]
    fn renders_a_known_report_as_text() {
        assert_eq!(
            render_text(&known_report()),
            "machine: Test CPU (2 cores), kernel 6.1.0, nginx version: nginx/1.22.1, 2026-01-01T00:00:00Z\n\
             method conns  target    tool            req/s       p50       p99  errors\n\
             GET       64  nginx     loadtest         1000     400µs    2.00ms       0\n\
             PUT        1  rw-proxy  wrk               123     999µs     1.50s       2\n\
             \n\
             rw-proxy vs nginx (req/s ratio >= 1.0 and p99 ratio <= 1.0 are the targets):\n  \
             GET c=64   loadtest  req/s 1.10x  p99 0.95x, p50 -5 µs over direct\n  \
             PUT c=1    wrk       req/s 0.50x  p99 2.00x\n\
             idle: nginx with 10 connections: RSS 1000 KiB -> 1100 KiB (10240 bytes/connection)\n"
        );
    }

    #[test]
    fn renders_a_known_report_as_json() {
        let json = serde_json::to_string_pretty(&known_report()).unwrap();
        assert_eq!(json, include_str!("testdata/known-report.json").trim_end());
    }
}
