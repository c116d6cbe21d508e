//! The failover cluster of [`crate::cluster`], but every process on a host of its own: one
//! namespace per storage node, one for writer-election, one for rw-proxy and one for the client
//! (the thread that builds this, see [`run_in_client`]). The nodes still share the log file:
//! the kit partitions the network between the processes, not the event stream.
//!
//! Each node listens on its loopback and is reached through a [`Relay`] on its own address, so
//! a delay can be put on the node's link at run time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use topology_client::topology::Topology;

use super::relay::Relay;
use super::{block_on_in, Lab, NsHandle};
use crate::cluster::{election_config, proxy_config, Binaries, ClusterOptions, NodeInfo};
use crate::httpc::HttpClient;
use crate::logging::LogFormat;
use crate::procs::Group;

pub const NODE_PORT: u16 = 9001;
const NODE_INNER_PORT: u16 = 9101;
pub const ELECTION_PORT: u16 = 8081;
pub const PROXY_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9901;
pub const ELECTION: &str = "election";
pub const PROXY: &str = "proxy";
pub const CLIENT: &str = "client";

pub struct NetCluster {
    /// Stopped before the lab goes: processes first, then their namespaces.
    pub group: Group,
    pub relays: Vec<(String, Relay)>,
    pub nodes: Vec<NodeInfo>,
    pub proxy_url: String,
    pub admin_url: String,
    pub election_url: String,
    pub stream_log: PathBuf,
    pub client: HttpClient,
    pub dir: tempfile::TempDir,
    pub lab: Lab,
}

fn write_config(path: &std::path::Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `f` on a thread inside the lab's client namespace, on a runtime whose every thread is
/// in that namespace too, so every socket the scenario opens is the client host's.
pub fn run_in_client<T: Send + 'static>(
    client_ns: NsHandle,
    f: impl FnOnce() -> super::lab::LocalTask<anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    // A scenario that panics is a failed run with a message, not a crashed command.
    let run = std::panic::AssertUnwindSafe(move || block_on_in(client_ns, "netns-client", f));
    std::panic::catch_unwind(run)
        .map_err(|_| anyhow!("the client thread panicked"))?
        .context("running the client's runtime")?
}

