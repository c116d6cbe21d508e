//! `loadtest run`: the load generator.
//!
//! Closed loop (`--connections C`): C workers, each with one keep-alive connection, send the
//! next request as soon as the previous one is answered; latency is measured from the send.
//!
//! Open loop (`--rate R`): request i is due at `start + i/R` whatever happened before
//! ([`intended_offset`]). Workers claim the next index from a shared counter; a worker that is
//! late sends at once, and latency is measured from the intended time, so a stall shows up in
//! the percentiles instead of silently lowering the rate (no coordinated omission). The rate is
//! served by `--connections` connections (default 64). Workers wait for their due time on the
//! [`pacer`] (tens of µs late), not on tokio's 1 ms timer, whose lateness would otherwise be
//! counted in every request's latency. Three things are reported apart: the total from the
//! scheduled time (`latency.all/read/write`), the service time from the actual send
//! (`latency.service`), and the generator's own lateness against the schedule
//! (`schedule_lateness`), so a late generator is seen as such and not taken for a slow server.
//!
//! The requests go out on the generator's own connections ([`conn`]), not through the
//! workspace's pooled outbound client (`topology_client::http`, which loadtest's control traffic
//! uses through [`crate::httpc`]): a pool opens, reuses and drops connections on its own terms,
//! so a measured request could pay for a connect it did not ask for or go out on a connection
//! another worker warmed. Here each worker holds one connection and every counted request went
//! out on it exactly once.

pub mod conn;
pub mod history;
pub mod pacer;
pub mod pairs;
pub mod stats;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use conn::{Conn, ErrorKind};
use history::WriteRecord;
use stats::{fmt_us, summarize, LatencySummary, OpClass, Stats};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Base URL, e.g. http://127.0.0.1:8080. Keys go to <url>/kv/<key>; a URL with a path uses
    /// that path as the prefix instead (http://h:p/api/kv/ -> /api/kv/<key>).
    #[arg(long)]
    pub url: String,
    /// Open loop: this many requests per second, on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: this many connections, each sending back to back. With --rate: the
    /// connections that carry the open-loop schedule (default 64).
    #[arg(long)]
    pub connections: Option<usize>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Share of reads (GET) among requests; the rest are writes (PUT).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Per-request timeout (connect + response).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Extra request header, "Name: value" (repeatable), e.g. "X-Writer-Epoch: 1" to write to
    /// a demo node directly.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Write every key once before measuring, so reads find values.
    #[arg(long)]
    pub prefill: bool,
    /// Every write goes to a key of its own (w<worker>-<n>), so that a read-back can check
    /// each acknowledged write.
    #[arg(long)]
    pub unique_write_keys: bool,
    /// Write one JSON line per write (key, value, epoch, times, outcome) to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// PUT->GET pairs instead of the read/write mix: each pair writes a key of its own and
    /// reads it back, and a read that does not return the value just written is counted stale.
    /// `on` (the default when the flag is given without a value) carries the token the proxy
    /// returned (a cookie jar per connection, or --token-header); `off` runs the same pairs
    /// without it. --rate and the latency rows count pairs' requests; --rate paces pairs.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "on", value_name = "on|off")]
    pub read_your_writes: Option<pairs::TokenUse>,
    /// With --read-your-writes: the token travels in this request/response header instead of
    /// the cookie (rw-proxy's `read_your_writes.token: header`, e.g. X-Read-After).
    #[arg(long, requires = "read_your_writes")]
    pub token_header: Option<String>,
    /// With --read-your-writes: how long each read waits after its write's answer, fixed
    /// (`300ms`) or drawn uniformly from a range (`0ms..1s`), so that some reads come after the
    /// readers caught up.
    #[arg(long, requires = "read_your_writes", value_parser = pairs::parse_read_delay, default_value = "0s")]
    pub read_delay: pairs::ReadDelay,
    /// With --read-your-writes: stop after this many pairs (or at --duration, if sooner).
    #[arg(long, requires = "read_your_writes")]
    pub pairs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    Open { rate: f64, connections: usize },
    Closed { connections: usize },
}

