//! The published topology: built from the record and the observed nodes, held as an immutable
//! snapshot on a watch channel (blocking queries wait on it).
//!
//! `revision` is `max(previous + 1, unix milliseconds)`: it grows on every change, and it also
//! grows across a restart of the service, so a proxy's `after=<rev>` from before the restart never
//! hides a newer document. A query whose `after` is above the current revision (another replica's
//! or an older process's numbering) is answered at once so the client resynchronises.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::decision::{natural_cmp, Recorded};
use crate::topology::{HistoryEntry, NodeRef, NodeStatus, Role, Topology};

/// A node as the topology shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub uid: Option<String>,
    pub ready: bool,
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
    }
}

fn same_content(a: &Topology, b: &Topology) -> bool {
    a.epoch == b.epoch
        && a.writer == b.writer
        && a.readers == b.readers
        && a.nodes == b.nodes
        && a.switchover == b.switchover
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
            if cur.revision > 0 && same_content(cur, &doc) {
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
}
