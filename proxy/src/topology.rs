//! The topology as the hot path needs it, and where it comes from.
//!
//! A [`TopologySnapshot`] is immutable: a [`TopologySource`] builds a new one for every change
//! and publishes it through a [`TopologySink`] (the proxy's shared state swaps it in with one
//! atomic store; requests never lock). Routing does not know or care which source is running:
//! [`StaticSource`] (`topology.static`) or `follow::ElectionSource` (`topology.election_url`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderValue;
use topology_client::topology::{NodeProgress, NodeRef, Topology};

use crate::balance::UpstreamStats;
use crate::config::StaticTopology;

/// A node ready to dial: name for logs and metrics, address resolved once per snapshot.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    /// `host:port` as published.
    pub address: Arc<str>,
    pub socket: SocketAddr,
    pub stats: Arc<UpstreamStats>,
    /// How far this node has replicated the writer's stream, as the snapshot's
    /// [`ReplicationView`] published it; `None` when that round could not read it, or when the
    /// snapshot has no replication view.
    pub progress: Option<Progress>,
}

/// One node's published replication progress (`replication.nodes[]` of the topology document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The node has applied everything the writer had at this offset.
    pub offset: u64,
    /// How far the writer was ahead of it, in offsets.
    pub lag_offsets: u64,
    /// How long before the round's `measured_at_ms` the writer was at `offset`.
    pub lag_ms: u64,
    /// `lag_ms` is only a lower bound: the node is behind all the history writer-election keeps.
    pub lag_at_least: bool,
}

impl Progress {
    fn of(n: &NodeProgress) -> Progress {
        Progress {
            offset: n.offset,
            lag_offsets: n.lag_offsets,
            lag_ms: n.lag_ms,
            lag_at_least: n.lag_at_least,
        }
    }
}

/// The round of replication measurements a snapshot carries: only one whose epoch is the
/// document's own, since offsets compare only within one writer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationView {
    pub epoch: u64,
    pub writer_offset: u64,
    /// When the round read the writer's offset, unix ms by writer-election's clock.
    pub measured_at_ms: u64,
}

/// A planned switchover under way (`topology.switchover`, see the failover protocol): the
/// writer is still `from`, new writes are held until the election publishes `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverView {
    pub id: u64,
    /// `draining`: every proxy holds new writes and acknowledges once its writes in flight to
    /// the old writer are done.
    pub state: Arc<str>,
    pub from: Arc<str>,
    pub to: Arc<str>,
}

impl SwitchoverView {
    pub fn is_draining(&self) -> bool {
        &*self.state == "draining"
    }
}

/// An immutable view of the cluster, as routing sees it.
#[derive(Debug, Clone)]
pub struct TopologySnapshot {
    pub epoch: u64,
    pub revision: u64,
    pub writer: Option<Upstream>,
    /// Ready nodes other than the writer.
    pub readers: Vec<Upstream>,
    /// Set while a planned switchover is under way (writes are held).
    pub switchover: Option<SwitchoverView>,
    /// The replication round published with this topology, if any (each upstream's share of it
    /// is its [`Upstream::progress`]).
    pub replication: Option<ReplicationView>,
    /// `X-Writer-Epoch` value, built once.
    pub epoch_header: HeaderValue,
    /// When this snapshot was received; `None` for the placeholder before any source spoke.
    pub received_at: Option<Instant>,
}

impl TopologySnapshot {
    /// The placeholder before the first topology: no writer, no readers, not ready.
    pub fn none() -> Self {
        TopologySnapshot {
            epoch: 0,
            revision: 0,
            writer: None,
            readers: Vec::new(),
            switchover: None,
            replication: None,
            epoch_header: HeaderValue::from_static("0"),
            received_at: None,
        }
    }

    pub fn is_known(&self) -> bool {
        self.received_at.is_some()
    }

