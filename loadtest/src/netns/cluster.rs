//! The failover cluster of [`crate::cluster`], but every process on a host of its own: one
//! namespace per storage node, one for writer-election, one for rw-proxy and one for the client
//! (the thread that builds this, see [`run_in_client`]). The nodes still share the log file:
//! the kit partitions the network between the processes, not the event stream.
//!
//! Each node listens on its loopback and is reached through a [`Relay`] on its own address, so
//! a delay can be put on the node's link at run time.
//!
//! The start-up itself (configs, children, waits) is [`Cluster::start_on`]'s: this module adds
//! only the lab's addresses, commands that run in the namespaces, and the relays.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};

use super::relay::Relay;
use super::{block_on_in, Lab, NsHandle};
use crate::cluster::{Binaries, Child, Cluster, ClusterOptions, Hosts, NodeInfo, Placement};

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
    pub cluster: Cluster,
    pub relays: Vec<(String, Relay)>,
    pub lab: Lab,
}

/// Each child in its host's namespace; each node behind a relay on its host's address.
struct Namespaces<'a> {
    lab: &'a Lab,
    relays: Vec<(String, Relay)>,
}

impl Hosts for Namespaces<'_> {
    fn command(&self, child: Child<'_>, program: &Path) -> anyhow::Result<Command> {
        let host = match child {
            Child::Node(name) => name,
            Child::Election => ELECTION,
            Child::Proxy => PROXY,
        };
        Ok(self.lab.command(host, program)?)
    }

    fn node_spawned(&mut self, node: &NodeInfo) -> anyhow::Result<()> {
        let relay = Relay::start(
            Some(NsHandle::open(&self.lab.host(&node.name)?.ns)?),
            SocketAddr::from((self.lab.ip(&node.name)?, NODE_PORT)),
            SocketAddr::from(([127, 0, 0, 1], NODE_INNER_PORT)),
        )?;
        self.relays.push((node.name.clone(), relay));
        Ok(())
    }
}

/// The lab's addresses: every node at NODE_PORT on its host's address (its relay), the
/// election and the proxy bound to every address of their hosts.
fn placement(lab: &Lab, nodes: usize) -> anyhow::Result<Placement> {
    let nodes: Vec<NodeInfo> = (1..=nodes)
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
    let proxy_ip = lab.ip(PROXY)?;
    Ok(Placement {
        label: "netns",
        node_listen: vec![format!("127.0.0.1:{NODE_INNER_PORT}"); nodes.len()],
        nodes,
        election_listen: format!("0.0.0.0:{ELECTION_PORT}"),
        election_url: format!("http://{}:{ELECTION_PORT}", lab.ip(ELECTION)?),
        proxy_listen: format!("0.0.0.0:{PROXY_PORT}"),
        admin_listen: format!("0.0.0.0:{ADMIN_PORT}"),
        proxy_url: format!("http://{proxy_ip}:{PROXY_PORT}"),
        admin_url: format!("http://{proxy_ip}:{ADMIN_PORT}"),
        // A proxy that cannot follow the election would make the run meaningless.
        static_fallback: false,
    })
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
        let at = placement(&lab, opts.nodes)?;
        let mut hosts = Namespaces {
            lab: &lab,
            relays: Vec::new(),
        };
        let cluster = Cluster::start_on(opts, bins, at, &mut hosts).await?;
        let relays = std::mem::take(&mut hosts.relays);
        Ok(NetCluster {
            cluster,
            relays,
            lab,
        })
    }

    pub fn relay(&self, node: &str) -> anyhow::Result<&Relay> {
        self.relays
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("no relay for {node}"))
    }

    /// Every process stopped (SIGTERM, SIGKILL after `grace`), relays closed.
    pub fn stop(&mut self, grace: Duration) {
        self.cluster.stop(grace);
        self.relays.clear();
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
