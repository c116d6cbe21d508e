//! The published topology: built from the record and the observed nodes, held as an immutable
//! snapshot on a watch channel (blocking queries wait on it), and the gauges that describe the
//! published document ([`Publisher`]).
//!
//! `revision` is `max(previous + 1, unix milliseconds)`: it grows on every change, and it also
//! grows across a restart of the service, so a proxy's `after=<rev>` from before the restart never
//! hides a newer document. A query whose `after` is above the current revision (another replica's
//! or an older process's numbering) is answered at once so the client resynchronises.
//!
//! `replication` is content like the rest: a new measurement is a new revision. Every proxy's
//! blocking query wakes on each revision and fetches the whole document again, so the
//! measurement is set only when a progress round delivers one ([`Publisher::set_replication`]),
//! never recomputed while publishing: lag alone moves the revision at most once per round,
//! however often the engine publishes in between.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::debug;

use crate::decision::{natural_cmp, Health, Recorded};
use crate::discovery::{DiscoveredNode, Membership, MembershipRx};
use crate::metrics::Metrics;
use crate::probe::{HealthTable, NodeKey};
use crate::topology::{HistoryEntry, NodeRef, NodeStatus, Replication, Role, Switchover, Topology};

/// A node as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub uid: Option<String>,
    pub ready: bool,
}

/// What a node is probed as.
pub fn node_key(n: &DiscoveredNode) -> NodeKey {
    NodeKey {
        name: n.name.clone(),
        address: n.address.clone(),
        uid: n.uid.clone(),
    }
}

/// Where this replica's view of a node's readiness comes from.
#[derive(Clone, Copy)]
pub enum Readiness<'a> {
    /// The leader's own probe verdicts.
    Probes(&'a HealthTable),
    /// The pods' Ready condition: a follower does not probe.
    PodCondition,
}

/// The nodes as this replica shows them; a node that is not running is never ready.
pub fn node_views(m: &Membership, readiness: Readiness<'_>) -> Vec<NodeView> {
    m.nodes
        .iter()
        .map(|n| {
            let ready = n.running
                && match readiness {
                    Readiness::Probes(table) => table.get(&node_key(n)) == Health::Ready,
                    Readiness::PodCondition => n.pod_ready.unwrap_or(false),
                };
            NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
                uid: n.uid.clone(),
                ready,
            }
        })
        .collect()
}