    /// Builds a snapshot from the wire document. `resolved` maps each published address to a
    /// socket address (see [`resolve_addresses`]); nodes without one are left out and listed in
    /// the returned warnings. `previous` lends its per-upstream stats to nodes that stay.
    /// `t.replication` is taken only when it is of the document's epoch.
    pub fn from_wire(
        t: &Topology,
        resolved: &HashMap<String, SocketAddr>,
        previous: &TopologySnapshot,
    ) -> (TopologySnapshot, Vec<String>) {
        let mut warnings = Vec::new();
        let replication = t.replication.as_ref().filter(|r| r.epoch == t.epoch);
        let by_name: HashMap<&str, &NodeProgress> = replication
            .iter()
            .flat_map(|r| r.nodes.iter().map(|p| (p.name.as_str(), p)))
            .collect();
        let progress = |name: &str| by_name.get(name).map(|p| Progress::of(p));
        let mut upstream = |n: &NodeRef, role: &str| -> Option<Upstream> {
            let Some(socket) = resolved.get(&n.address).copied() else {
                warnings.push(format!(
                    "{role} {} ({}) left out: its address does not resolve",
                    n.name, n.address
                ));
                return None;
            };
            let stats = previous
                .all()
                .find(|u| *u.address == *n.address)
                .map(|u| u.stats.clone())
                .unwrap_or_default();
            Some(Upstream {
                name: n.name.as_str().into(),
                address: n.address.as_str().into(),
                socket,
                stats,
                progress: progress(&n.name),
            })
        };
        let writer = t.writer.as_ref().and_then(|w| upstream(w, "writer"));
        let readers = t
            .readers
            .iter()
            .filter(|r| t.writer.as_ref().is_none_or(|w| w.address != r.address))
            .filter_map(|r| upstream(r, "reader"))
            .collect();
        let switchover = t.switchover.as_ref().map(|s| SwitchoverView {
            id: s.id,
            state: s.state.as_str().into(),
            from: s.from.as_str().into(),
            to: s.to.as_str().into(),
        });
        let snapshot = TopologySnapshot {
            epoch: t.epoch,
            revision: t.revision,
            writer,
            readers,
            switchover,
            replication: replication.map(|r| ReplicationView {
                epoch: r.epoch,
                writer_offset: r.writer_offset,
                measured_at_ms: r.measured_at_ms,
            }),
            epoch_header: HeaderValue::from(t.epoch),
            received_at: Some(Instant::now()),
        };
        (snapshot, warnings)
    }

    /// Writer first, then readers.
    pub fn all(&self) -> impl Iterator<Item = &Upstream> {
        self.writer.iter().chain(self.readers.iter())
    }
}

/// Resolves every address of a topology. IP literals need no lookup; names go through the
/// system resolver (tokio's blocking pool), once per published topology, never per request.
pub async fn resolve_addresses(t: &Topology) -> HashMap<String, SocketAddr> {
    let mut out = HashMap::new();
    let addresses = t.writer.iter().chain(t.readers.iter()).map(|n| &n.address);
    for address in addresses {
        if out.contains_key(address) {
            continue;
        }
        if let Ok(sa) = address.parse::<SocketAddr>() {
            out.insert(address.clone(), sa);
            continue;
        }
        match tokio::net::lookup_host(address.as_str()).await {
            Ok(mut addrs) => {
                if let Some(sa) = addrs.next() {
                    out.insert(address.clone(), sa);
                }
            }
            Err(e) => tracing::warn!(%address, error = %e, "cannot resolve upstream address"),
        }
    }
    out
}

/// Where a source publishes: implemented by the proxy's shared state.
pub trait TopologySink: Send + Sync {
    /// The snapshot routing uses now.
    fn current(&self) -> Arc<TopologySnapshot>;
    /// Swaps in a new snapshot. Returns false when it was refused (an epoch lower than one
    /// already seen: the epoch is a fencing token and only moves forward).
    fn publish(&self, snapshot: TopologySnapshot) -> bool;
    /// The source reached its origin (`true`) or failed to (`false`); feeds
    /// `rw_proxy_topology_age_seconds` and the election metrics. Static sources never call it.
    fn contact(&self, _ok: bool) {}
}

