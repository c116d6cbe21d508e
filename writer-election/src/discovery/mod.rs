//! Who the storage nodes are: `static` (config), `kubernetes` (pod watch), `dns` (A records).
//!
//! Each source publishes a complete [`Membership`] snapshot on a watch channel whenever it
//! changes; the engine probes what is listed. A source that cannot be read (API or DNS down)
//! keeps publishing its last snapshot: losing the source is never a reason to drop nodes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::StaticDiscovery;
use crate::decision::natural_cmp;

pub mod dns;
pub mod kubernetes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredNode {
    pub name: String,
    /// `host:port` to probe and to publish.
    pub address: String,
    /// Pod UID (Kubernetes mode).
    pub uid: Option<String>,
    /// false: terminating, or a container is not running. Out at once, without probing.
    pub running: bool,
    /// Ordering key for `candidate_order: oldest`.
    pub created: Option<i64>,
    /// The pod's Ready condition (Kubernetes mode): what HA followers, which do not probe, show.
    pub pod_ready: Option<bool>,
    /// The current value of the `label_pods.key` label.
    pub role_label: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Sorted by name (natural order), names unique.
    pub nodes: Vec<DiscoveredNode>,
    /// false until the source has listed the nodes once.
    pub synced: bool,
}

impl Membership {
    pub fn new(mut nodes: Vec<DiscoveredNode>) -> Self {
        nodes.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        Membership {
            nodes,
            synced: true,
        }
    }

    pub fn get(&self, name: &str) -> Option<&DiscoveredNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

pub type MembershipTx = watch::Sender<Arc<Membership>>;
pub type MembershipRx = watch::Receiver<Arc<Membership>>;

pub fn channel() -> (MembershipTx, MembershipRx) {
    watch::channel(Arc::new(Membership::default()))
}

/// Static mode: the config's list, oldest = listed first.
pub fn static_membership(cfg: &StaticDiscovery) -> Membership {
    Membership::new(
        cfg.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| DiscoveredNode {
                name: n.name.clone(),
                address: n.address.clone(),
                uid: None,
                running: true,
                created: Some(i as i64),
                pod_ready: None,
                role_label: None,
            })
            .collect(),
    )
}
