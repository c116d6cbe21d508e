//! `kubernetes` mode: a `kube::runtime::watcher` on the storage pods (label selector, one
//! namespace). A deleted pod, or one that is terminating or whose containers are not all
//! running, is out at once: the watch event is faster than any probe.
//!
//! While the API cannot be reached the watcher retries with backoff and the last pod list stays
//! published; `api_up` says whether the last watch attempt worked (the engine does not fail over
//! while it is false, see README.md "Kubernetes mode").

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::time::Duration;
use tokio::sync::watch;
use topology_client::backoff;
use tracing::{debug, info, warn};

use super::{DiscoveredNode, Membership, MembershipTx};
use crate::config::PortRef;

const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `discovery.kubernetes.namespace`, else this pod's own namespace, else the client's default.
pub fn resolve_namespace(configured: &str, client: &kube::Client) -> String {
    if !configured.trim().is_empty() {
        return configured.trim().to_string();
    }
    if let Ok(ns) = std::fs::read_to_string(SA_NAMESPACE_FILE) {
        let ns = ns.trim();
        if !ns.is_empty() {
            return ns.to_string();
        }
    }
    client.default_namespace().to_string()
}

/// The node a pod stands for; `None` when it cannot be dialled yet (no IP, no such port).
pub fn node_from_pod(pod: &Pod, port: &PortRef, label_key: Option<&str>) -> Option<DiscoveredNode> {
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| !ip.is_empty())?;
    let port_number = match port {
        PortRef::Number(n) => *n,
        PortRef::Name(wanted) => {
            let spec = pod.spec.as_ref()?;
            let found = spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(wanted.as_str()))?;
            u16::try_from(found.container_port).ok()?
        }
    };
    let address = if ip.contains(':') {
        format!("[{ip}]:{port_number}")
    } else {
        format!("{ip}:{port_number}")
    };
    let containers = status
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let running = pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && !containers.is_empty()
        && containers
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let pod_ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    Some(DiscoveredNode {
        name,
        address,
        uid: pod.metadata.uid.clone(),
        running,
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        pod_ready: Some(pod_ready.unwrap_or(false)),
        role_label: label_key
            .and_then(|k| pod.metadata.labels.as_ref().and_then(|l| l.get(k).cloned())),
    })
}

