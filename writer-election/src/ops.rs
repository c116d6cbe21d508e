//! The operator commands: `writer-election status` and `writer-election switchover`.
//!
//! Both talk to a running writer-election over its HTTP API (`/v1/topology`, `/v1/status`,
//! `/v1/history`, `/v1/switchover`), so they work from a laptop through a port-forward as well as
//! inside a pod. Exit codes: 0 done, 1 the server refused or failed (its reason is printed),
//! 2 usage or a confirmation that was not given, 3 no replica could be reached.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::topology::{History, HistoryEntry, ReplicaStatus, Role, Topology};
use topology_client::http::{build_client, call_with, CallError, HttpClient};

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const PLAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// `--watch` blocks this long per query; the server answers at once on a change.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// The server gives a switchover `drain_timeout` + 120 s before it answers 504 itself.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(600);
/// How many writer changes `status` shows (all of them with `--json`).
const HISTORY_SHOWN: usize = 5;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// writer-election base URL; give it once per replica to see every replica's view.
    #[arg(long = "url", env = "WRITER_ELECTION_URL", value_delimiter = ',', default_value = DEFAULT_URL)]
    pub urls: Vec<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print again on every change of the topology (a blocking query, no polling).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct SwitchoverArgs {
    /// The node to make the writer; absent = the best ready candidate other than the writer.
    #[arg(long)]
    pub to: Option<String>,
    /// writer-election base URL (the leader; a follower answers 503 not_leader naming it).
    #[arg(long, env = "WRITER_ELECTION_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// File holding the switchover token (`switchover.token_file` of the server).
    #[arg(long, conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the switchover token.
    #[arg(long)]
    pub token_env: Option<String>,
    /// Promote even if some proxies do not acknowledge the drain in time. Only when the pending
    /// proxies are known to be gone (docs/failover.md).
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Colours only for a person at a terminal.
struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn good(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    fn bad(&self, s: &str) -> String {
        self.wrap("31;1", s)
    }
    fn warn(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
}

fn base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

fn describe(e: &CallError) -> String {
    e.to_string()
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<T, String> {
    let (status, _, body) = call_with(client, http::Method::GET, url, &[], Bytes::new(), timeout)
        .await
        .map_err(|e| format!("{url}: {}", describe(&e)))?;
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", reason_text(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not the expected answer: {e}"))
}

/// `error: message` of the API's JSON errors, else the body itself (shortened).
fn reason_text(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.get("error").is_some() => {
            let code = v["error"].as_str().unwrap_or_default();
            let msg = v["message"].as_str().unwrap_or_default();
            if msg.is_empty() {
                code.to_string()
            } else {
                format!("{code}: {msg}")
            }
        }
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// One replica's answer to `/v1/status`.
#[derive(Debug, Serialize)]
pub struct ReplicaView {
    pub url: String,
    #[serde(flatten)]
    pub status: Option<ReplicaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything `status` shows; also its `--json` output.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The replica the topology and history came from.
    pub url: String,
    pub topology: Topology,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
    pub replicas: Vec<ReplicaView>,
}

/// The topology and history from the first replica that answers, `/v1/status` from each.
async fn gather(client: &HttpClient, urls: &[String]) -> Result<StatusReport, String> {
    let mut errors = Vec::new();
    let mut found = None;
    for u in urls {
        match get_json::<Topology>(client, &format!("{u}/v1/topology"), PLAIN_TIMEOUT).await {
            Ok(t) => {
                found = Some((u.clone(), t));
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let Some((url, topology)) = found else {
        return Err(errors.join("; "));
    };
    // An older server without the history endpoint still gets a status screen.
    let history = get_json::<History>(client, &format!("{url}/v1/history"), PLAIN_TIMEOUT)
        .await
        .map(|h| h.changes)
        .unwrap_or_default();
    let mut replicas = Vec::new();
    for u in urls {
        let r = get_json::<ReplicaStatus>(client, &format!("{u}/v1/status"), PLAIN_TIMEOUT).await;
        replicas.push(match r {
            Ok(s) => ReplicaView {
                url: u.clone(),
                status: Some(s),
                error: None,
            },
            Err(e) => ReplicaView {
                url: u.clone(),
                status: None,
                error: Some(e),
            },
        });
    }
    Ok(StatusReport {
        url,
        topology,
        history,
        replicas,
    })
}

fn ago(at: &str, now: k8s_openapi::jiff::Timestamp) -> String {
    match at.parse::<k8s_openapi::jiff::Timestamp>() {
        Ok(t) => {
            let secs = now.duration_since(t).as_secs().max(0) as u64;
            let d = Duration::from_secs(secs);
            format!("{} ago", humantime::format_duration(d))
        }
        Err(_) => "?".into(),
    }
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |m| format!("{m} ms"))
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>], paint_row: impl Fn(usize, String) -> String) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(&paint_row(i, line.join("  ").trim_end().to_string()));
        out.push('\n');
    }
    out
}

/// The status screen as text.
pub fn render(r: &StatusReport, colour: bool) -> String {
    let p = Paint(colour);
    let now = k8s_openapi::jiff::Timestamp::now();
    let t = &r.topology;
    let mut out = String::new();
    match &t.writer {
        Some(w) => {
            let since = r
                .history
                .iter()
                .rev()
                .find(|h| h.to == w.name && h.epoch == t.epoch)
                .map(|h| format!("since {} ({})", h.at, ago(&h.at, now)))
                .unwrap_or_else(|| "since: not in the history".into());
            out.push_str(&format!(
                "writer:      {} ({})  epoch {}  {since}\n",
                p.good(&w.name),
                w.address,
                t.epoch
            ));
        }
        None => out.push_str(&format!(
            "writer:      {}  epoch {} (writes are held, then answered 503)\n",
            p.bad("NONE"),
            t.epoch
        )),
    }
    let drain = r
        .replicas
        .iter()
        .filter_map(|v| v.status.as_ref())
        .find_map(|s| s.drain.as_ref());
    match (&t.switchover, drain) {
        (None, _) => out.push_str("switchover:  none\n"),
        (Some(s), d) => {
            let progress = d
                .filter(|d| d.switchover == s.id)
                .map(|d| {
                    format!(
                        ", {}/{} proxies acknowledged{}",
                        d.acknowledged.len(),
                        d.acknowledged.len() + d.pending.len(),
                        if d.pending.is_empty() {
                            String::new()
                        } else {
                            format!(", pending: {}", d.pending.join(", "))
                        }
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "switchover:  {} {} -> {} (id {}){progress}\n",
                p.warn(&s.state),
                s.from,
                s.to,
                s.id
            ));
        }
    }
    let leader = r
        .replicas
        .iter()
        .filter_map(|v| v.status.as_ref())
        .find(|s| s.leading)
        .map(|s| s.identity.clone())
        .or_else(|| {
            r.replicas
                .iter()
                .filter_map(|v| v.status.as_ref())
                .find_map(|s| s.leader.clone())
        });
    match leader {
        Some(l) => out.push_str(&format!("HA leader:   {l}\n")),
        None => out.push_str(&format!("HA leader:   {}\n", p.bad("none known"))),
    }
    for v in &r.replicas {
        match (&v.status, &v.error) {
            (Some(s), _) => {
                let role = if s.leading { "leader" } else { "follower" };
                out.push_str(&format!(
                    "replica:     {} {} ({role}), {} proxies following: {}\n",
                    v.url,
                    s.identity,
                    s.clients.len(),
                    if s.clients.is_empty() {
                        "-".to_string()
                    } else {
                        s.clients.join(", ")
                    }
                ));
            }
            (None, e) => out.push_str(&format!(
                "replica:     {} {}\n",
                v.url,
                p.bad(&format!("unreachable: {}", e.as_deref().unwrap_or("?")))
            )),
        }
    }
    out.push('\n');
    // Only the leader probes: its view of the last probes.
    let probes = r
        .replicas
        .iter()
        .filter_map(|v| v.status.as_ref())
        .find(|s| s.leading)
        .map(|s| s.probes.as_slice())
        .unwrap_or_default();
    let mut rows = vec![vec![
        "NODE".to_string(),
        "ADDRESS".into(),
        "ROLE".into(),
        "READY".into(),
        "LAST PROBE".into(),
    ]];
    for n in &t.nodes {
        let probe = probes
            .iter()
            .find(|p| p.node == n.name)
            .map(|p| {
                let age = humantime::format_duration(Duration::from_millis(p.age_ms / 100 * 100));
                format!("{} ({age} ago)", p.result)
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            n.name.clone(),
            n.address.clone(),
            match n.role {
                Role::Writer => "writer".into(),
                Role::Reader => "reader".into(),
            },
            if n.ready { "yes".into() } else { "no".into() },
            probe,
        ]);
    }
    let ready: Vec<bool> = t.nodes.iter().map(|n| n.ready).collect();
    out.push_str(&table(&rows, |i, line| match i {
        0 => p.bold(&line),
        i if !ready[i - 1] => p.bad(&line),
        _ => line,
    }));
    out.push('\n');
    if r.history.is_empty() {
        out.push_str("last writer changes: none recorded\n");
    } else {
        out.push_str("last writer changes (newest first):\n");
        let mut rows = vec![vec![
            "TIME".to_string(),
            "FROM".into(),
            "TO".into(),
            "EPOCH".into(),
            "REASON".into(),
            "NO WRITER".into(),
            "DRAIN".into(),
        ]];
        for h in r.history.iter().rev().take(HISTORY_SHOWN) {
            rows.push(vec![
                h.at.clone(),
                h.from.clone().unwrap_or_else(|| "-".into()),
                h.to.clone(),
                h.epoch.to_string(),
                h.reason.clone(),
                millis(h.no_writer_ms),
                millis(h.drain_ms),
            ]);
        }
        out.push_str(&table(
            &rows,
            |i, line| {
                if i == 0 {
                    p.bold(&line)
                } else {
                    line
                }
            },
        ));
    }
    out
}

fn print_report(r: &StatusReport, json: bool, colour: bool) -> Result<(), String> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        s.push('\n');
        s
    } else {
        render(r, colour)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

pub async fn status(args: StatusArgs) -> u8 {
    let urls: Vec<String> = args
        .urls
        .iter()
        .map(|u| base(u))
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        eprintln!("writer-election status: --url is empty");
        return EXIT_USAGE;
    }
    let tty = std::io::stdout().is_terminal();
    let colour = tty && std::env::var_os("NO_COLOR").is_none();
    let client = build_client(Duration::from_secs(2));
    let mut report = match gather(&client, &urls).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("writer-election status: no replica answered: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    if !args.watch {
        return match print_report(&report, args.json, colour) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("writer-election status: {e}");
                EXIT_USAGE
            }
        };
    }
    loop {
        if tty && !args.json {
            print!("\x1b[2J\x1b[H");
        }
        if let Err(e) = print_report(&report, args.json, colour) {
            // stdout closed (`| head`): nobody is watching any more.
            eprintln!("writer-election status: {e}");
            return 0;
        }
        if !tty && !args.json {
            println!("---");
        }
        let rev = report.topology.revision;
        // The blocking query returns on the next change of the document (or after WATCH_WAIT,
        // when the same screen is printed again with fresh ages).
        let mut changed = false;
        for u in &urls {
            let url = format!("{u}/v1/topology?after={rev}&wait={}s", WATCH_WAIT.as_secs());
            if get_json::<Topology>(&client, &url, WATCH_WAIT + Duration::from_secs(5))
                .await
                .is_ok()
            {
                changed = true;
                break;
            }
        }
        if !changed {
            // Every replica is down: wait a moment instead of spinning on refused connects.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match gather(&client, &urls).await {
            Ok(r) => report = r,
            Err(e) => eprintln!("writer-election status: no replica answered: {e}"),
        }
    }
}

