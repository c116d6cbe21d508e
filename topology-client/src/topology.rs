//! The topology document served on `GET /v1/topology` (docs/api.md).
//!
//! These types are the wire contract between writer-election and every rw-proxy. Unknown fields
//! are ignored on purpose: an older proxy must keep working against a newer election service.

use serde::{Deserialize, Serialize};

/// Response header that carries the document's revision.
pub const REVISION_HEADER: &str = "X-Topology-Revision";

/// A storage node as the proxies need it: a name for logs and metrics, an address to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    pub name: String,
    /// `host:port`, as dialled by the proxies.
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Writer,
    Reader,
}

/// Every known node, ready or not, with the role it has in this topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub ready: bool,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Fencing token: grows by exactly 1 each time the writer changes, never reused.
    pub epoch: u64,
    /// Grows on any change of the document.
    pub revision: u64,
    /// `None` while there is no writer (the proxies hold writes).
    pub writer: Option<NodeRef>,
    /// Ready nodes other than the writer.
    #[serde(default)]
    pub readers: Vec<NodeRef>,
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// RFC 3339 time of the last change.
    #[serde(default)]
    pub updated_at: String,
    /// Set while a planned switchover is under way (the drain barrier, see
    /// docs/failover.md): `writer` and `epoch` are still the old writer's.
    #[serde(default)]
    pub switchover: Option<Switchover>,
    /// How far each node has replicated the writer's stream, measured once per progress round.
    /// Present only when `election.progress` is configured and this replica measures (the
    /// leader); a proxy that finds it absent knows nothing about lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// Replication progress as one progress round measured it (docs/consistency.md).
///
/// Offsets are the storage's own replication positions (`election.progress`): a reader whose
/// offset is at least `o` has applied everything the writer had applied at offset `o`. Offsets
/// are only comparable within one epoch: after a failover the new writer's offsets start the
/// comparison again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The epoch whose writer these offsets were compared against.
    pub epoch: u64,
    /// The writer's offset in that round.
    pub writer_offset: u64,
    /// When the round read the writer's offset: milliseconds since the Unix epoch, by
    /// writer-election's clock.
    pub measured_at_ms: u64,
    /// Every node whose offset the round could read, the writer included, by name.
    #[serde(default)]
    pub nodes: Vec<NodeProgress>,
}

/// One node's replication progress (see [`Replication`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub name: String,
    pub offset: u64,
    /// `writer_offset - offset`, 0 when the node is level with (or ahead of) the writer.
    pub lag_offsets: u64,
    /// How long before `measured_at_ms` the writer was at `offset`, in milliseconds: 0 when
    /// level or ahead. An estimate from the writer's recent offsets: the time of the last
    /// progress round whose writer offset was at most `offset`, so never smaller than the true
    /// lag; when the node is behind every offset the history holds, the history's age (and
    /// `lag_at_least` is true). See `writer_election::progress::estimate`.
    pub lag_ms: u64,
    /// `lag_ms` is a lower bound: the node is further behind than the history reaches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lag_at_least: bool,
}

/// A planned switchover in progress: `{"id": 5, "state": "draining", "from": ..., "to": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub id: u64,
    /// `draining`: every proxy holds new writes and acknowledges once its writes in flight to
    /// `from` are done.
    pub state: String,
    pub from: String,
    pub to: String,
}

/// One change of the published writer, as kept in the durable record and served on
/// `GET /v1/history` (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339 time the new writer was recorded.
    pub at: String,
    /// The writer before (`None` for the first election; the same node when it was reinstated).
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    pub epoch: u64,
    /// `initial`, `writer-unready`, `writer-gone`, `writer-recreated`, `writer-lost-role`,
    /// `writer-back`, `switchover`.
    pub reason: String,
    /// Milliseconds the proxies had no writer to send writes to: from the moment writer-election
    /// saw the writer lost (a switchover: from the start of its drain) until the new one was
    /// recorded. `None` when unknown (the loss was seen by an earlier process, or the first
    /// election).
    #[serde(default)]
    pub no_writer_ms: Option<u64>,
    /// Milliseconds the switchover drain took (switchovers only).
    #[serde(default)]
    pub drain_ms: Option<u64>,
}

/// The body of `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Oldest first, at most [`HISTORY_LIMIT`].
    pub changes: Vec<HistoryEntry>,
}

/// The body of `GET /v1/status`: what this replica knows beyond the topology (for the `status`
/// command; not part of the contract with the proxies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica that answered (`ha.identity`, else the pod / host name).
    pub identity: String,
    /// This replica decides (HA leader, or the only replica).
    pub leading: bool,
    /// The HA leader as this replica last saw it.
    #[serde(default)]
    pub leader: Option<String>,
    /// Client ids of the proxies following this replica's topology now (on the leader: the drain
    /// set a switchover would wait for, forwarded queries included).
    #[serde(default)]
    pub clients: Vec<String>,
    /// The drain of the running switchover, if this replica runs one.
    #[serde(default)]
    pub drain: Option<DrainStatus>,
    /// The last probe of each node (only the leader probes).
    #[serde(default)]
    pub probes: Vec<ProbeReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub node: String,
    pub ok: bool,
    /// The HTTP status, or what went wrong (`connection refused`, `timed out`).
    pub result: String,
    /// Milliseconds since that probe.
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub switchover: u64,
    pub acknowledged: Vec<String>,
    pub pending: Vec<String>,
}