/// The document for `rec` and `nodes` (revision and time are set by [`TopologyHub::publish`]).
pub fn build_topology(rec: &Recorded, nodes: &[NodeView]) -> Topology {
    let writer = rec.writer().map(|h| {
        // The live address when the same node is observed (same UID): the record's otherwise.
        let address = nodes
            .iter()
            .find(|n| n.name == h.name && (h.uid.is_none() || n.uid == h.uid))
            .map(|n| n.address.clone())
            .unwrap_or_else(|| h.address.clone());
        NodeRef {
            name: h.name.clone(),
            address,
        }
    });
    let is_writer = |n: &NodeView| {
        rec.writer().is_some_and(|h| {
            h.name == n.name && (h.uid.is_none() || n.uid.is_none() || h.uid == n.uid)
        })
    };
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let readers = sorted
        .iter()
        .filter(|n| n.ready && !is_writer(n))
        .map(|n| NodeRef {
            name: n.name.clone(),
            address: n.address.clone(),
        })
        .collect();
    let statuses = sorted
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            address: n.address.clone(),
            ready: n.ready,
            role: if is_writer(n) {
                Role::Writer
            } else {
                Role::Reader
            },
        })
        .collect();
    Topology {
        epoch: rec.epoch,
        revision: 0,
        writer,
        readers,
        nodes: statuses,
        updated_at: String::new(),
        switchover: None,
        replication: None,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct TopologyHub {
    tx: watch::Sender<Arc<Topology>>,
    /// The record's writer changes, for `GET /v1/history` (a follower's come from the leader's
    /// record, re-read every `ha.retry_period`).
    history: watch::Sender<Arc<Vec<HistoryEntry>>>,
}

impl Default for TopologyHub {
    fn default() -> Self {
        Self::new()
    }
}

impl TopologyHub {
    pub fn new() -> Self {
        TopologyHub {
            tx: watch::channel(Arc::new(Topology::empty())).0,
            history: watch::channel(Arc::new(Vec::new())).0,
        }
    }

    pub fn current(&self) -> Arc<Topology> {
        self.tx.borrow().clone()
    }

    pub fn history(&self) -> Arc<Vec<HistoryEntry>> {
        self.history.borrow().clone()
    }

    pub fn set_history(&self, h: &[HistoryEntry]) {
        self.history.send_if_modified(|cur| {
            if cur.as_slice() == h {
                return false;
            }
            *cur = Arc::new(h.to_vec());
            true
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.tx.subscribe()
    }

    /// Publishes `doc` if its content differs from the current one; returns the new snapshot.
    pub fn publish(&self, mut doc: Topology) -> Option<Arc<Topology>> {
        let mut published = None;
        self.tx.send_if_modified(|cur| {
            if cur.revision > 0 && cur.same_content(&doc) {
                return false;
            }
            doc.revision = (cur.revision + 1).max(now_millis());
            doc.updated_at = k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Millisecond)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let snap = Arc::new(doc.clone());
            *cur = snap.clone();
            published = Some(snap);
            true
        });
        published
    }
}

/// Publishes this replica's view on the hub and keeps the gauges in step with it. The labelled
/// gauges have one series per writer and per node: a series is removed when its node or writer
/// goes, so a dashboard never shows a gone node as ready or two writers.
pub struct Publisher {
    hub: Arc<TopologyHub>,
    metrics: Arc<Metrics>,
    membership: MembershipRx,
    table: Arc<HealthTable>,
    /// The node `writer_election_writer` has a series for.
    writer_gauge: Option<String>,
    /// The nodes `writer_election_node_ready` has a series for.
    ready_gauges: HashSet<String>,
    /// The last progress round's measurement, published while its epoch is the record's.
    replication: Option<Replication>,
    /// The writer `writer_election_replication_writer_offset` has a series for.
    writer_offset_gauge: Option<String>,
    /// The nodes the `writer_election_replication_lag_*` gauges have series for.
    lag_gauges: HashSet<String>,
}

impl Publisher {
    pub fn new(
        hub: Arc<TopologyHub>,
        metrics: Arc<Metrics>,
        membership: MembershipRx,
        table: Arc<HealthTable>,
    ) -> Self {
        Publisher {
            hub,
            metrics,
            membership,
            table,
            writer_gauge: None,
            ready_gauges: HashSet::new(),
            replication: None,
            writer_offset_gauge: None,
            lag_gauges: HashSet::new(),
        }
    }

    /// A progress round's measurement, published from the next [`Publisher::publish`] on.
    pub fn set_replication(&mut self, r: Replication) {
        self.replication = Some(r);
    }

    pub fn hub(&self) -> &TopologyHub {
        &self.hub
    }

    /// Publishes `rec` with the nodes as this replica sees them (`leading`: its probe verdicts,
    /// else the pods' Ready condition), the running switchover, if any, and the last progress
    /// measurement. That measurement is dropped for good when it stops describing the record: a
    /// new epoch (another writer's offsets), no writer, or this replica not leading (only the
    /// leader measures). Returns the node list it showed, for the leader's follow-ups.
    pub fn publish(
        &mut self,
        rec: &Recorded,
        leading: bool,
        switchover: Option<Switchover>,
    ) -> Arc<Membership> {
        let m: Arc<Membership> = self.membership.borrow().clone();
        let readiness = if leading {
            Readiness::Probes(&self.table)
        } else {
            Readiness::PodCondition
        };
        let nodes = node_views(&m, readiness);
        self.hub.set_history(&rec.history);
        let mut doc = build_topology(rec, &nodes);
        doc.switchover = switchover;
        if !leading
            || rec.writer().is_none()
            || self
                .replication
                .as_ref()
                .is_some_and(|r| r.epoch != rec.epoch)
        {
            self.replication = None;
        }
        doc.replication = self.replication.clone();
        if let Some(t) = self.hub.publish(doc) {
            debug!(revision = t.revision, epoch = t.epoch, writer = ?t.writer.as_ref().map(|w| &w.name), "published topology");
            self.metrics.topology_revision.set(t.revision as i64);
        }
        self.metrics.epoch.set(rec.epoch as i64);
        self.metrics
            .has_writer
            .set(i64::from(rec.writer().is_some()));
        self.set_writer_gauge(rec.writer().map(|h| h.name.as_str()));
        self.set_ready_gauges(&nodes);
        self.set_replication_gauges(rec.writer().map(|h| h.name.clone()));
        m
    }

    fn set_replication_gauges(&mut self, writer: Option<String>) {
        let rep = self.replication.as_ref();
        let writer = rep.and(writer);
        if self.writer_offset_gauge != writer {
            if let Some(old) = self.writer_offset_gauge.take() {
                let _ = self
                    .metrics
                    .replication_writer_offset
                    .remove_label_values(&[old.as_str()]);
            }
            self.writer_offset_gauge = writer.clone();
        }
        if let (Some(w), Some(r)) = (&writer, rep) {
            self.metrics
                .replication_writer_offset
                .with_label_values(&[w.as_str()])
                .set(i64::try_from(r.writer_offset).unwrap_or(i64::MAX));
        }
        let mut present = HashSet::new();
        for n in rep.map(|r| r.nodes.as_slice()).unwrap_or_default() {
            self.metrics
                .replication_lag_offsets
                .with_label_values(&[n.name.as_str()])
                .set(i64::try_from(n.lag_offsets).unwrap_or(i64::MAX));
            self.metrics
                .replication_lag_seconds
                .with_label_values(&[n.name.as_str()])
                .set(n.lag_ms as f64 / 1000.0);
            present.insert(n.name.clone());
        }
        for gone in self.lag_gauges.difference(&present) {
            let _ = self
                .metrics
                .replication_lag_offsets
                .remove_label_values(&[gone.as_str()]);
            let _ = self
                .metrics
                .replication_lag_seconds
                .remove_label_values(&[gone.as_str()]);
        }
        self.lag_gauges = present;
    }

    fn set_writer_gauge(&mut self, writer: Option<&str>) {
        if self.writer_gauge.as_deref() == writer {
            return;
        }
        if let Some(old) = self.writer_gauge.take() {
            let _ = self.metrics.writer.remove_label_values(&[old.as_str()]);
        }
        if let Some(name) = writer {
            self.metrics.writer.with_label_values(&[name]).set(1);
        }
        self.writer_gauge = writer.map(str::to_string);
    }

    fn set_ready_gauges(&mut self, nodes: &[NodeView]) {
        let mut present = HashSet::new();
        for v in nodes {
            self.metrics
                .node_ready
                .with_label_values(&[v.name.as_str()])
                .set(i64::from(v.ready));
            present.insert(v.name.clone());
        }
        for gone in self.ready_gauges.difference(&present) {
            let _ = self
                .metrics
                .node_ready
                .remove_label_values(&[gone.as_str()]);
        }
        self.ready_gauges = present;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Holder;

    fn view(name: &str, ready: bool) -> NodeView {
        NodeView {
            name: name.into(),
            address: format!("{name}:80"),
            uid: None,
            ready,
        }
    }

    fn rec(name: &str, active: bool) -> Recorded {
        Recorded {
            epoch: 3,
            holder: Some(Holder {
                name: name.into(),
                address: format!("{name}:80"),
                uid: None,
            }),
            active,
            history: Vec::new(),
        }
    }

    #[test]
    fn readers_are_the_ready_nodes_other_than_the_writer() {
        let t = build_topology(
            &rec("n-1", true),
            &[
                view("n-10", true),
                view("n-1", true),
                view("n-2", false),
                view("n-3", true),
            ],
        );
        assert_eq!(t.writer.as_ref().unwrap().name, "n-1");
        let readers: Vec<_> = t.readers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(readers, vec!["n-3", "n-10"]);
        let roles: Vec<_> = t
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.role, n.ready))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("n-1", Role::Writer, true),
                ("n-2", Role::Reader, false),
                ("n-3", Role::Reader, true),
                ("n-10", Role::Reader, true)
            ]
        );
    }

    #[test]
    fn suspended_record_publishes_no_writer() {
        let t = build_topology(&rec("n-1", false), &[view("n-1", true), view("n-2", true)]);
        assert!(t.writer.is_none());
        assert_eq!(t.epoch, 3);
        assert_eq!(t.readers.len(), 2);
    }

    #[test]
    fn a_recreated_pod_is_not_shown_as_the_writer() {
        let mut r = rec("n-1", true);
        r.holder.as_mut().unwrap().uid = Some("old".into());
        let mut v = view("n-1", true);
        v.uid = Some("new".into());
        v.address = "10.0.0.9:80".into();
        let t = build_topology(&r, &[v]);
        assert_eq!(t.writer.as_ref().unwrap().address, "n-1:80");
        assert_eq!(t.nodes[0].role, Role::Reader);
    }

    #[test]
    fn revision_grows_only_on_change() {
        let hub = TopologyHub::new();
        let a = hub
            .publish(build_topology(&rec("n-1", true), &[view("n-1", true)]))
            .unwrap();
        assert!(a.revision > 0);
        assert!(!a.updated_at.is_empty());
        assert!(hub
            .publish(build_topology(&rec("n-1", true), &[view("n-1", true)]))
            .is_none());
        let b = hub
            .publish(build_topology(&rec("n-1", true), &[view("n-1", false)]))
            .unwrap();
        assert!(b.revision > a.revision);
        assert_eq!(hub.current().revision, b.revision);
    }

    fn discovered(name: &str, running: bool, pod_ready: Option<bool>) -> DiscoveredNode {
        DiscoveredNode {
            name: name.into(),
            address: format!("{name}:80"),
            uid: None,
            running,
            created: None,
            pod_ready,
            role_label: None,
        }
    }

    #[test]
    fn views_show_the_pod_condition_on_a_follower_and_the_probes_on_the_leader() {
        let m = Membership::new(vec![
            discovered("n-1", true, Some(true)),
            discovered("n-2", false, Some(true)),
            discovered("n-3", true, None),
        ]);
        let ready = |views: Vec<NodeView>| -> Vec<(String, bool)> {
            views.into_iter().map(|v| (v.name, v.ready)).collect()
        };
        assert_eq!(
            ready(node_views(&m, Readiness::PodCondition)),
            vec![
                ("n-1".to_string(), true),
                ("n-2".to_string(), false),
                ("n-3".to_string(), false)
            ]
        );
        // Nothing probed yet: the leader shows no node ready, whatever the pods say.
        let table = HealthTable::default();
        assert!(node_views(&m, Readiness::Probes(&table))
            .iter()
            .all(|v| !v.ready));
    }

    fn series(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_string)
            .collect()
    }

    /// A follower's publisher (readiness from the pods' condition), and its node list.
    fn publisher(metrics: Arc<Metrics>) -> (Publisher, crate::discovery::MembershipTx) {
        let (tx, rx) = crate::discovery::channel();
        let p = Publisher::new(
            Arc::new(TopologyHub::new()),
            metrics,
            rx,
            Arc::new(HealthTable::default()),
        );
        (p, tx)
    }

    fn nodes(tx: &crate::discovery::MembershipTx, ready: &[(&str, bool)]) {
        tx.send_replace(Arc::new(Membership::new(
            ready
                .iter()
                .map(|(n, r)| discovered(n, true, Some(*r)))
                .collect(),
        )));
    }

    #[test]
    fn gauges_follow_the_published_document() {
        let metrics = Arc::new(Metrics::new());
        let (mut p, tx) = publisher(metrics.clone());
        nodes(&tx, &[("n-1", true), ("n-2", false)]);
        p.publish(&rec("n-1", true), false, None);
        assert_eq!(
            metrics.topology_revision.get(),
            p.hub().current().revision as i64
        );
        assert_eq!(metrics.epoch.get(), 3);
        assert_eq!(metrics.has_writer.get(), 1);
        assert_eq!(
            series(&metrics, "writer_election_writer"),
            vec![r#"writer_election_writer{node="n-1"} 1"#]
        );
        assert_eq!(
            series(&metrics, "writer_election_node_ready"),
            vec![
                r#"writer_election_node_ready{node="n-1"} 1"#,
                r#"writer_election_node_ready{node="n-2"} 0"#
            ]
        );

        // The writer moves and n-1 goes: one writer series, no series for the gone node.
        let mut moved = rec("n-2", true);
        moved.epoch = 4;
        nodes(&tx, &[("n-2", true)]);
        p.publish(&moved, false, None);
        assert_eq!(p.hub().current().epoch, 4);
        assert_eq!(
            series(&metrics, "writer_election_writer"),
            vec![r#"writer_election_writer{node="n-2"} 1"#]
        );
        assert_eq!(
            series(&metrics, "writer_election_node_ready"),
            vec![r#"writer_election_node_ready{node="n-2"} 1"#]
        );

        // Suspended: no writer series at all.
        moved.active = false;
        p.publish(&moved, false, None);
        assert_eq!(metrics.has_writer.get(), 0);
        assert!(series(&metrics, "writer_election_writer").is_empty());
    }

    #[test]
    fn the_running_switchover_is_part_of_the_content() {
        let (mut p, tx) = publisher(Arc::new(Metrics::new()));
        nodes(&tx, &[("n-1", true), ("n-2", true)]);
        p.publish(&rec("n-1", true), false, None);
        let plain = p.hub().current();
        let draining = Switchover {
            id: 9,
            state: "draining".into(),
            from: "n-1".into(),
            to: "n-2".into(),
        };
        p.publish(&rec("n-1", true), false, Some(draining.clone()));
        let d = p.hub().current();
        assert!(d.revision > plain.revision);
        assert_eq!(d.switchover, Some(draining));
        p.publish(&rec("n-1", true), false, None);
        assert_eq!(p.hub().current().switchover, None);
    }

    fn measured(epoch: u64, writer_offset: u64, lag: &[(&str, u64, u64)]) -> Replication {
        Replication {
            epoch,
            writer_offset,
            measured_at_ms: 1_764_650_000_000 + writer_offset,
            nodes: lag
                .iter()
                .map(|(name, offset, lag_ms)| crate::topology::NodeProgress {
                    name: name.to_string(),
                    offset: *offset,
                    lag_offsets: writer_offset.saturating_sub(*offset),
                    lag_ms: *lag_ms,
                    lag_at_least: false,
                })
                .collect(),
        }
    }

    #[test]
    fn a_measurement_is_content_published_once_and_kept_within_its_epoch() {
        let metrics = Arc::new(Metrics::new());
        let (mut p, tx) = publisher(metrics.clone());
        nodes(&tx, &[("n-1", true), ("n-2", true)]);
        p.publish(&rec("n-1", true), true, None);
        let plain = p.hub().current();
        assert_eq!(plain.replication, None);
        assert!(series(&metrics, "writer_election_replication_lag_offsets").is_empty());

        let first = measured(3, 100, &[("n-1", 100, 0), ("n-2", 90, 1000)]);
        p.set_replication(first.clone());
        p.publish(&rec("n-1", true), true, None);
        let a = p.hub().current();
        assert!(a.revision > plain.revision);
        assert_eq!(a.replication.as_ref(), Some(&first));
        // Publishing again without a new round: same content, same revision.
        p.publish(&rec("n-1", true), true, None);
        assert_eq!(p.hub().current().revision, a.revision);
        assert_eq!(
            series(&metrics, "writer_election_replication_lag_offsets"),
            vec![
                r#"writer_election_replication_lag_offsets{node="n-1"} 0"#,
                r#"writer_election_replication_lag_offsets{node="n-2"} 10"#
            ]
        );
        assert_eq!(
            series(&metrics, "writer_election_replication_lag_seconds"),
            vec![
                r#"writer_election_replication_lag_seconds{node="n-1"} 0"#,
                r#"writer_election_replication_lag_seconds{node="n-2"} 1"#
            ]
        );
        assert_eq!(
            series(&metrics, "writer_election_replication_writer_offset"),
            vec![r#"writer_election_replication_writer_offset{node="n-1"} 100"#]
        );

        // A node that leaves the measurement leaves the gauges.
        p.set_replication(measured(3, 120, &[("n-1", 120, 0)]));
        p.publish(&rec("n-1", true), true, None);
        assert!(p.hub().current().revision > a.revision);
        assert_eq!(
            series(&metrics, "writer_election_replication_lag_seconds"),
            vec![r#"writer_election_replication_lag_seconds{node="n-1"} 0"#]
        );

        // A new epoch: the old writer's offsets mean nothing for the new one.
        let mut next = rec("n-2", true);
        next.epoch = 4;
        p.publish(&next, true, None);
        assert_eq!(p.hub().current().replication, None);
        assert!(series(&metrics, "writer_election_replication_lag_offsets").is_empty());
        assert!(series(&metrics, "writer_election_replication_writer_offset").is_empty());
        // ... and it does not come back with the epoch's next publish.
        p.publish(&next, true, None);
        assert_eq!(p.hub().current().replication, None);
    }

    #[test]
    fn no_measurement_without_a_writer_or_on_a_follower() {
        let (mut p, tx) = publisher(Arc::new(Metrics::new()));
        nodes(&tx, &[("n-1", true)]);
        p.set_replication(measured(3, 100, &[("n-1", 100, 0)]));
        p.publish(&rec("n-1", false), true, None);
        assert_eq!(p.hub().current().replication, None, "suspended");
        p.set_replication(measured(3, 100, &[("n-1", 100, 0)]));
        p.publish(&rec("n-1", true), false, None);
        assert_eq!(p.hub().current().replication, None, "following");
        let json = serde_json::to_value(&*p.hub().current()).unwrap();
        assert!(json.get("replication").is_none(), "{json}");
    }

    #[test]
    fn the_leader_shows_its_probes_not_the_pod_condition() {
        let (mut p, tx) = publisher(Arc::new(Metrics::new()));
        nodes(&tx, &[("n-1", true), ("n-2", true)]);
        p.publish(&rec("n-1", true), true, None);
        assert!(p.hub().current().nodes.iter().all(|n| !n.ready));
        assert!(p.hub().current().readers.is_empty());
    }
}
