//! What the process-fault scenario and the partition scenario do alike around their fault:
//! check the flags, build the cluster's options, note the writer and follow the topology,
//! drive the load, and afterwards let every live node catch up with the log and read each
//! acknowledged write back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use topology_client::topology::Topology;

use super::check::ReadBack;
use super::report::WriterRef;
use super::FailoverArgs;
use crate::cluster::{lag_args, Cluster, ClusterOptions, NodeInfo};
use crate::httpc::HttpClient;
use crate::logging::LogFormat;
use crate::node::log::{read_all, Line};
use crate::run::history::WriteRecord;
use crate::run::{self, LoadConfig, Mode};

/// The flags that make no run: checked before anything starts, in the order they are named.
pub fn validate(args: &FailoverArgs) -> anyhow::Result<()> {
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
    if args.fault.partition.is_some() && args.fault_after + args.fault_for >= args.duration {
        bail!(
            "--fault-after {:?} + --fault-for {:?} must end before --duration {:?}",
            args.fault_after,
            args.fault_for,
            args.duration
        );
    }
    if args.nodes < 2 {
        bail!("--nodes {}: a failover needs at least 2 nodes", args.nodes);
    }
    Ok(())
}

/// The cluster both scenarios start; the process-fault one adds read-your-writes.
pub fn cluster_options(args: &FailoverArgs, log_format: LogFormat) -> ClusterOptions {
    ClusterOptions {
        nodes: args.nodes,
        api: args.api,
        bin_dir: args.bin_dir.clone(),
        node_args: lag_args(args.lag),
        log_format,
        ..ClusterOptions::default()
    }
}

/// The load through rw-proxy: open loop, every write a key of its own, the history recorded.
pub fn load_config(args: &FailoverArgs, target: run::Target) -> LoadConfig {
    LoadConfig {
        target,
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
    }
}

/// The writer before the fault and every topology writer-election publishes from then on.
/// Dropping it stops following.
pub struct Watch {
    pub first: Topology,
    pub old_writer: WriterRef,
    timeline: Arc<Mutex<Vec<(Instant, Topology)>>>,
    follower: JoinHandle<()>,
}

impl Watch {
    pub async fn start(cluster: &Cluster) -> anyhow::Result<Watch> {
        let first = cluster.topology().await?;
        let Some(old) = &first.writer else {
            bail!("writer-election has no writer before the fault");
        };
        let old_writer = WriterRef {
            name: old.name.clone(),
            epoch: first.epoch,
        };
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
        Ok(Watch {
            first,
            old_writer,
            timeline,
            follower,
        })
    }

    /// Stops following; the topologies seen, each with when it was.
    pub fn stop(self) -> Vec<(Instant, Topology)> {
        self.follower.abort();
        self.timeline.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// When a topology naming another writer than `old` was first seen at or after `fault_at`.
pub fn first_publication(
    timeline: &[(Instant, Topology)],
    fault_at: Instant,
    old: &str,
) -> Option<Instant> {
    timeline
        .iter()
        .find(|(t, topo)| *t >= fault_at && topo.writer.as_ref().is_some_and(|w| w.name != old))
        .map(|(t, _)| *t)
}

/// Lets every node of `live` apply the whole shared log, then reads each acknowledged write of
/// `history` back from them and through the proxy. Returns the log as it was read.
pub async fn settle(
    cluster: &Cluster,
    live: &[NodeInfo],
    history: &[WriteRecord],
) -> anyhow::Result<(Vec<Line>, ReadBack)> {
    let lines = read_all(&cluster.stream_log).context("reading the shared log")?;
    for n in live {
        wait_caught_up(&cluster.client, &n.url, lines.len() as u64).await?;
    }
    let rb = read_back(&cluster.client, &cluster.proxy_url, live, history).await;
    Ok((lines, rb))
}

async fn wait_caught_up(client: &HttpClient, url: &str, lines: u64) -> anyhow::Result<()> {
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
async fn read_back(
    client: &HttpClient,
    proxy_url: &str,
    live: &[NodeInfo],
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FailoverArgs,
    }

    fn args(flags: &[&str]) -> FailoverArgs {
        Cli::try_parse_from(std::iter::once("failover").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn flags_that_make_no_run_are_refused_naming_the_flag() {
        assert!(validate(&args(&["--kill", "writer"])).is_ok());
        let refused = |flags: &[&str], flag: &str| {
            let e = validate(&args(flags)).unwrap_err().to_string();
            assert!(e.contains(flag), "{flags:?}: {e}");
        };
        refused(
            &["--kill", "writer", "--token-pair-rate=-1"],
            "--token-pair-rate",
        );
        refused(
            &["--kill", "writer", "--fault-after", "8s"],
            "--fault-after",
        );
        refused(&["--kill", "writer", "--nodes", "1"], "--nodes");
        // --fault-for only counts for a partition, which is healed before the load ends.
        assert!(validate(&args(&["--kill", "writer", "--fault-for", "6s"])).is_ok());
        refused(
            &["--partition", "proxy-writer", "--fault-for", "5s"],
            "--fault-for",
        );
    }

    #[test]
    fn the_cluster_gets_the_nodes_api_and_lag_asked_for() {
        let o = cluster_options(
            &args(&["--switchover", "--nodes", "4", "--lag", "300ms"]),
            LogFormat::Json,
        );
        assert_eq!(o.nodes, 4);
        assert_eq!(o.node_args, ["--lag", "300ms"]);
        assert_eq!(o.log_format, LogFormat::Json);
        assert!(!o.read_your_writes);
        assert!(cluster_options(&args(&["--switchover"]), LogFormat::Text)
            .node_args
            .is_empty());
    }

    /// A topology document naming `writer` (or none) at `epoch`.
    pub(crate) fn topo(writer: Option<&str>, epoch: u64) -> Topology {
        serde_json::from_value(serde_json::json!({
            "epoch": epoch,
            "revision": epoch,
            "writer": writer.map(|w| serde_json::json!({ "name": w, "address": "a:1" })),
        }))
        .unwrap()
    }

    #[test]
    fn the_publication_is_the_first_topology_after_the_fault_with_another_writer() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let timeline = vec![
            (at(0), topo(Some("node-1"), 1)),
            // Before the fault: not the failover, even with another writer.
            (at(5), topo(Some("node-3"), 2)),
            (at(20), topo(None, 2)),
            (at(30), topo(Some("node-1"), 3)),
            (at(40), topo(Some("node-2"), 4)),
            (at(50), topo(Some("node-3"), 5)),
        ];
        assert_eq!(first_publication(&timeline, at(10), "node-1"), Some(at(40)));
        assert_eq!(first_publication(&timeline[..4], at(10), "node-1"), None);
    }
}