fn read_token(args: &SwitchoverArgs) -> Result<String, String> {
    let token = match (&args.token_file, &args.token_env) {
        (Some(f), _) => {
            std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?
        }
        (None, Some(v)) => std::env::var(v).map_err(|_| format!("--token-env {v}: not set"))?,
        (None, None) => return Err("needs --token-file FILE or --token-env VAR".into()),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(token)
}

/// Asks on the terminal; `Ok(false)` = the operator said no.
fn confirm(question: &str) -> Result<bool, String> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub async fn switchover(args: SwitchoverArgs) -> u8 {
    let url = base(&args.url);
    let token = match read_token(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("writer-election switchover: {e}");
            return EXIT_USAGE;
        }
    };
    let p = Paint(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let client = build_client(Duration::from_secs(2));
    let topology =
        match get_json::<Topology>(&client, &format!("{url}/v1/topology"), PLAIN_TIMEOUT).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("writer-election switchover: {e}");
                return EXIT_UNREACHABLE;
            }
        };
    let from = topology
        .writer
        .as_ref()
        .map(|w| w.name.clone())
        .unwrap_or_else(|| "no writer".into());
    let to = args
        .to
        .clone()
        .unwrap_or_else(|| "the best ready candidate".into());
    let plan = format!(
        "switch the writer from {from} (epoch {}) to {to}{}: every proxy holds new writes until \
         the drain is done",
        topology.epoch,
        if args.force {
            ", forcing past the drain timeout"
        } else {
            ""
        }
    );
    eprintln!("{url}: {plan}");
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "writer-election switchover: not confirmed: stdin is not a terminal, pass --yes"
            );
            return EXIT_USAGE;
        }
        match confirm("Proceed?") {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("writer-election switchover: cancelled");
                return EXIT_USAGE;
            }
            Err(e) => {
                eprintln!("writer-election switchover: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let mut body = serde_json::Map::new();
    if let Some(t) = &args.to {
        body.insert("to".into(), t.clone().into());
    }
    if args.force {
        body.insert("force".into(), true.into());
    }
    let body = serde_json::Value::Object(body).to_string();
    let auth = format!("Bearer {token}");
    let post_url = format!("{url}/v1/switchover");
    let post_client = client.clone();
    let mut post = tokio::spawn(async move {
        call_with(
            &post_client,
            http::Method::POST,
            &post_url,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Bytes::from(body),
            SWITCHOVER_TIMEOUT,
        )
        .await
    });
    // Progress while the request runs: the drain is short, a few status reads a second show it
    // without loading the server.
    let mut last = None;
    let answer = loop {
        tokio::select! {
            r = &mut post => break r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(s) = get_json::<ReplicaStatus>(&client, &format!("{url}/v1/status"), PLAIN_TIMEOUT).await {
                    if let Some(d) = s.drain {
                        let now = (d.acknowledged.len(), d.pending.clone());
                        if last.as_ref() != Some(&now) {
                            eprintln!(
                                "draining: {}/{} proxies acknowledged{}",
                                d.acknowledged.len(),
                                d.acknowledged.len() + d.pending.len(),
                                if d.pending.is_empty() { String::new() } else { format!(", pending: {}", d.pending.join(", ")) }
                            );
                            last = Some(now);
                        }
                    }
                }
            }
        }
    };
    let (status, _, body) = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!(
                "writer-election switchover: {post_url_text}: {e}",
                post_url_text = url
            );
            return EXIT_UNREACHABLE;
        }
        Err(e) => {
            eprintln!("writer-election switchover: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    if status.is_success() {
        return match serde_json::from_slice::<Topology>(&body) {
            Ok(t) => {
                let w = t.writer.as_ref().map_or("none", |w| w.name.as_str());
                let what = if t.epoch == topology.epoch {
                    "unchanged"
                } else {
                    "switched"
                };
                println!("{what}: writer {w}, epoch {}", t.epoch);
                eprintln!("{}", p.good("done"));
                0
            }
            Err(e) => {
                eprintln!("writer-election switchover: {status} but not a topology: {e}");
                EXIT_REFUSED
            }
        };
    }
    let mut reason = reason_text(&body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(pending) = v["pending"].as_array() {
            let names: Vec<&str> = pending.iter().filter_map(|x| x.as_str()).collect();
            reason.push_str(&format!(" (pending: {})", names.join(", ")));
        }
    }
    eprintln!(
        "writer-election switchover: {} {reason}",
        p.bad(&format!("refused ({})", status.as_u16()))
    );
    EXIT_REFUSED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeRef, NodeStatus, Switchover};

    fn report() -> StatusReport {
        StatusReport {
            url: "http://x".into(),
            topology: Topology {
                epoch: 2,
                revision: 9,
                writer: Some(NodeRef {
                    name: "node-1".into(),
                    address: "10.0.0.1:80".into(),
                }),
                readers: vec![],
                nodes: vec![
                    NodeStatus {
                        name: "node-0".into(),
                        address: "10.0.0.0:80".into(),
                        ready: false,
                        role: Role::Reader,
                    },
                    NodeStatus {
                        name: "node-1".into(),
                        address: "10.0.0.1:80".into(),
                        ready: true,
                        role: Role::Writer,
                    },
                ],
                updated_at: String::new(),
                switchover: Some(Switchover {
                    id: 4,
                    state: "draining".into(),
                    from: "node-1".into(),
                    to: "node-0".into(),
                }),
                replication: None,
            },
            history: vec![HistoryEntry {
                at: "2026-11-22T10:00:00Z".into(),
                from: Some("node-0".into()),
                to: "node-1".into(),
                epoch: 2,
                reason: "writer-gone".into(),
                no_writer_ms: Some(40),
                drain_ms: None,
            }],
            replicas: vec![ReplicaView {
                url: "http://x".into(),
                status: Some(ReplicaStatus {
                    identity: "we-0".into(),
                    leading: true,
                    leader: Some("we-0".into()),
                    clients: vec!["p-1".into(), "p-2".into()],
                    drain: Some(crate::topology::DrainStatus {
                        switchover: 4,
                        acknowledged: vec!["p-1".into()],
                        pending: vec!["p-2".into()],
                    }),
                    probes: vec![crate::topology::ProbeReport {
                        node: "node-0".into(),
                        ok: false,
                        result: "connection refused".into(),
                        age_ms: 1234,
                    }],
                }),
                error: None,
            }],
        }
    }

    #[test]
    fn the_screen_names_writer_drain_leader_and_history_without_colour_codes() {
        let text = render(&report(), false);
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("writer:      node-1 (10.0.0.1:80)  epoch 2  since 2026-11-22T10:00:00Z"),
            "{text}"
        );
        assert!(
            text.contains(
                "draining node-1 -> node-0 (id 4), 1/2 proxies acknowledged, pending: p-2"
            ),
            "{text}"
        );
        assert!(text.contains("HA leader:   we-0"), "{text}");
        let row0 = text
            .lines()
            .find(|l| l.starts_with("node-0 "))
            .unwrap_or_default();
        assert!(row0.contains("connection refused (1s 200ms ago)"), "{text}");
        assert!(text.contains("2 proxies following: p-1, p-2"), "{text}");
        let history_row = text
            .lines()
            .find(|l| l.contains("writer-gone"))
            .unwrap_or_default();
        assert!(
            history_row.contains("node-0") && history_row.contains("40 ms"),
            "{text}"
        );
        assert!(
            render(&report(), true).contains("\x1b[31;1m"),
            "unready rows in red"
        );
    }
}