impl Mode {
    pub fn connections(&self) -> usize {
        match *self {
            Mode::Open { connections, .. } | Mode::Closed { connections } => connections,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Host header value.
    pub authority: String,
    /// Ends with '/'.
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub mode: Mode,
    pub duration: Duration,
    pub read_ratio: f64,
    pub keys: u64,
    pub value_size: usize,
    pub timeout: Duration,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub unique_write_keys: bool,
    pub record_history: bool,
    pub progress: bool,
}

/// Where `all`, `read` and `write` are measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyFrom {
    /// Open loop: the scheduled send time, so the generator's lateness and any stall are in
    /// (the coordinated-omission-correct total).
    Schedule,
    /// Closed loop: the moment the worker started the request (connect included).
    Send,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub from: LatencyFrom,
    pub all: LatencySummary,
    pub read: LatencySummary,
    pub write: LatencySummary,
    /// From the actual send (closed loop: the same as `all`).
    pub service: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub url: String,
    #[serde(flatten)]
    pub mode: Mode,
    pub duration_s: f64,
    /// Wall time from the start until the last response.
    pub elapsed_s: f64,
    pub started_unix_ms: u64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub ok_reads: u64,
    pub ok_writes: u64,
    pub not_found: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Latencies,
    /// Open loop only: start of each request minus its scheduled time, every scheduled request
    /// (failed ones too). The generator's own delay, not the server's: timer wake-up, CPU, or
    /// every connection busy (then more `--connections` help).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_lateness: Option<LatencySummary>,
    /// `--read-your-writes` only: the pairs and how many reads were stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_your_writes: Option<pairs::PairReport>,
}

pub struct RunOutcome {
    pub report: RunReport,
    pub history: Vec<WriteRecord>,
}

/// Offset of request `i` from the start on an open-loop schedule of `rate` per second.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

pub async fn parse_target(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--url {url:?}: not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("--url {url:?}: scheme {other} is not supported (http only)"),
        None => bail!("--url {url:?}: needs a scheme, e.g. http://127.0.0.1:8080"),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url {url:?}: no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("--url {url:?}: cannot resolve {}", authority.host()))?
        .next()
        .ok_or_else(|| anyhow!("--url {url:?}: {} resolves to nothing", authority.host()))?;
    let path = uri.path();
    let prefix = if path.is_empty() || path == "/" {
        "/kv/".to_owned()
    } else if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    };
    Ok(Target {
        addr,
        authority: authority.to_string(),
        prefix,
    })
}

pub fn parse_header(h: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| anyhow!("--header {h:?}: expected \"Name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("--header {h:?}: invalid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("--header {h:?}: invalid header value"))?;
    Ok((name, value))
}

impl RunArgs {
    pub async fn to_config(&self) -> anyhow::Result<LoadConfig> {
        let mode = match (self.rate, self.connections) {
            (Some(rate), c) => {
                if !(rate > 0.0 && rate.is_finite()) {
                    bail!("--rate {rate}: must be a positive number of requests per second");
                }
                Mode::Open {
                    rate,
                    connections: c.unwrap_or(64),
                }
            }
            (None, c) => Mode::Closed {
                connections: c.unwrap_or(16),
            },
        };
        if mode.connections() == 0 {
            bail!("--connections 0: needs at least one connection");
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            bail!("--read-ratio {}: must be between 0 and 1", self.read_ratio);
        }
        if self.keys == 0 {
            bail!("--keys 0: needs at least one key");
        }
        if self.duration.is_zero() {
            bail!("--duration 0s: must be positive");
        }
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(LoadConfig {
            target: parse_target(&self.url).await?,
            mode,
            duration: self.duration,
            read_ratio: self.read_ratio,
            keys: self.keys,
            value_size: self.value_size,
            timeout: self.timeout,
            headers,
            unique_write_keys: self.unique_write_keys,
            record_history: self.history.is_some(),
            progress: !self.no_progress && !self.json && std::io::stdout().is_terminal(),
        })
    }

