//! Storage pods as the kubelet would report them: a pod IP, a named container port, a container
//! that is running or not, and the Ready / ContainersReady conditions.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::time;

/// The label writer-election's default config selects storage pods by.
pub const STORAGE_LABEL_KEY: &str = "microstream.one/cluster-component";
pub const STORAGE_LABEL_VALUE: &str = "storagenode";

/// Builder for a storage pod. Defaults: namespace "default", the storage label, pod IP
/// 127.0.0.1, container "storagenode" with no ports, running and ready, created now.
#[derive(Debug, Clone)]
pub struct StoragePod {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    pod_ip: Option<String>,
    container: String,
    ports: Vec<(Option<String>, u16)>,
    ready: bool,
    running: bool,
    created_at: Option<SystemTime>,
    uid: Option<String>,
}

impl StoragePod {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: super::DEFAULT_NAMESPACE.into(),
            labels: BTreeMap::from([(STORAGE_LABEL_KEY.into(), STORAGE_LABEL_VALUE.into())]),
            annotations: BTreeMap::new(),
            pod_ip: Some("127.0.0.1".into()),
            container: "storagenode".into(),
            ports: Vec::new(),
            ready: true,
            running: true,
            created_at: None,
            uid: None,
        }
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Drops every label, including the default storage label.
    pub fn without_labels(mut self) -> Self {
        self.labels.clear();
        self
    }

    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// None: the pod has no IP yet (not scheduled / sandbox not up).
    pub fn pod_ip(mut self, ip: Option<&str>) -> Self {
        self.pod_ip = ip.map(str::to_string);
        self
    }

    pub fn container_name(mut self, name: impl Into<String>) -> Self {
        self.container = name.into();
        self
    }

    /// A named container port (`ports: [{name, containerPort}]`).
    pub fn port(mut self, name: impl Into<String>, number: u16) -> Self {
        self.ports.push((Some(name.into()), number));
        self
    }

    pub fn unnamed_port(mut self, number: u16) -> Self {
        self.ports.push((None, number));
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// A container that is not running is also not ready.
    pub fn running(mut self, running: bool) -> Self {
        self.running = running;
        self
    }

    pub fn created_at(mut self, at: SystemTime) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Normally the server assigns one; set it to recreate "the same" pod with a known uid.
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    pub fn to_json(&self) -> Value {
        let now = time::now();
        let created = self.created_at.map(time::rfc3339);
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, number)| match name {
                Some(name) => json!({"name": name, "containerPort": number, "protocol": "TCP"}),
                None => json!({"containerPort": number, "protocol": "TCP"}),
            })
            .collect();
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "labels": self.labels,
            "annotations": self.annotations,
        });
        if let Some(created) = created {
            metadata["creationTimestamp"] = Value::from(created);
        }
        if let Some(uid) = &self.uid {
            metadata["uid"] = Value::from(uid.clone());
        }
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "containers": [{"name": self.container, "image": "storagenode:test", "ports": ports}],
                "terminationGracePeriodSeconds": 30,
            },
            "status": {
                "phase": "Running",
                "startTime": now,
                "conditions": [],
                "containerStatuses": [{
                    "name": self.container,
                    "image": "storagenode:test",
                    "imageID": "",
                    "ready": false,
                    "restartCount": 0,
                }],
            },
        });
        if let Some(ip) = &self.pod_ip {
            pod["status"]["podIP"] = Value::from(ip.clone());
            pod["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        set_running(&mut pod, self.running);
        set_ready(&mut pod, self.ready && self.running);
        pod
    }

    pub fn build(&self) -> Pod {
        super::typed(self.to_json())
    }
}

fn set_condition(pod: &mut Value, kind: &str, on: bool) {
    let status = if on { "True" } else { "False" };
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Value::Array(list) = conditions {
        match list.iter_mut().find(|c| c["type"] == kind) {
            Some(c) if c["status"] == status => {}
            Some(c) => {
                c["status"] = Value::from(status);
                c["lastTransitionTime"] = Value::from(time::now());
            }
            None => list
                .push(json!({"type": kind, "status": status, "lastTransitionTime": time::now()})),
        }
    }
}

fn container_statuses(pod: &mut Value) -> impl Iterator<Item = &mut Value> {
    pod.pointer_mut("/status/containerStatuses")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// Container running (state.running) or stopped (state.terminated, as after a crash or OOM
/// kill; the pod stays in phase Running, as it does under restartPolicy Always). Stopping
/// also makes the pod unready; starting again counts a restart but does not make it ready.
pub fn set_running(pod: &mut Value, running: bool) {
    let now = time::now();
    let mut stopped = false;
    for status in container_statuses(pod) {
        let was_running = status.pointer("/state/running").is_some();
        if running {
            if !was_running {
                if status.get("state").is_some() {
                    let restarts = status["restartCount"].as_i64().unwrap_or(0) + 1;
                    status["restartCount"] = Value::from(restarts);
                }
                status["state"] = json!({"running": {"startedAt": now}});
            }
            status["started"] = Value::from(true);
        } else {
            if was_running || status.get("state").is_none() {
                let started = status
                    .pointer("/state/running/startedAt")
                    .cloned()
                    .unwrap_or_else(|| Value::from(now.clone()));
                status["state"] = json!({"terminated": {
                    "exitCode": 137, "reason": "Error", "startedAt": started, "finishedAt": now,
                }});
            }
            status["started"] = Value::from(false);
            stopped = true;
        }
    }
    if stopped {
        set_ready(pod, false);
    }
}

/// The Ready and ContainersReady conditions and every container's `ready` flag.
pub fn set_ready(pod: &mut Value, ready: bool) {
    for status in container_statuses(pod) {
        status["ready"] = Value::from(ready);
    }
    set_condition(pod, "ContainersReady", ready);
    set_condition(pod, "Ready", ready);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_pod_kube_can_read() {
        let pod = StoragePod::new("storagenode-0")
            .port("http", 8080)
            .label("extra", "1")
            .build();
        let status = pod.status.clone().unwrap_or_default();
        assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready);
        let container = status.container_statuses.unwrap_or_default();
        assert!(container[0]
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some()));
        let port = pod
            .spec
            .as_ref()
            .map(|s| &s.containers[0])
            .and_then(|c| c.ports.clone());
        assert_eq!(
            port.map(|p| (p[0].name.clone(), p[0].container_port)),
            Some((Some("http".into()), 8080))
        );
    }

    #[test]
    fn stopping_and_restarting_a_container() {
        let mut pod = StoragePod::new("p").to_json();
        set_running(&mut pod, false);
        assert!(pod
            .pointer("/status/containerStatuses/0/state/terminated")
            .is_some());
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], false);
        assert!(pod["status"]["conditions"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "False")));
        set_running(&mut pod, true);
        assert!(pod
            .pointer("/status/containerStatuses/0/state/running")
            .is_some());
        assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 1);
        assert_eq!(
            pod["status"]["containerStatuses"][0]["ready"], false,
            "restarted, not yet ready"
        );
        set_ready(&mut pod, true);
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    }
}
