//! A whole single-machine cluster as child processes: N demo nodes sharing one log,
//! writer-election (static discovery, state file, promotion calls, switchover token) and
//! rw-proxy. Used by `loadtest demo`, `loadtest failover` and the tests.
//!
//! The start-up (configs, children, the waits) is the same wherever the children run:
//! [`Cluster::start`] puts them all on 127.0.0.1, [`crate::netns::cluster`] gives each a host
//! of its own through [`Cluster::start_on`] with its own [`Placement`] and [`Hosts`].
//!
//! Everything lives in one temporary directory (configs, the shared log, the election state,
//! the token, each child's log file) that goes away with the [`Cluster`].

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use topology_client::topology::Topology;

use crate::httpc::{HttpClient, Reply};
use crate::logging::LogFormat;
use crate::node::api::Api;
use crate::procs::{free_port, Group};

/// Where the rw-proxy / writer-election / loadtest binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub loadtest: PathBuf,
    pub rw_proxy: PathBuf,
    pub writer_election: PathBuf,
}

pub const BUILD_HINT: &str = "cargo build --release --bins";

impl Binaries {
    /// Looks in `bin_dir`, else next to the running executable (target/<profile>/).
    pub fn find(bin_dir: Option<&Path>) -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("locating the loadtest executable")?;
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => exe
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?,
        };
        let pick = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "{name} not found in {}: build the binaries first with `{BUILD_HINT}` \
                     (or point --bin-dir at the directory that holds them)",
                    dir.display()
                ))
            }
        };
        let loadtest = match bin_dir {
            Some(_) => pick("loadtest").unwrap_or(exe),
            None => exe,
        };
        Ok(Binaries {
            loadtest,
            rw_proxy: pick("rw-proxy")?,
            writer_election: pick("writer-election")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// First node port (nodes get base, base+1, ...); None = free ports.
    pub base_port: Option<u16>,
    pub proxy_port: Option<u16>,
    pub admin_port: Option<u16>,
    pub election_port: Option<u16>,
    pub bin_dir: Option<PathBuf>,
    /// The storage node API the nodes serve and the election's promotion speaks.
    pub api: Api,
    /// Extra arguments for every `loadtest node`, e.g. ["--lag", "50ms"].
    pub node_args: Vec<String>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub failure_threshold: u32,
    pub promotion_delay: Duration,
    pub hold_writes: Duration,
    /// name | oldest | most_caught_up
    pub candidate_order: String,
    /// Give rw-proxy a static topology instead of election_url (also the fallback when the
    /// rw-proxy build does not accept election_url yet).
    pub force_static: bool,
    pub log_format: LogFormat,
    /// rw-proxy's `routing.read_your_writes` (the token cookie with its defaults). Off by
    /// default: the existing scenarios measure the cluster without it.
    pub read_your_writes: bool,
    /// rw-proxy's `routing.read_your_writes.window` (None: the proxy's default).
    pub read_your_writes_window: Option<Duration>,
    /// rw-proxy's `routing.max_reader_lag` (None: no lag gate).
    pub max_reader_lag: Option<MaxReaderLag>,
    /// writer-election's `election.progress.interval` (None: its default, the probe interval).
    pub progress_interval: Option<Duration>,
}

/// The limits of rw-proxy's lag gate; at least one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxReaderLag {
    pub offsets: Option<u64>,
    pub duration: Option<Duration>,
}

impl MaxReaderLag {
    pub fn is_empty(&self) -> bool {
        self.offsets.is_none() && self.duration.is_none()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            base_port: None,
            proxy_port: None,
            admin_port: None,
            election_port: None,
            bin_dir: None,
            api: Api::Microstream,
            node_args: Vec::new(),
            // Fast enough to show a sub-second failover on one machine, slow enough not to
            // flap on a busy 2-core box.
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(150),
            failure_threshold: 2,
            promotion_delay: Duration::from_millis(50),
            hold_writes: Duration::from_secs(5),
            candidate_order: "most_caught_up".into(),
            force_static: false,
            log_format: LogFormat::Text,
            read_your_writes: false,
            read_your_writes_window: None,
            max_reader_lag: None,
            progress_interval: None,
        }
    }
}