impl NetCluster {
    /// Builds the lab and starts the cluster in it. Must run on a thread in the client's
    /// namespace (see [`run_in_client`]) for its HTTP calls to reach the hosts.
    pub async fn start(lab: Lab, opts: &ClusterOptions) -> anyhow::Result<NetCluster> {
        let bins = Binaries::find(opts.bin_dir.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix("loadtest-netns-")
            .tempdir()
            .context("creating a temporary directory")?;
        let d = dir.path().to_path_buf();
        let stream_log = d.join("stream.log");
        let token_file = d.join("switchover-token");
        std::fs::write(
            &token_file,
            format!("netns-{:032x}", rand::random::<u128>()),
        )?;
        let nodes: Vec<NodeInfo> = (1..=opts.nodes)
            .map(|i| {
                let name = format!("node-{i}");
                let address = format!("{}:{NODE_PORT}", lab.ip(&name)?);
                Ok(NodeInfo {
                    url: format!("http://{address}"),
                    name,
                    address,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let election_url = format!("http://{}:{ELECTION_PORT}", lab.ip(ELECTION)?);
        let proxy_ip = lab.ip(PROXY)?;
        let mut c = NetCluster {
            group: Group::new(),
            relays: Vec::new(),
            nodes: nodes.clone(),
            proxy_url: format!("http://{proxy_ip}:{PROXY_PORT}"),
            admin_url: format!("http://{proxy_ip}:{ADMIN_PORT}"),
            election_url: election_url.clone(),
            stream_log: stream_log.clone(),
            client: HttpClient::new(Duration::from_secs(5)),
            dir,
            lab,
        };
        let child =
            |c: &NetCluster, host: &str, program: &std::path::Path, log: &str, fmt: LogFormat| {
                let out = std::fs::File::create(d.join(log))?;
                let err = out.try_clone()?;
                let mut cmd = c.lab.command(host, program)?;
                cmd.stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .arg("--log-format")
                    .arg(fmt.as_str());
                anyhow::Ok(cmd)
            };
        for n in &nodes {
            let mut cmd = child(
                &c,
                &n.name,
                &bins.loadtest,
                &format!("{}.log", n.name),
                opts.log_format,
            )?;
            cmd.args(["node", "--name", &n.name])
                .arg("--listen")
                .arg(format!("127.0.0.1:{NODE_INNER_PORT}"))
                .arg("--log")
                .arg(&stream_log)
                .args(["--api", opts.api.as_str()])
                .arg("--promotion-delay")
                .arg(format!("{}ms", opts.promotion_delay.as_millis()))
                .args(&opts.node_args);
            c.group.spawn(&n.name, cmd)?;
            let ip = c.lab.ip(&n.name)?;
            let relay = Relay::start(
                Some(NsHandle::open(&c.lab.host(&n.name)?.ns)?),
                SocketAddr::from((ip, NODE_PORT)),
                SocketAddr::from(([127, 0, 0, 1], NODE_INNER_PORT)),
            )?;
            c.relays.push((n.name.clone(), relay));
        }
        for n in &nodes {
            c.wait_ok(&n.name, &format!("{}/health", n.url)).await?;
        }
        let mut ecfg = election_config(
            opts,
            ELECTION_PORT,
            &nodes,
            &d.join("election-state.json"),
            &token_file,
        );
        ecfg["listen"] = json!(format!("0.0.0.0:{ELECTION_PORT}"));
        let epath = d.join("election.yaml");
        write_config(&epath, &ecfg)?;
        let mut cmd = child(
            &c,
            ELECTION,
            &bins.writer_election,
            "writer-election.log",
            opts.log_format,
        )?;
        cmd.arg("--config").arg(&epath);
        c.group.spawn("writer-election", cmd)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if c.topology().await.is_ok_and(|t| t.writer.is_some()) {
                break;
            }
            c.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "writer-election elected no writer within 60s; {}",
                    c.tail("writer-election")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut pcfg = proxy_config(
            opts,
            PROXY_PORT,
            ADMIN_PORT,
            json!({ "election_url": election_url }),
        );
        pcfg["listen"] = json!(format!("0.0.0.0:{PROXY_PORT}"));
        pcfg["admin_listen"] = json!(format!("0.0.0.0:{ADMIN_PORT}"));
        let ppath = d.join("proxy.yaml");
        write_config(&ppath, &pcfg)?;
        let mut cmd = child(&c, PROXY, &bins.rw_proxy, "rw-proxy.log", opts.log_format)?;
        cmd.arg("--config").arg(&ppath);
        c.group.spawn("rw-proxy", cmd)?;
        let ready = format!("{}/health/ready", c.admin_url);
        c.wait_ok("rw-proxy", &ready).await?;
        Ok(c)
    }

    fn tail(&self, name: &str) -> String {
        format!(
            "its log:\n{}",
            crate::cluster::log_tail(&self.dir.path().join(format!("{name}.log")), 20)
        )
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some((n, st)) = self.group.reap().into_iter().next() {
            bail!("{n} exited during start-up ({st}); {}", self.tail(&n));
        }
        Ok(())
    }

    async fn wait_ok(&mut self, name: &str, url: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.client.get(url).await.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{name} did not answer 200 on {url} within 60s; {}",
                    self.tail(name)
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

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn relay(&self, node: &str) -> anyhow::Result<&Relay> {
        self.relays
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("no relay for {node}"))
    }

    /// One value of the proxy's metrics (summed over label sets), None when absent.
    pub async fn proxy_metric(&self, name: &str) -> Option<f64> {
        let r = self
            .client
            .get(&format!("{}/metrics", self.admin_url))
            .await
            .ok()?;
        let mut found = None;
        for l in r.text().lines() {
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

    /// Every process stopped (SIGTERM, SIGKILL after `grace`), relays closed.
    pub fn stop(&mut self, grace: Duration) {
        self.group.shutdown(grace);
        self.relays.clear();
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