    /// The pair settings of `--read-your-writes`, when given.
    pub fn pair_config(&self) -> anyhow::Result<Option<pairs::PairConfig>> {
        let Some(token) = self.read_your_writes else {
            return Ok(None);
        };
        let mut pc = pairs::PairConfig::new(token);
        pc.read_delay = self.read_delay;
        pc.pairs = self.pairs;
        if let Some(h) = &self.token_header {
            pc.token_header = Some(
                HeaderName::from_bytes(h.trim().as_bytes())
                    .with_context(|| format!("--token-header {h:?}: invalid header name"))?,
            );
        }
        if pc.pairs == Some(0) {
            bail!("--pairs 0: needs at least one pair");
        }
        Ok(Some(pc))
    }
}

/// `loadtest run`.
pub async fn main(args: RunArgs) -> anyhow::Result<u8> {
    let cfg = args.to_config().await?;
    let pair_cfg = args.pair_config()?;
    if args.prefill {
        prefill(&cfg).await?;
    }
    let outcome = execute_with(cfg, pair_cfg, args.url.clone(), Instant::now()).await;
    if let Some(path) = &args.history {
        history::write_jsonl(path, &outcome.history)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    } else {
        print!("{}", render_text(&outcome.report));
    }
    let r = &outcome.report;
    // With the token on, a stale read breaks the guarantee under test.
    let stale_with_token = r
        .read_your_writes
        .as_ref()
        .is_some_and(|p| p.token == pairs::TokenUse::On && p.stats.stale > 0);
    Ok(
        if (r.requests > 0 && r.requests == total_errors(r)) || stale_with_token {
            1
        } else {
            0
        },
    )
}

fn total_errors(r: &RunReport) -> u64 {
    r.read_errors + r.write_errors
}