impl ClusterOptions {
    /// The election measures replication progress for `most_caught_up` and whenever the proxy
    /// routes by it (read-your-writes, the lag gate): both read the topology's `replication`.
    pub fn needs_progress(&self) -> bool {
        self.candidate_order == "most_caught_up"
            || self.read_your_writes
            || self.max_reader_lag.is_some_and(|l| !l.is_empty())
            || self.progress_interval.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// host:port
    pub address: String,
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    Election,
    Static,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub api: Api,
    pub group: Group,
    pub bins: Binaries,
    pub nodes: Vec<NodeInfo>,
    pub proxy_url: String,
    pub admin_url: String,
    pub election_url: String,
    pub stream_log: PathBuf,
    pub token: String,
    pub token_file: PathBuf,
    pub topology_mode: TopologyMode,
    /// The writer given to a static-topology proxy.
    pub static_writer: Option<String>,
    pub client: HttpClient,
    /// rw-proxy issues and honours read-your-writes tokens.
    pub read_your_writes: bool,
}

fn duration_str(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `loadtest node`'s flags for a simulated replication lag (none for zero).
pub fn lag_args(lag: Duration) -> Vec<String> {
    if lag.is_zero() {
        vec![]
    } else {
        vec!["--lag".into(), humantime::format_duration(lag).to_string()]
    }
}

/// Refuses fixed ports that are taken, naming the flag to change.
fn check_port_free(port: u16, flag: &str) -> anyhow::Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            anyhow!("port {port} on 127.0.0.1 is not free ({e}): choose another with {flag}")
        })
}

fn port_or_free(p: Option<u16>, flag: &str) -> anyhow::Result<u16> {
    match p {
        Some(p) => {
            check_port_free(p, flag)?;
            Ok(p)
        }
        None => free_port(),
    }
}

/// writer-election's promotion preset for the storage node API `api`: the same paths the demo
/// nodes serve, so the cluster promotes exactly as production does.
pub fn promotion_config(api: Api) -> serde_json::Value {
    json!({ "preset": api.as_str() })
}

/// `listen` is the address writer-election binds (host:port).
pub fn election_config(
    opts: &ClusterOptions,
    listen: &str,
    nodes: &[NodeInfo],
    state_file: &Path,
    token_file: &Path,
) -> serde_json::Value {
    let mut election = json!({ "candidate_order": opts.candidate_order, "min_ready_nodes": 1 });
    if opts.needs_progress() {
        let mut progress = json!({ "path": "/replication/offset", "json_pointer": "/offset" });
        if let Some(every) = opts.progress_interval {
            progress["interval"] = json!(duration_str(every));
        }
        election["progress"] = progress;
    }
    json!({
        "listen": listen,
        "discovery": { "static": { "nodes": nodes.iter().map(|n| json!({"name": n.name, "address": n.address})).collect::<Vec<_>>() } },
        // No probe.path: the preset's readiness path is the default, as in production.
        "probe": {
            "interval": duration_str(opts.probe_interval),
            "timeout": duration_str(opts.probe_timeout),
            "failure_threshold": opts.failure_threshold,
            "success_threshold": 1
        },
        "election": election,
        "state": { "file": state_file },
        "promotion": promotion_config(opts.api),
        "switchover": { "token_file": token_file }
    })
}

/// `listen` and `admin` are the addresses rw-proxy binds (host:port).
pub fn proxy_config(
    opts: &ClusterOptions,
    listen: &str,
    admin: &str,
    topology: serde_json::Value,
) -> serde_json::Value {
    let mut cfg = json!({
        "listen": listen,
        "admin_listen": admin,
        "topology": topology,
        "failover": { "hold_writes": duration_str(opts.hold_writes) },
        "access_log": "errors"
    });
    let mut routing = serde_json::Map::new();
    if opts.read_your_writes {
        let mut ryw = json!({ "enabled": true });
        if let Some(w) = opts.read_your_writes_window {
            ryw["window"] = json!(duration_str(w));
        }
        routing.insert("read_your_writes".into(), ryw);
    }
    if let Some(lag) = opts.max_reader_lag.filter(|l| !l.is_empty()) {
        let mut gate = serde_json::Map::new();
        if let Some(o) = lag.offsets {
            gate.insert("offsets".into(), json!(o));
        }
        if let Some(d) = lag.duration {
            gate.insert("duration".into(), json!(duration_str(d)));
        }
        routing.insert("max_reader_lag".into(), gate.into());
    }
    if !routing.is_empty() {
        cfg["routing"] = routing.into();
    }
    cfg
}