/// How many writer changes the record keeps.
pub const HISTORY_LIMIT: usize = 50;
/// Upper bound of the serialised history (it is one annotation on the writer Lease, and all
/// annotations of an object share 256 KiB): the oldest entries go first.
pub const HISTORY_MAX_BYTES: usize = 32 * 1024;

/// Appends `entry` to `history`, dropping the oldest entries beyond [`HISTORY_LIMIT`] or
/// [`HISTORY_MAX_BYTES`].
pub fn push_history(history: &mut Vec<HistoryEntry>, entry: HistoryEntry) {
    history.push(entry);
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    history.drain(..excess);
    while history.len() > 1
        && serde_json::to_vec(history).map_or(0, |v| v.len()) > HISTORY_MAX_BYTES
    {
        history.remove(0);
    }
}

impl Topology {
    /// Whether two documents say the same thing: `revision` and `updated_at` are left out,
    /// since they change on every publication and differ between HA replicas for one content.
    /// Every other field counts, `replication` included: proxies route by the lag in it. The
    /// publisher bumps the revision only when this is false, and the follower hands on only
    /// such documents.
    pub fn same_content(&self, other: &Topology) -> bool {
        self.epoch == other.epoch
            && self.writer == other.writer
            && self.readers == other.readers
            && self.nodes == other.nodes
            && self.switchover == other.switchover
            && self.replication == other.replication
    }

    /// The document of a service that has not decided anything yet.
    pub fn empty() -> Self {
        Topology {
            epoch: 0,
            revision: 0,
            writer: None,
            readers: Vec::new(),
            nodes: Vec::new(),
            updated_at: String::new(),
            switchover: None,
            replication: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_ignores_unknown_fields() {
        let doc = r#"{
          "epoch": 7, "revision": 42,
          "writer": {"name": "storagenode-1", "address": "10.1.2.3:8080"},
          "readers": [{"name": "storagenode-0", "address": "10.1.2.2:8080"}],
          "nodes": [{"name": "storagenode-0", "address": "10.1.2.2:8080", "ready": true, "role": "reader"}],
          "updated_at": "2026-11-22T10:00:00Z",
          "something_newer": {"a": 1}
        }"#;
        let t: Topology = serde_json::from_str(doc).unwrap();
        assert_eq!(t.epoch, 7);
        assert_eq!(t.revision, 42);
        assert_eq!(
            t.writer.as_ref().map(|w| w.name.as_str()),
            Some("storagenode-1")
        );
        assert_eq!(t.readers.len(), 1);
        assert_eq!(t.nodes[0].role, Role::Reader);
        assert!(t.switchover.is_none(), "absent = no switchover");
    }

    #[test]
    fn switchover_round_trips() {
        let t: Topology = serde_json::from_str(
            r#"{"epoch":3,"revision":9,"writer":null,
                "switchover":{"id":5,"state":"draining","from":"a","to":"b"}}"#,
        )
        .unwrap();
        let s = t.switchover.as_ref().unwrap();
        assert_eq!(
            (s.id, s.state.as_str(), s.from.as_str(), s.to.as_str()),
            (5, "draining", "a", "b")
        );
        let back = serde_json::to_value(&t).unwrap();
        assert_eq!(back["switchover"]["state"], "draining");
        let none = serde_json::to_value(Topology::empty()).unwrap();
        assert!(none["switchover"].is_null());
    }

    fn entry(epoch: u64, to: &str) -> HistoryEntry {
        HistoryEntry {
            at: "2026-11-22T10:00:00Z".into(),
            from: Some("a".into()),
            to: to.into(),
            epoch,
            reason: "writer-gone".into(),
            no_writer_ms: Some(12),
            drain_ms: None,
        }
    }

    #[test]
    fn history_keeps_the_newest_changes_within_both_bounds() {
        let mut h = Vec::new();
        for e in 1..=(HISTORY_LIMIT as u64 + 7) {
            push_history(&mut h, entry(e, "b"));
        }
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].epoch, 8, "the oldest go first");
        assert_eq!(h[HISTORY_LIMIT - 1].epoch, HISTORY_LIMIT as u64 + 7);

        let mut h = Vec::new();
        let long = "n".repeat(4000);
        for e in 1..=20 {
            push_history(&mut h, entry(e, &long));
        }
        let size = serde_json::to_vec(&h).unwrap().len();
        assert!(size <= HISTORY_MAX_BYTES, "{size} bytes");
        assert!(h.len() < 20 && h.len() > 1, "{} entries", h.len());
        assert_eq!(h.last().unwrap().epoch, 20);
    }

    #[test]
    fn writer_null_means_no_writer() {
        let t: Topology =
            serde_json::from_str(r#"{"epoch":3,"revision":9,"writer":null,"readers":[]}"#).unwrap();
        assert!(t.writer.is_none());
        let back = serde_json::to_value(&t).unwrap();
        assert!(back["writer"].is_null());
    }
}