/// Something that knows the topology and keeps the proxy's copy current.
#[async_trait]
pub trait TopologySource: Send + Sync {
    /// For logs: "static", "election http://...".
    fn describe(&self) -> String;
    /// Publishes the topology and keeps it current. Returns when there is nothing more to do
    /// (a static source returns after its one publication); the caller aborts it on reload or
    /// shutdown.
    async fn run(&self, sink: Arc<dyn TopologySink>);
}

/// `topology.static`: one publication per (re)load.
pub struct StaticSource {
    pub topology: StaticTopology,
}

impl StaticSource {
    /// The wire document for this static topology, given what was published before: the
    /// epoch moves up by one when the writer changes (nodes fence on it), the revision on any
    /// change, exactly as writer-election would do.
    pub fn to_wire(&self, previous: &TopologySnapshot) -> Topology {
        let node = |n: &crate::config::StaticNode| NodeRef {
            name: n.name.clone(),
            address: n.address.clone(),
        };
        let writer = self.topology.writer.as_ref().map(node);
        let readers: Vec<NodeRef> = self.topology.readers.iter().map(node).collect();
        let same_writer = previous.writer.as_ref().map(|w| &*w.address)
            == writer.as_ref().map(|w| w.address.as_str());
        let epoch = if !previous.is_known() {
            u64::from(writer.is_some())
        } else if same_writer {
            previous.epoch
        } else {
            previous.epoch + 1
        };
        let mut t = Topology::empty();
        t.epoch = epoch;
        t.revision = previous.revision + 1;
        t.writer = writer;
        t.readers = readers;
        t
    }
}

#[async_trait]
impl TopologySource for StaticSource {
    fn describe(&self) -> String {
        "static".to_string()
    }