/// `writer` is the node the election promoted: the only one that accepts writes.
pub fn static_topology(nodes: &[NodeInfo], writer: &str) -> serde_json::Value {
    let node = |n: &NodeInfo| json!({"name": n.name, "address": n.address});
    json!({ "static": {
        "writer": nodes.iter().find(|n| n.name == writer).map(node),
        "readers": nodes.iter().filter(|n| n.name != writer).map(node).collect::<Vec<_>>()
    }})
}

/// The arguments of `loadtest node` for the node `name` binding `listen`.
pub fn node_args(
    opts: &ClusterOptions,
    name: &str,
    listen: &str,
    stream_log: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["node", "--name", name, "--listen", listen, "--log"]
        .map(OsString::from)
        .into();
    args.push(stream_log.into());
    args.extend(
        [
            "--api",
            opts.api.as_str(),
            "--promotion-delay",
            &duration_str(opts.promotion_delay),
        ]
        .map(OsString::from),
    );
    args.extend(opts.node_args.iter().map(OsString::from));
    args
}

/// One value of a Prometheus text exposition, summed over its label sets; None when absent.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// JSON is YAML: writing configs as JSON spares a YAML emitter and gets quoting right.
fn write_config(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Last lines of a child's log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One of a cluster's children, by what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child<'a> {
    Node(&'a str),
    Election,
    Proxy,
}

/// Where a cluster's children run: [`Cluster::start`] runs them all here, the netns cluster
/// gives each a host of its own ([`crate::netns::cluster`]).
pub trait Hosts {
    /// A command that runs `program` where `child` lives.
    fn command(&self, child: Child<'_>, program: &Path) -> anyhow::Result<Command>;

    /// Called once a node's process is spawned, before anything waits for it.
    fn node_spawned(&mut self, _node: &NodeInfo) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Every child on this machine, on 127.0.0.1.
pub struct Local;

impl Hosts for Local {
    fn command(&self, _child: Child<'_>, program: &Path) -> anyhow::Result<Command> {
        Ok(Command::new(program))
    }
}

/// The addresses of a cluster's children: where each binds and where the client reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Names the temporary directory (`loadtest-<label>-...`) and the switchover token.
    pub label: &'static str,
    pub nodes: Vec<NodeInfo>,
    /// Where each node binds, in the order of `nodes`: its own address unless something relays
    /// to it.
    pub node_listen: Vec<String>,
    pub election_listen: String,
    pub election_url: String,
    pub proxy_listen: String,
    pub admin_listen: String,
    pub proxy_url: String,
    pub admin_url: String,
    /// Restart rw-proxy with a static topology when it does not turn ready following the
    /// election (see [`Cluster::start`]).
    pub static_fallback: bool,
}

impl Placement {
    /// Everything on 127.0.0.1, at the ports `opts` fixes or free ones.
    pub fn local(opts: &ClusterOptions) -> anyhow::Result<Placement> {
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let port = match opts.base_port {
                Some(b) => {
                    let p = b.checked_add(i as u16).ok_or_else(|| {
                        anyhow!("--base-port {b}: no room for {} nodes", opts.nodes)
                    })?;
                    check_port_free(p, "--base-port")?;
                    p
                }
                None => free_port()?,
            };
            let address = format!("127.0.0.1:{port}");
            nodes.push(NodeInfo {
                name: format!("node-{}", i + 1),
                url: format!("http://{address}"),
                address,
            });
        }
        let election = format!(
            "127.0.0.1:{}",
            port_or_free(opts.election_port, "--election-port")?
        );
        let proxy = format!(
            "127.0.0.1:{}",
            port_or_free(opts.proxy_port, "--proxy-port")?
        );
        let admin = format!(
            "127.0.0.1:{}",
            port_or_free(opts.admin_port, "--admin-port")?
        );
        Ok(Placement {
            label: "cluster",
            node_listen: nodes.iter().map(|n| n.address.clone()).collect(),
            nodes,
            election_url: format!("http://{election}"),
            election_listen: election,
            proxy_url: format!("http://{proxy}"),
            admin_url: format!("http://{admin}"),
            proxy_listen: proxy,
            admin_listen: admin,
            static_fallback: true,
        })
    }
}

impl Cluster {
    /// The whole cluster on 127.0.0.1.
    pub async fn start(opts: &ClusterOptions) -> anyhow::Result<Cluster> {
        if opts.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let bins = Binaries::find(opts.bin_dir.as_deref())?;
        Cluster::start_on(opts, bins, Placement::local(opts)?, &mut Local).await
    }

    /// Nodes first (each waited for on /health), then writer-election (until it elected a
    /// writer), then rw-proxy following it (until it is ready).
    pub async fn start_on(
        opts: &ClusterOptions,
        bins: Binaries,
        at: Placement,
        hosts: &mut dyn Hosts,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("loadtest-{}-", at.label))
            .tempdir()
            .context("creating a temporary directory")?;
        let d = dir.path().to_path_buf();
        let stream_log = d.join("stream.log");
        let token = format!("{}-{:032x}", at.label, rand::random::<u128>());
        let token_file = d.join("switchover-token");
        std::fs::write(&token_file, &token).context("writing the switchover token")?;

        let mut cluster = Cluster {
            dir,
            api: opts.api,
            group: Group::new(),
            bins,
            nodes: at.nodes.clone(),
            proxy_url: at.proxy_url.clone(),
            admin_url: at.admin_url.clone(),
            election_url: at.election_url.clone(),
            stream_log,
            token,
            token_file,
            topology_mode: if opts.force_static {
                TopologyMode::Static
            } else {
                TopologyMode::Election
            },
            static_writer: None,
            client: HttpClient::new(Duration::from_secs(5)),
            read_your_writes: opts.read_your_writes,
        };

        // Nodes first: the election probes them from its first second.
        for (n, listen) in at.nodes.iter().zip(&at.node_listen) {
            let mut cmd = cluster.child_command(
                hosts,
                Child::Node(&n.name),
                &cluster.bins.loadtest,
                &n.name,
                opts.log_format,
            )?;
            cmd.args(node_args(opts, &n.name, listen, &cluster.stream_log));
            cluster.group.spawn(&n.name, cmd)?;
            hosts.node_spawned(n)?;
        }
        for n in &at.nodes {
            cluster
                .wait_healthy(&n.name, &format!("{}/health", n.url))
                .await?;
        }

        let election_cfg = d.join("election.yaml");
        write_config(
            &election_cfg,
            &election_config(
                opts,
                &at.election_listen,
                &cluster.nodes,
                &d.join("election-state.json"),
                &cluster.token_file,
            ),
        )?;
        let mut cmd = cluster.child_command(
            hosts,
            Child::Election,
            &cluster.bins.writer_election,
            "writer-election",
            opts.log_format,
        )?;
        cmd.arg("--config").arg(&election_cfg);
        cluster.group.spawn("writer-election", cmd)?;
        cluster.wait_writer_elected().await?;

        cluster.start_proxy(opts, &at, hosts).await?;
        Ok(cluster)
    }

    /// `program` where `child` lives, its output in `<log>.log` of the cluster's directory.
    fn child_command(
        &self,
        hosts: &dyn Hosts,
        child: Child<'_>,
        program: &Path,
        log: &str,
        log_format: LogFormat,
    ) -> anyhow::Result<Command> {
        let path = self.child_log(log);
        let out =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let err = out.try_clone()?;
        let mut cmd = hosts.command(child, program)?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .arg("--log-format")
            .arg(log_format.as_str());
        Ok(cmd)
    }

    /// Starts rw-proxy following the election (topology.election_url). Where the placement
    /// allows it, a proxy that does not turn ready in time (a build that accepts
    /// `topology.election_url` but cannot follow yet) is restarted with a static topology
    /// naming the writer the election promoted, and the run says so.
    async fn start_proxy(
        &mut self,
        opts: &ClusterOptions,
        at: &Placement,
        hosts: &dyn Hosts,
    ) -> anyhow::Result<()> {
        let path = self.dir.path().join("proxy.yaml");
        let ready = format!("{}/health/ready", self.admin_url);
        let config = |topology| proxy_config(opts, &at.proxy_listen, &at.admin_listen, topology);
        let spawn = |cluster: &mut Cluster, cfg: &serde_json::Value| -> anyhow::Result<()> {
            write_config(&path, cfg)?;
            if let Some(why) = cluster.proxy_check(&path)? {
                bail!(
                    "rw-proxy --check rejects the generated config {}: {why}",
                    path.display()
                );
            }
            let mut cmd = cluster.child_command(
                hosts,
                Child::Proxy,
                &cluster.bins.rw_proxy,
                "rw-proxy",
                opts.log_format,
            )?;
            cmd.arg("--config").arg(&path);
            cluster.group.spawn("rw-proxy", cmd)?;
            Ok(())
        };
        if self.topology_mode == TopologyMode::Election {
            spawn(self, &config(json!({"election_url": self.election_url})))?;
            if !at.static_fallback {
                return self.wait_healthy("rw-proxy", &ready).await;
            }
            match self
                .wait_healthy_within("rw-proxy", &ready, Duration::from_secs(15))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "rw-proxy did not turn ready following writer-election; restarting it \
                         with a static topology: writer changes will not reach it"
                    );
                    tokio::task::block_in_place(|| {
                        self.group.stop_one("rw-proxy", Duration::from_secs(5))
                    });
                    self.group.forget("rw-proxy");
                    self.topology_mode = TopologyMode::Static;
                }
            }
        }
        let writer = self
            .topology()
            .await?
            .writer
            .map(|w| w.name)
            .ok_or_else(|| anyhow!("writer-election has no writer for the static topology"))?;
        let fixed = config(static_topology(&self.nodes, &writer));
        self.static_writer = Some(writer);
        spawn(self, &fixed)?;
        self.wait_healthy("rw-proxy", &ready).await
    }

    /// What `rw-proxy --check` says against `cfg`, or None when it accepts it.
    fn proxy_check(&self, cfg: &Path) -> anyhow::Result<Option<String>> {
        let out = Command::new(&self.bins.rw_proxy)
            .arg("--check")
            .arg("--config")
            .arg(cfg)
            .output()
            .with_context(|| format!("running {} --check", self.bins.rw_proxy.display()))?;
        Ok((!out.status.success()).then(|| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }))
    }

    pub fn child_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Fails, with the child's last log lines, if a child exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some((n, st)) = self.group.reap().into_iter().next() {
            bail!(
                "{n} exited during start-up ({st}); its log:\n{}",
                log_tail(&self.child_log(&n), 20)
            );
        }
        Ok(())
    }

    /// Polls `url` until it answers 200; fails early, with the child's last log lines, if the
    /// child exits.
    async fn wait_healthy(&mut self, name: &str, url: &str) -> anyhow::Result<()> {
        self.wait_healthy_within(name, url, Duration::from_secs(60))
            .await
    }

    async fn wait_healthy_within(
        &mut self,
        name: &str,
        url: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.client.get(url).await.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{name} did not answer 200 on {url} within {within:?}; its log:\n{}",
                    log_tail(&self.child_log(name), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_writer_elected(&mut self) -> anyhow::Result<Topology> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(t) = self.topology().await {
                if t.writer.is_some() {
                    return Ok(t);
                }
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "writer-election elected no writer within 60s; its log:\n{}",
                    log_tail(&self.child_log("writer-election"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn topology(&self) -> anyhow::Result<Topology> {
        let r = self
            .client
            .get(&format!("{}/v1/topology", self.election_url))
            .await?;
        if r.status != 200 {
            bail!("GET /v1/topology: HTTP {}: {}", r.status, r.text());
        }
        serde_json::from_slice(&r.body).context("GET /v1/topology: not a topology document")
    }

    /// A planned switchover (POST /v1/switchover with the cluster's token).
    pub async fn switchover(&self) -> anyhow::Result<Reply> {
        let auth = format!("Bearer {}", self.token);
        // A switchover answers only after the proxies drained and the new writer was promoted:
        // longer than the cluster client's timeout.
        HttpClient::new(Duration::from_secs(60))
            .send(
                http::Method::POST,
                &format!("{}/v1/switchover", self.election_url),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                "{}",
            )
            .await
    }

    /// One value of rw-proxy's metrics (summed over label sets), None when absent or
    /// unreachable.
    pub async fn proxy_metric(&self, name: &str) -> Option<f64> {
        let r = self
            .client
            .get(&format!("{}/metrics", self.admin_url))
            .await
            .ok()?;
        metric_value(&r.text(), name)
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.group.get(name).map(|c| c.pid())
    }

    /// SIGTERM to every child, SIGKILL after `grace`, wait for all. The directory goes when
    /// the Cluster is dropped.
    pub fn stop(&mut self, grace: Duration) {
        self.group.shutdown(grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeInfo> {
        vec![NodeInfo {
            name: "node-1".into(),
            address: "127.0.0.1:1".into(),
            url: "http://127.0.0.1:1".into(),
        }]
    }

    #[test]
    fn defaults_leave_routing_alone_and_measure_progress_for_most_caught_up() {
        let opts = ClusterOptions::default();
        let p = proxy_config(&opts, "127.0.0.1:1", "127.0.0.1:2", json!({}));
        assert!(p.get("routing").is_none(), "{p}");
        let e = election_config(
            &opts,
            "127.0.0.1:3",
            &nodes(),
            Path::new("s"),
            Path::new("t"),
        );
        assert_eq!(
            e["election"]["progress"],
            json!({ "path": "/replication/offset", "json_pointer": "/offset" })
        );
        let by_name = ClusterOptions {
            candidate_order: "name".into(),
            ..ClusterOptions::default()
        };
        let e = election_config(&by_name, "x:3", &nodes(), Path::new("s"), Path::new("t"));
        assert!(e["election"].get("progress").is_none(), "{e}");
    }

    #[test]
    fn read_your_writes_and_the_lag_gate_turn_progress_on() {
        let opts = ClusterOptions {
            candidate_order: "name".into(),
            read_your_writes: true,
            read_your_writes_window: Some(Duration::from_secs(3)),
            max_reader_lag: Some(MaxReaderLag {
                offsets: Some(50),
                duration: Some(Duration::from_millis(1500)),
            }),
            progress_interval: Some(Duration::from_millis(100)),
            ..ClusterOptions::default()
        };
        let p = proxy_config(&opts, "127.0.0.1:1", "127.0.0.1:2", json!({}));
        assert_eq!(
            p["routing"],
            json!({
                "read_your_writes": { "enabled": true, "window": "3000ms" },
                "max_reader_lag": { "offsets": 50, "duration": "1500ms" }
            })
        );
        let e = election_config(&opts, "x:3", &nodes(), Path::new("s"), Path::new("t"));
        assert_eq!(e["election"]["progress"]["interval"], "100ms");
        assert_eq!(e["election"]["progress"]["path"], "/replication/offset");
    }

    #[test]
    fn the_configs_bind_the_addresses_given_and_name_every_node() {
        let opts = ClusterOptions::default();
        let e = election_config(
            &opts,
            "0.0.0.0:8081",
            &nodes(),
            Path::new("/d/state.json"),
            Path::new("/d/token"),
        );
        assert_eq!(e["listen"], "0.0.0.0:8081");
        assert_eq!(
            e["discovery"]["static"]["nodes"],
            json!([{ "name": "node-1", "address": "127.0.0.1:1" }])
        );
        assert_eq!(e["probe"]["interval"], "200ms");
        assert_eq!(e["probe"]["timeout"], "150ms");
        assert_eq!(e["state"]["file"], "/d/state.json");
        assert_eq!(e["switchover"]["token_file"], "/d/token");
        assert_eq!(e["promotion"], json!({ "preset": "microstream" }));
        let p = proxy_config(
            &opts,
            "0.0.0.0:8080",
            "0.0.0.0:9901",
            json!({ "election_url": "http://e" }),
        );
        assert_eq!(p["listen"], "0.0.0.0:8080");
        assert_eq!(p["admin_listen"], "0.0.0.0:9901");
        assert_eq!(p["topology"]["election_url"], "http://e");
        assert_eq!(p["failover"]["hold_writes"], "5000ms");
    }

    #[test]
    fn a_static_topology_names_the_writer_and_the_rest_as_readers() {
        let two = vec![
            nodes().remove(0),
            NodeInfo {
                name: "node-2".into(),
                address: "127.0.0.1:2".into(),
                url: "http://127.0.0.1:2".into(),
            },
        ];
        assert_eq!(
            static_topology(&two, "node-2"),
            json!({ "static": {
                "writer": { "name": "node-2", "address": "127.0.0.1:2" },
                "readers": [{ "name": "node-1", "address": "127.0.0.1:1" }]
            }})
        );
    }

    #[test]
    fn a_node_gets_its_name_address_log_api_delay_and_extra_flags() {
        let opts = ClusterOptions {
            api: Api::EclipseDatagrid,
            promotion_delay: Duration::from_millis(1500),
            node_args: lag_args(Duration::from_millis(300)),
            ..ClusterOptions::default()
        };
        let args = node_args(
            &opts,
            "node-2",
            "127.0.0.1:9101",
            Path::new("/d/stream.log"),
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "node",
                "--name",
                "node-2",
                "--listen",
                "127.0.0.1:9101",
                "--log",
                "/d/stream.log",
                "--api",
                Api::EclipseDatagrid.as_str(),
                "--promotion-delay",
                "1500ms",
                "--lag",
                "300ms"
            ]
        );
        assert!(lag_args(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_metric_is_summed_over_its_label_sets_and_other_names_do_not_count() {
        let text = "# TYPE rw_proxy_held gauge\n\
                    rw_proxy_held{kind=\"a\"} 2\n\
                    rw_proxy_held{kind=\"b\"} 3.5\n\
                    rw_proxy_held_total 100\n\
                    rw_proxy_writer_epoch 7\n";
        assert_eq!(metric_value(text, "rw_proxy_held"), Some(5.5));
        assert_eq!(metric_value(text, "rw_proxy_writer_epoch"), Some(7.0));
        assert_eq!(metric_value(text, "rw_proxy_missing"), None);
    }

    #[test]
    fn the_local_placement_puts_every_child_on_loopback_at_the_ports_asked_for() {
        let (base, e, p, a) = (
            free_port().unwrap(),
            free_port().unwrap(),
            free_port().unwrap(),
            free_port().unwrap(),
        );
        let opts = ClusterOptions {
            nodes: 1,
            base_port: Some(base),
            election_port: Some(e),
            proxy_port: Some(p),
            admin_port: Some(a),
            ..ClusterOptions::default()
        };
        let at = Placement::local(&opts).unwrap();
        assert_eq!(at.nodes[0].address, format!("127.0.0.1:{base}"));
        assert_eq!(at.nodes[0].url, format!("http://127.0.0.1:{base}"));
        assert_eq!(at.node_listen, [at.nodes[0].address.clone()]);
        assert_eq!(at.election_url, format!("http://127.0.0.1:{e}"));
        assert_eq!(at.election_listen, format!("127.0.0.1:{e}"));
        assert_eq!(at.proxy_url, format!("http://127.0.0.1:{p}"));
        assert_eq!(at.admin_listen, format!("127.0.0.1:{a}"));
        assert!(at.static_fallback);
        // A fixed port that is taken is refused, naming the flag.
        let _held = TcpListener::bind(("127.0.0.1", e)).unwrap();
        let err = Placement::local(&opts).unwrap_err().to_string();
        assert!(err.contains("--election-port"), "{err}");
    }
}