/// Retry delays of the pod watch after an error: 200 ms doubling to 3 s, with jitter
/// ([`backoff::doubling_jittered`]); a successful watch event starts them over. kube's default goes
/// up to 30 s, which would delay noticing that the API is back (and so every failover held during
/// the outage) by as much.
fn watch_backoff() -> watcher::ExponentialBackoff {
    watcher::ExponentialBackoff::from(backoff::doubling_jittered(BACKOFF_MIN, BACKOFF_MAX))
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

pub struct PodWatch {
    pub api: Api<Pod>,
    pub label_selector: String,
    pub port: PortRef,
    pub label_key: Option<String>,
}

fn publish(tx: &MembershipTx, pods: &BTreeMap<String, DiscoveredNode>) {
    let m = Membership::new(pods.values().cloned().collect());
    tx.send_if_modified(|cur| {
        if **cur == m {
            false
        } else {
            *cur = Arc::new(m);
            true
        }
    });
}

/// Runs until `stop` fires.
pub async fn run(
    w: PodWatch,
    tx: MembershipTx,
    api_up: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = watcher::Config::default().labels(&w.label_selector);
    let stream = watcher::watcher(w.api.clone(), cfg).backoff(watch_backoff());
    futures::pin_mut!(stream);
    let mut pods: BTreeMap<String, DiscoveredNode> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, DiscoveredNode>> = None;
    let mut skipped: BTreeMap<String, ()> = BTreeMap::new();
    let key = w.label_key.as_deref();
    let mut convert = |pod: &Pod| -> Option<DiscoveredNode> {
        let node = node_from_pod(pod, &w.port, key);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match &node {
            None => {
                if skipped.insert(name.clone(), ()).is_none() {
                    debug!(pod = %name, port = %w.port, "pod has no IP or no such port yet; not a node");
                }
            }
            Some(_) => {
                skipped.remove(&name);
            }
        }
        node
    };
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stop.changed() => return,
        };
        let Some(ev) = ev else { return };
        match ev {
            Ok(ev) => {
                api_up.send_if_modified(|up| {
                    if !*up {
                        info!("Kubernetes API reachable: pod watch running");
                    }
                    !std::mem::replace(up, true)
                });
                match ev {
                    Event::Init => listing = Some(BTreeMap::new()),
                    Event::InitApply(pod) => {
                        if let (Some(l), Some(n)) = (listing.as_mut(), convert(&pod)) {
                            l.insert(n.name.clone(), n);
                        }
                    }
                    Event::InitDone => {
                        if let Some(l) = listing.take() {
                            pods = l;
                        }
                        publish(&tx, &pods);
                    }
                    Event::Apply(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        match convert(&pod) {
                            Some(n) => {
                                pods.insert(name, n);
                            }
                            None => {
                                pods.remove(&name);
                            }
                        }
                        publish(&tx, &pods);
                    }
                    Event::Delete(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        // A delete of an older incarnation must not remove its successor.
                        let same = pods
                            .get(&name)
                            .is_some_and(|n| n.uid.is_none() || n.uid == pod.metadata.uid);
                        if same {
                            pods.remove(&name);
                            publish(&tx, &pods);
                        }
                    }
                }
            }
            Err(e) => {
                api_up.send_if_modified(|up| {
                    if *up {
                        warn!(error = %e, "Kubernetes API unreachable: keeping the last pod list and the recorded writer");
                    }
                    std::mem::replace(up, false)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "storagenode-1", "uid": "u1",
                         "creationTimestamp": "2026-01-02T03:04:05Z",
                         "labels": {"microstream.one/role": "reader"}},
            "spec": {"containers": [{"name": "storagenode",
                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "storagenode", "image": "x", "imageID": "",
                          "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        })
    }

    #[test]
    fn the_watch_retries_after_200ms_doubling_to_3s_with_jitter_and_starts_over() {
        use kube::runtime::utils::Backoff;
        // backon computes in f32: whole milliseconds are what matters.
        let millis = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        let mut b = watch_backoff();
        let d: Vec<u64> = b.by_ref().take(10).map(millis).collect();
        assert!((100..=200).contains(&d[0]), "first {}ms", d[0]);
        assert!((200..=400).contains(&d[1]), "second {}ms", d[1]);
        for late in &d[5..] {
            assert!((1500..=3000).contains(late), "capped: {late}ms");
        }
        b.reset();
        let first = b.next().map(millis);
        assert!(
            first.is_some_and(|f| (100..=200).contains(&f)),
            "after reset {first:?}"
        );
    }

    #[test]
    fn running_pod_with_named_port() {
        let n = node_from_pod(
            &pod(base()),
            &PortRef::Name("http".into()),
            Some("microstream.one/role"),
        )
        .unwrap();
        assert_eq!(n.name, "storagenode-1");
        assert_eq!(n.address, "10.0.0.7:8080");
        assert_eq!(n.uid.as_deref(), Some("u1"));
        assert!(n.running);
        assert_eq!(n.pod_ready, Some(true));
        assert_eq!(n.role_label.as_deref(), Some("reader"));
        assert!(n.created.is_some());
        let n = node_from_pod(&pod(base()), &PortRef::Number(9000), None).unwrap();
        assert_eq!(n.address, "10.0.0.7:9000");
    }

    #[test]
    fn pods_that_cannot_be_dialled_are_not_nodes() {
        let mut p = base();
        p["status"]["podIP"] = serde_json::Value::Null;
        assert!(node_from_pod(&pod(p), &PortRef::Number(80), None).is_none());
        assert!(node_from_pod(&pod(base()), &PortRef::Name("grpc".into()), None).is_none());
    }

    #[test]
    fn terminating_or_stopped_pods_are_not_running() {
        let mut p = base();
        p["metadata"]["deletionTimestamp"] = "2026-01-02T03:05:00Z".into();
        assert!(
            !node_from_pod(&pod(p), &PortRef::Number(80), None)
                .unwrap()
                .running
        );
        let mut p = base();
        p["status"]["containerStatuses"][0]["state"] =
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}});
        assert!(
            !node_from_pod(&pod(p), &PortRef::Number(80), None)
                .unwrap()
                .running
        );
        let mut p = base();
        p["status"]["phase"] = "Pending".into();
        assert!(
            !node_from_pod(&pod(p), &PortRef::Number(80), None)
                .unwrap()
                .running
        );
    }
}
