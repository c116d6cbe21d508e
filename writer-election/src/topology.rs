//! The topology document served on `GET /v1/topology` (README.md, "Topology API").
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

impl Topology {
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

    #[test]
    fn writer_null_means_no_writer() {
        let t: Topology =
            serde_json::from_str(r#"{"epoch":3,"revision":9,"writer":null,"readers":[]}"#).unwrap();
        assert!(t.writer.is_none());
        let back = serde_json::to_value(&t).unwrap();
        assert!(back["writer"].is_null());
    }
}