    async fn run(&self, sink: Arc<dyn TopologySink>) {
        let previous = sink.current();
        let wire = self.to_wire(&previous);
        let resolved = resolve_addresses(&wire).await;
        let (snapshot, warnings) = TopologySnapshot::from_wire(&wire, &resolved, &previous);
        for w in warnings {
            tracing::warn!("static topology: {w}");
        }
        let writer = snapshot.writer.as_ref().map(|w| w.name.clone());
        let readers = snapshot.readers.len();
        let (epoch, revision) = (snapshot.epoch, snapshot.revision);
        if sink.publish(snapshot) {
            tracing::info!(
                epoch,
                revision,
                writer = writer.as_deref().unwrap_or("none"),
                readers,
                "static topology published"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticNode;

    fn node(name: &str, address: &str) -> StaticNode {
        StaticNode {
            name: name.into(),
            address: address.into(),
        }
    }

    fn resolved(t: &Topology) -> HashMap<String, SocketAddr> {
        t.writer
            .iter()
            .chain(t.readers.iter())
            .filter_map(|n| Some((n.address.clone(), n.address.parse().ok()?)))
            .collect()
    }

    fn publish(src: &StaticSource, prev: &TopologySnapshot) -> TopologySnapshot {
        let wire = src.to_wire(prev);
        TopologySnapshot::from_wire(&wire, &resolved(&wire), prev).0
    }

    #[test]
    fn static_epochs_move_only_when_the_writer_changes() {
        let mut src = StaticSource {
            topology: StaticTopology {
                writer: Some(node("a", "127.0.0.1:1")),
                readers: vec![node("b", "127.0.0.1:2")],
            },
        };
        let s1 = publish(&src, &TopologySnapshot::none());
        assert_eq!((s1.epoch, s1.revision), (1, 1));
        assert_eq!(s1.epoch_header, "1");
        src.topology.readers.push(node("c", "127.0.0.1:3"));
        let s2 = publish(&src, &s1);
        assert_eq!((s2.epoch, s2.revision), (1, 2));
        src.topology.writer = Some(node("b", "127.0.0.1:2"));
        src.topology.readers = vec![node("a", "127.0.0.1:1")];
        let s3 = publish(&src, &s2);
        assert_eq!((s3.epoch, s3.revision), (2, 3));
        assert_eq!(s3.epoch_header, "2");
        src.topology.writer = None;
        let s4 = publish(&src, &s3);
        assert_eq!((s4.epoch, s4.revision), (3, 4));
        assert!(s4.writer.is_none());
    }

    #[test]
    fn stats_survive_a_new_snapshot_for_the_same_address() {
        let src = StaticSource {
            topology: StaticTopology {
                writer: Some(node("a", "127.0.0.1:1")),
                readers: vec![node("b", "127.0.0.1:2")],
            },
        };
        let s1 = publish(&src, &TopologySnapshot::none());
        let _guard = s1.readers[0].stats.begin();
        let s2 = publish(&src, &s1);
        assert_eq!(s2.readers[0].stats.in_flight(), 1);
        assert!(Arc::ptr_eq(&s1.readers[0].stats, &s2.readers[0].stats));
    }

    #[test]
    fn unresolved_nodes_are_left_out_with_a_warning() {
        let mut t = Topology::empty();
        t.writer = Some(NodeRef {
            name: "w".into(),
            address: "127.0.0.1:1".into(),
        });
        t.readers = vec![NodeRef {
            name: "r".into(),
            address: "nowhere.invalid:1".into(),
        }];
        let (s, warnings) =
            TopologySnapshot::from_wire(&t, &resolved(&t), &TopologySnapshot::none());
        assert!(s.writer.is_some());
        assert!(s.readers.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    fn progress(name: &str, offset: u64, lag_ms: u64) -> topology_client::topology::NodeProgress {
        topology_client::topology::NodeProgress {
            name: name.into(),
            offset,
            lag_offsets: 100 - offset,
            lag_ms,
            lag_at_least: offset == 0,
        }
    }

    #[test]
    fn replication_of_the_documents_epoch_reaches_each_upstream() {
        let mut t = Topology::empty();
        t.epoch = 7;
        t.writer = Some(NodeRef {
            name: "w".into(),
            address: "127.0.0.1:1".into(),
        });
        t.readers = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| NodeRef {
                name: (*n).into(),
                address: format!("127.0.0.1:{}", i + 2),
            })
            .collect();
        t.replication = Some(topology_client::topology::Replication {
            epoch: 7,
            writer_offset: 100,
            measured_at_ms: 1_764_650_000_123,
            nodes: vec![
                progress("w", 100, 0),
                progress("a", 60, 2000),
                progress("c", 0, 90_000),
                progress("gone", 1, 1),
            ],
        });
        let (s, _) = TopologySnapshot::from_wire(&t, &resolved(&t), &TopologySnapshot::none());
        assert_eq!(
            s.replication,
            Some(ReplicationView {
                epoch: 7,
                writer_offset: 100,
                measured_at_ms: 1_764_650_000_123
            })
        );
        assert_eq!(
            s.writer.as_ref().and_then(|w| w.progress).map(|p| p.offset),
            Some(100)
        );
        assert_eq!(
            s.readers[0].progress,
            Some(Progress {
                offset: 60,
                lag_offsets: 40,
                lag_ms: 2000,
                lag_at_least: false
            })
        );
        assert_eq!(s.readers[1].progress, None, "b was not read");
        assert!(s.readers[2].progress.is_some_and(|p| p.lag_at_least));

        // Measured against another epoch's writer: ignored whole.
        if let Some(r) = t.replication.as_mut() {
            r.epoch = 6;
        }
        let (s, _) = TopologySnapshot::from_wire(&t, &resolved(&t), &TopologySnapshot::none());
        assert_eq!(s.replication, None);
        assert!(s.all().all(|u| u.progress.is_none()));
        t.replication = None;
        let (s, _) = TopologySnapshot::from_wire(&t, &resolved(&t), &TopologySnapshot::none());
        assert_eq!(s.replication, None);
    }

    #[test]
    fn a_reader_that_is_also_the_writer_is_not_a_reader() {
        let mut t = Topology::empty();
        let w = NodeRef {
            name: "w".into(),
            address: "127.0.0.1:1".into(),
        };
        t.writer = Some(w.clone());
        t.readers = vec![w];
        let (s, _) = TopologySnapshot::from_wire(&t, &resolved(&t), &TopologySnapshot::none());
        assert!(s.readers.is_empty());
    }
}
