//! Kubernetes side effects of a decision: fencing the old writer pod, labelling pods with their
//! role, and an Event per writer change. Only the leader calls these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use rand::Rng;
use tracing::{debug, info, warn};

use crate::decision::Holder;
use crate::discovery::Membership;

/// Per API call: a partitioned API must not stall the decision loop.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pod name -> (uid, label value) of patches sent and not yet seen.
type PendingLabels = HashMap<String, (Option<String>, String)>;

pub struct KubeActions {
    pub namespace: String,
    pods: Api<Pod>,
    events: Api<Event>,
    identity: String,
    label_key: Option<String>,
    /// Label patches sent and not yet seen in the pod watch: pod name -> (uid, value).
    pending_labels: Arc<Mutex<PendingLabels>>,
}

impl KubeActions {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        identity: &str,
        label_key: Option<String>,
    ) -> Self {
        KubeActions {
            namespace: namespace.to_string(),
            pods: Api::namespaced(client.clone(), namespace),
            events: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            label_key,
            pending_labels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Deletes the pod `name` if it is still the incarnation `uid`, and waits until it is gone
    /// (404, or a pod of another UID under that name). Err: not confirmed within `timeout`.
    pub async fn delete_pod_and_confirm(
        &self,
        name: &str,
        uid: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.pods.delete(name, &dp)).await {
            Ok(Ok(_)) => info!(pod = %name, uid = %uid, "fencing: deleted the old writer pod"),
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() || s.is_conflict() => {
                // Gone already, or the name now belongs to another incarnation.
            }
            Ok(Err(e)) => return Err(format!("delete pod {name}: {e}")),
            Err(_) => {
                return Err(format!(
                    "delete pod {name}: no answer within {CALL_TIMEOUT:?}"
                ))
            }
        }
        loop {
            match tokio::time::timeout(CALL_TIMEOUT, self.pods.get_opt(name)).await {
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(p))) if p.metadata.uid.as_deref() != Some(uid) => return Ok(()),
                Ok(Ok(Some(_))) => {}
                Ok(Err(e)) => debug!(pod = %name, error = %e, "fencing: cannot read pod yet"),
                Err(_) => debug!(pod = %name, "fencing: pod read timed out"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "old writer pod {name} (uid {uid}) still exists after {}",
                    humantime::format_duration(timeout)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Best effort, in the background: an Event on the new writer pod.
    pub fn emit_event(&self, writer: &Holder, kind: &str, reason: &str, message: String) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let suffix: u64 = rand::rng().random();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:016x}", writer.name, suffix)),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(writer.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: writer.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.clone()),
            type_: Some(kind.to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some("writer-election".into()),
                host: None,
            }),
            reporting_component: Some("writer-election".into()),
            reporting_instance: Some(self.identity.clone()),
            action: Some("Elect".into()),
            ..Default::default()
        };
        let api = self.events.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &event))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, message = %message, "could not create the Kubernetes Event")
                }
                Err(_) => {
                    warn!(message = %message, "could not create the Kubernetes Event: no answer")
                }
            }
        });
    }

    /// Patches the role label of every pod whose label differs from its role (best effort, in
    /// the background; a patch is not repeated until the watch shows another value).
    pub fn reconcile_labels(&self, m: &Membership, writer: Option<&Holder>) {
        let Some(key) = self.label_key.clone() else {
            return;
        };
        let Ok(mut pending) = self.pending_labels.lock() else {
            return;
        };
        pending.retain(|name, (uid, value)| {
            m.get(name)
                .is_some_and(|n| &n.uid == uid && n.role_label.as_deref() != Some(value.as_str()))
        });
        for n in &m.nodes {
            let is_writer =
                writer.is_some_and(|w| w.name == n.name && (w.uid.is_none() || w.uid == n.uid));
            let want = if is_writer { "writer" } else { "reader" };
            if n.role_label.as_deref() == Some(want) {
                continue;
            }
            if pending
                .get(&n.name)
                .is_some_and(|(uid, v)| uid == &n.uid && v == want)
            {
                continue;
            }
            pending.insert(n.name.clone(), (n.uid.clone(), want.to_string()));
            let api = self.pods.clone();
            let name = n.name.clone();
            let patch = serde_json::json!({"metadata": {"labels": {key.clone(): want}}});
            let pending = self.pending_labels.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(
                    CALL_TIMEOUT,
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("no answer".into())));
                match r {
                    Ok(_) => debug!(pod = %name, role = want, "labelled pod"),
                    Err(e) => {
                        warn!(pod = %name, error = %e, "could not label pod");
                        if let Ok(mut p) = pending.lock() {
                            p.remove(&name);
                        }
                    }
                }
            });
        }
    }
}
