//! Follows writer-election's `/v1/topology` with blocking queries and reports each change.

use std::time::Duration;

use topology_client::client::{FollowEvent, FollowOptions, TopologyFollower};
use topology_client::topology::Topology;

/// One line per thing a person watching the demo cares about, comparing `old` to `new`.
pub fn describe_change(old: Option<&Topology>, new: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    let writer = |t: &Topology| t.writer.as_ref().map(|w| w.name.clone());
    let (was, now) = (old.and_then(writer), writer(new));
    if old.is_none() || was != now || old.map(|o| o.epoch) != Some(new.epoch) {
        out.push(match (&was, &now) {
            (_, None) => format!("no writer (epoch {}): writes are held", new.epoch),
            (None, Some(n)) => format!("writer is {n} (epoch {})", new.epoch),
            (Some(o), Some(n)) if o == n => format!("writer {n} (epoch {})", new.epoch),
            (Some(o), Some(n)) => format!("writer changed {o} -> {n} (epoch {})", new.epoch),
        });
    }
    for n in &new.nodes {
        let before = old.and_then(|o| o.nodes.iter().find(|x| x.name == n.name));
        match before {
            Some(b) if b.ready != n.ready => out.push(format!(
                "{} is {}",
                n.name,
                if n.ready { "ready" } else { "not ready" }
            )),
            None if old.is_some() => out.push(format!("{} joined", n.name)),
            _ => {}
        }
    }
    out
}

/// Calls `on_change` for the first document and for every one that differs from the last,
/// through writer-election's own client (one blocking query kept open, backoff on errors).
/// Runs until the task is dropped.
pub async fn follow(
    election_url: String,
    mut on_change: impl FnMut(Option<&Topology>, &Topology) + Send,
) {
    let opts = FollowOptions {
        wait: Duration::from_secs(20),
        // No client id: an id makes writer-election wait for this watcher's drain acknowledgement
        // at every switchover, and loadtest only watches, it never sends writes to drain.
        client_id: None,
        ..FollowOptions::default()
    };
    let follower = match TopologyFollower::new(vec![election_url], opts) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow the topology");
            return;
        }
    };
    let mut current: Option<Topology> = None;
    follower
        .run(move |event| match event {
            FollowEvent::Updated(t) => {
                on_change(current.as_ref(), &t);
                current = Some(t);
            }
            FollowEvent::Unreachable { url, error } => {
                tracing::debug!(%url, %error, "topology query failed");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology_client::topology::{NodeRef, NodeStatus, Role};

    fn topo(epoch: u64, rev: u64, writer: Option<&str>, ready: &[(&str, bool)]) -> Topology {
        Topology {
            epoch,
            revision: rev,
            writer: writer.map(|w| NodeRef {
                name: w.into(),
                address: "a".into(),
            }),
            readers: vec![],
            nodes: ready
                .iter()
                .map(|(n, r)| NodeStatus {
                    name: (*n).into(),
                    address: "a".into(),
                    ready: *r,
                    role: if Some(*n) == writer {
                        Role::Writer
                    } else {
                        Role::Reader
                    },
                })
                .collect(),
            updated_at: String::new(),
            switchover: None,
            replication: None,
        }
    }

    #[test]
    fn reports_writer_changes_and_readiness() {
        let a = topo(1, 1, Some("node-1"), &[("node-1", true), ("node-2", true)]);
        assert_eq!(
            describe_change(None, &a),
            vec!["writer is node-1 (epoch 1)"]
        );
        let b = topo(1, 2, Some("node-1"), &[("node-1", false), ("node-2", true)]);
        assert_eq!(describe_change(Some(&a), &b), vec!["node-1 is not ready"]);
        let c = topo(2, 3, Some("node-2"), &[("node-1", false), ("node-2", true)]);
        assert_eq!(
            describe_change(Some(&b), &c),
            vec!["writer changed node-1 -> node-2 (epoch 2)"]
        );
        let d = topo(2, 4, None, &[("node-1", false), ("node-2", false)]);
        assert_eq!(
            describe_change(Some(&c), &d),
            vec![
                "no writer (epoch 2): writes are held",
                "node-2 is not ready"
            ]
        );
    }
}