struct Shared {
    cfg: LoadConfig,
    start: Instant,
    /// Open loop: precise wake-ups. None in closed loop, or when its thread could not be
    /// started (then tokio's timer, with its ~1 ms lateness showing in `schedule_lateness`).
    pacer: Option<pacer::Pacer>,
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

struct WorkerOut {
    stats: Stats,
    history: Vec<WriteRecord>,
    pairs: pairs::PairStats,
}

/// Runs the load described by `cfg` and returns the report (and the write history when
/// `cfg.record_history`). Never fails: every failure is a counted outcome.
pub async fn execute(cfg: LoadConfig, url: &str) -> RunOutcome {
    execute_at(cfg, url.to_owned(), Instant::now()).await
}

/// [`execute`] with the schedule (and the history's clock) starting at `start`, so a caller
/// can place its own events on the same clock.
pub async fn execute_at(cfg: LoadConfig, url: String, start: Instant) -> RunOutcome {
    execute_with(cfg, None, url, start).await
}

/// [`execute_at`], or with `pairs` the PUT->GET pairs of `--read-your-writes` instead of the
/// read/write mix (`cfg.read_ratio`, `keys` and `unique_write_keys` do not apply then).
pub async fn execute_with(
    cfg: LoadConfig,
    pairs: Option<pairs::PairConfig>,
    url: String,
    start: Instant,
) -> RunOutcome {
    let started_unix_ms = crate::node::log::now_ms();
    let connections = cfg.mode.connections();
    let progress = cfg.progress;
    let duration = cfg.duration;
    let pacer = match cfg.mode {
        Mode::Open { .. } => match pacer::Pacer::start() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no pacer thread: open-loop sends will be up to ~1 ms late");
                None
            }
        },
        Mode::Closed { .. } => None,
    };
    let shared = Arc::new(Shared {
        cfg,
        start,
        pacer,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let ticker = progress.then(|| tokio::spawn(progress_bar(shared.clone(), duration)));
    let pair_cfg = pairs.map(Arc::new);
    let workers: Vec<_> = (0..connections)
        .map(|id| match &pair_cfg {
            Some(pc) => tokio::spawn(pairs::pair_worker(id, shared.clone(), pc.clone())),
            None => tokio::spawn(worker(id, shared.clone())),
        })
        .collect();
    let mut stats = Stats::default();
    let mut pair_stats = pairs::PairStats::default();
    let mut hist = Vec::new();
    for w in workers {
        match w.await {
            Ok(out) => {
                stats.merge(&out.stats);
                pair_stats.merge(&out.pairs);
                hist.extend(out.history);
            }
            Err(e) => tracing::error!(error = %e, "a load worker panicked"),
        }
    }
    if let Some(t) = ticker {
        t.abort();
        let _ = t.await;
    }
    let elapsed = shared.start.elapsed();
    hist.sort_by_key(|r| (r.intended_us, r.worker));
    let requests = stats.completed();
    let report = RunReport {
        url,
        mode: shared.cfg.mode,
        duration_s: duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        started_unix_ms,
        requests,
        requests_per_s: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        ok_reads: stats.ok_reads,
        ok_writes: stats.ok_writes,
        not_found: stats.not_found,
        read_errors: stats.read_errors,
        write_errors: stats.write_errors,
        errors: stats.errors.iter().map(|(k, v)| (k.label(), *v)).collect(),
        latency: Latencies {
            from: match shared.cfg.mode {
                Mode::Open { .. } => LatencyFrom::Schedule,
                Mode::Closed { .. } => LatencyFrom::Send,
            },
            all: summarize(&stats.latency),
            read: summarize(&stats.latency_read),
            write: summarize(&stats.latency_write),
            service: summarize(&stats.service),
        },
        schedule_lateness: matches!(shared.cfg.mode, Mode::Open { .. })
            .then(|| summarize(&stats.schedule_lateness)),
        read_your_writes: pair_cfg
            .as_deref()
            .map(|pc| pairs::PairReport::new(pc, pair_stats)),
    };
    RunOutcome {
        report,
        history: hist,
    }
}

fn value_for(worker: usize, n: u64, size: usize) -> String {
    let mut v = format!("{worker}:{n}:");
    if v.len() < size {
        v.extend(std::iter::repeat_n('x', size - v.len()));
    }
    v
}

pub fn build_request(
    target: &Target,
    headers: &[(HeaderName, HeaderValue)],
    method: Method,
    key: &str,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = format!("{}{}", target.prefix, key)
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.authority) {
        h.insert(HOST, v);
    }
    for (k, v) in headers {
        h.insert(k.clone(), v.clone());
    }
    req
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// When the next request is due, having waited for it in open loop; None once the run is over
/// (its duration, or `limit` requests claimed). Closed loop: now, the request is due at once.
async fn next_slot(shared: &Shared, limit: Option<u64>) -> Option<Instant> {
    let cfg = &shared.cfg;
    match cfg.mode {
        Mode::Open { rate, .. } => {
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            let off = intended_offset(i, rate);
            if off >= cfg.duration || limit.is_some_and(|l| i >= l) {
                return None;
            }
            let t = shared.start + off;
            match &shared.pacer {
                Some(p) => p.sleep_until(t.into_std()).await,
                None => tokio::time::sleep_until(t).await,
            }
            Some(t)
        }
        Mode::Closed { .. } => {
            if let Some(l) = limit {
                if shared.next.fetch_add(1, Ordering::Relaxed) >= l {
                    return None;
                }
            }
            let now = Instant::now();
            (now < shared.start + cfg.duration).then_some(now)
        }
    }
}

async fn worker(id: usize, shared: Arc<Shared>) -> WorkerOut {
    let cfg = &shared.cfg;
    let mut rng = SmallRng::seed_from_u64(rand::rng().random());
    let mut conn: Option<Conn> = None;
    let mut stats = Stats::default();
    let mut history = Vec::new();
    let mut writes: u64 = 0;
    loop {
        let Some(intended) = next_slot(&shared, None).await else {
            break;
        };
        let is_read = rng.random::<f64>() < cfg.read_ratio;
        let (class, method, key, value) = if is_read {
            let k = rng.random_range(0..cfg.keys);
            (OpClass::Read, Method::GET, format!("k{k}"), None)
        } else {
            writes += 1;
            let key = if cfg.unique_write_keys {
                format!("w{id}-{writes}")
            } else {
                format!("k{}", rng.random_range(0..cfg.keys))
            };
            let v = value_for(id, writes, cfg.value_size);
            (OpClass::Write, Method::PUT, key, Some(v))
        };
        let body = value.clone().map(Bytes::from).unwrap_or_default();
        let req = build_request(&cfg.target, &cfg.headers, method, &key, body);

        if matches!(cfg.mode, Mode::Open { .. }) {
            // Taken before any connect: a (re)connect is the target's time, not the generator's.
            stats.record_lateness(micros(Instant::now().saturating_duration_since(intended)));
        }
        let result = send_one(&mut conn, cfg, req).await;
        let acked_at = Instant::now();
        let sent = result.sent_at;
        let latency = micros(acked_at - intended);
        let service = micros(acked_at - sent);
        let (outcome, status, epoch, node) = match result.response {
            Ok(resp) => {
                let status = resp.status;
                let ok = status.is_success();
                if ok {
                    stats.record(class, latency, service);
                } else if class == OpClass::Read && status == StatusCode::NOT_FOUND {
                    stats.record_not_found(latency, service);
                } else {
                    stats.error(class, ErrorKind::Status(status.as_u16()));
                }
                let (epoch, node) = if class == OpClass::Write && cfg.record_history {
                    (
                        response_epoch(&resp, ok),
                        header_str(&resp.headers, "x-node"),
                    )
                } else {
                    (None, None)
                };
                let outcome = if ok {
                    "ok".to_owned()
                } else {
                    ErrorKind::Status(status.as_u16()).label()
                };
                (outcome, Some(status.as_u16()), epoch, node)
            }
            Err(kind) => {
                stats.error(class, kind);
                (kind.label(), None, None, None)
            }
        };
        shared.done.fetch_add(1, Ordering::Relaxed);
        if outcome != "ok" && !(class == OpClass::Read && status == Some(404)) {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if conn.is_none() && matches!(cfg.mode, Mode::Closed { .. }) {
                // Nothing listening: do not spin on connect errors.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if class == OpClass::Write && cfg.record_history {
            history.push(WriteRecord {
                worker: id,
                key,
                value: value.unwrap_or_default(),
                intended_us: micros(intended - shared.start),
                sent_us: micros(sent - shared.start),
                ack_us: micros(acked_at - shared.start),
                status,
                outcome,
                epoch,
                node,
            });
        }
    }
    WorkerOut {
        stats,
        history,
        pairs: pairs::PairStats::default(),
    }
}

struct SendResult {
    sent_at: Instant,
    response: Result<conn::Response, ErrorKind>,
}

/// Sends on the worker's connection, (re)connecting first when needed. A broken or timed out
/// connection is dropped, never reused: its state is unknown.
async fn send_one(
    conn: &mut Option<Conn>,
    cfg: &LoadConfig,
    req: Request<Full<Bytes>>,
) -> SendResult {
    let start = Instant::now();
    if conn.as_ref().is_none_or(|c| !c.usable()) {
        *conn = None;
        match Conn::connect(cfg.target.addr, cfg.timeout).await {
            Ok(c) => *conn = Some(c),
            Err(kind) => {
                return SendResult {
                    sent_at: start,
                    response: Err(kind),
                }
            }
        }
    }
    let sent_at = Instant::now();
    let remaining = cfg.timeout.saturating_sub(sent_at - start);
    let response = match conn.as_mut() {
        Some(c) => match tokio::time::timeout(remaining, c.send(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(kind)) => Err(kind),
            Err(_) => Err(ErrorKind::Timeout),
        },
        None => Err(ErrorKind::Connect),
    };
    if response.is_err() {
        *conn = None;
    }
    SendResult { sent_at, response }
}

fn header_str(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn response_epoch(resp: &conn::Response, ok: bool) -> Option<u64> {
    if let Some(e) = header_str(&resp.headers, "x-writer-epoch").and_then(|s| s.parse().ok()) {
        return Some(e);
    }
    if !ok {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()?
        .get("epoch")?
        .as_u64()
}

async fn progress_bar(shared: Arc<Shared>, duration: Duration) {
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        bar.set_style(style);
    }
    let mut last_done = 0;
    let mut last_t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (done - last_done) as f64 / (now - last_t).as_secs_f64().max(1e-6);
        last_done = done;
        last_t = now;
        bar.set_position((now - shared.start).as_millis().min(duration.as_millis()) as u64);
        bar.set_message(format!("{rate:>9.0} req/s  {done} done  {failed} failed"));
        if now - shared.start >= duration + Duration::from_secs(60) {
            break;
        }
    }
    bar.finish_and_clear();
}

/// Writes every key once (k0..k<keys>) with `cfg.mode.connections()` connections in parallel.
pub async fn prefill(cfg: &LoadConfig) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..cfg.mode.connections().min(64) {
        let next = next.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut failed: Vec<String> = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= cfg.keys {
                    break;
                }
                let body = Bytes::from(value_for(id, k, cfg.value_size));
                let req = build_request(
                    &cfg.target,
                    &cfg.headers,
                    Method::PUT,
                    &format!("k{k}"),
                    body,
                );
                let r = send_one(&mut conn, &cfg, req).await;
                match r.response {
                    Ok(resp) if resp.status.is_success() => {}
                    Ok(resp) => failed.push(format!(
                        "k{k}: HTTP {} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    )),
                    Err(kind) => failed.push(format!("k{k}: {}", kind.label())),
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap_or_else(|e| vec![format!("task: {e}")]));
    }
    if let Some(first) = failed.first() {
        bail!(
            "--prefill: {} of {} writes failed, first: {first}",
            failed.len(),
            cfg.keys
        );
    }
    Ok(())
}

pub fn render_text(r: &RunReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mode = match r.mode {
        Mode::Open { rate, connections } => {
            format!("open loop, {rate} req/s target, {connections} connections")
        }
        Mode::Closed { connections } => format!("closed loop, {connections} connections"),
    };
    let _ = writeln!(s, "target     {}  ({mode})", r.url);
    let _ = writeln!(
        s,
        "requests   {} in {:.2}s = {:.0} req/s",
        r.requests, r.elapsed_s, r.requests_per_s
    );
    let _ = writeln!(
        s,
        "ok         {} reads ({} not found), {} writes",
        r.ok_reads + r.not_found,
        r.not_found,
        r.ok_writes
    );
    if r.errors.is_empty() {
        let _ = writeln!(s, "errors     none");
    } else {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "errors     {} reads, {} writes: {}",
            r.read_errors,
            r.write_errors,
            list.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "latency      {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let lateness = r.schedule_lateness.unwrap_or_default();
    for (name, l) in [
        ("total", &r.latency.all),
        ("read", &r.latency.read),
        ("write", &r.latency.write),
        ("service", &r.latency.service),
        ("lateness", &lateness),
    ] {
        if l.count == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  {name:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            l.count,
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us)
        );
    }
    // Says what each row measures, as the numbers mean different things per mode.
    let legend = match r.latency.from {
        LatencyFrom::Schedule => {
            "  total/read/write: scheduled time -> response (lateness included: no coordinated \
             omission)\n  service: actual send -> response (the target)\n  lateness: start of \
             the send - scheduled time (the generator's own)\n"
        }
        LatencyFrom::Send => {
            "  total/read/write: start of the request -> response (connect included)\n  service: \
             actual send -> response\n"
        }
    };
    s.push_str(legend);
    if let Some(p) = &r.read_your_writes {
        let st = &p.stats;
        let token = match p.token {
            pairs::TokenUse::On => format!("token on ({})", p.carried_in),
            pairs::TokenUse::Off => "token off".to_owned(),
        };
        let _ = writeln!(
            s,
            "pairs      {} checked, {token}, read {}..{} ms after the write",
            st.checked, p.read_delay_ms[0], p.read_delay_ms[1]
        );
        let _ = writeln!(
            s,
            "  stale    {} (fresh {}; writes failed {}, reads failed {}; tokens issued {})",
            st.stale, st.fresh, st.write_failed, st.read_failed, st.tokens_issued
        );
        let by_node: Vec<String> = st
            .reads_by_node
            .iter()
            .map(|(n, c)| match st.stale_by_node.get(n) {
                Some(x) => format!("{n}={c} ({x} stale)"),
                None => format!("{n}={c}"),
            })
            .collect();
        let _ = writeln!(s, "  reads by {}", by_node.join(" "));
        for e in st.stale_examples.iter().take(3) {
            let _ = writeln!(s, "  e.g.     {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_fixed_by_index_and_rate() {
        assert_eq!(intended_offset(0, 100.0), Duration::ZERO);
        assert_eq!(intended_offset(100, 100.0), Duration::from_secs(1));
        assert_eq!(intended_offset(5, 1000.0), Duration::from_millis(5));
    }

    #[test]
    fn values_are_unique_and_sized() {
        let a = value_for(1, 2, 20);
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("1:2:"));
        assert_ne!(value_for(1, 3, 20), a);
        assert_eq!(
            value_for(12, 345, 2),
            "12:345:",
            "never cut the unique part"
        );
    }

    #[test]
    fn headers_parse_and_errors_name_the_flag() {
        let (n, v) = parse_header("X-Writer-Epoch: 7").unwrap();
        assert_eq!(n, "x-writer-epoch");
        assert_eq!(v, "7");
        let e = parse_header("nocolon").unwrap_err().to_string();
        assert!(e.contains("--header"), "{e}");
    }

    #[tokio::test]
    async fn url_path_becomes_the_key_prefix() {
        let t = parse_target("http://127.0.0.1:8080").await.unwrap();
        assert_eq!(t.prefix, "/kv/");
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_target("http://127.0.0.1:8080/api/kv").await.unwrap();
        assert_eq!(t.prefix, "/api/kv/");
        assert!(parse_target("https://127.0.0.1").await.is_err());
        assert!(parse_target("127.0.0.1:80").await.is_err());
    }

    fn shared(mode: Mode, duration: Duration) -> Shared {
        Shared {
            cfg: LoadConfig {
                target: Target {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    authority: "127.0.0.1:1".into(),
                    prefix: "/kv/".into(),
                },
                mode,
                duration,
                read_ratio: 0.0,
                keys: 1,
                value_size: 1,
                timeout: Duration::from_secs(1),
                headers: vec![],
                unique_write_keys: true,
                record_history: false,
                progress: false,
            },
            start: Instant::now(),
            pacer: None,
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    #[tokio::test]
    async fn slots_follow_the_schedule_and_stop_at_the_limit_or_the_end() {
        // Open loop: slot i is due at start + i/rate, whoever claims it; the limit ends the
        // run before the duration does.
        let open = shared(
            Mode::Open {
                rate: 10.0,
                connections: 1,
            },
            Duration::from_secs(10),
        );
        for i in 0..3 {
            let due = next_slot(&open, Some(3)).await;
            assert_eq!(due, Some(open.start + intended_offset(i, 10.0)));
        }
        assert_eq!(next_slot(&open, Some(3)).await, None);
        // Without a limit the duration ends it: ten slots in 10 ms at 1000/s.
        let open = shared(
            Mode::Open {
                rate: 1000.0,
                connections: 1,
            },
            Duration::from_millis(10),
        );
        let mut n = 0;
        while next_slot(&open, None).await.is_some() {
            n += 1;
        }
        assert_eq!(n, 10);

        // Closed loop: due at once; a limit counts claims, the duration ends it anyway.
        let closed = shared(Mode::Closed { connections: 1 }, Duration::from_secs(1));
        assert!(next_slot(&closed, Some(2)).await.is_some());
        assert!(next_slot(&closed, Some(2)).await.is_some());
        assert_eq!(next_slot(&closed, Some(2)).await, None);
        assert!(next_slot(&closed, None).await.is_some());
        let over = shared(Mode::Closed { connections: 1 }, Duration::ZERO);
        assert_eq!(next_slot(&over, None).await, None);
    }
}
