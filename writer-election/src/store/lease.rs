//! Kubernetes mode: the decision lives in a `coordination.k8s.io/v1` Lease.
//!
//! Mapping (readable with `kubectl get lease -o yaml`):
//! - `spec.holderIdentity` = the writer pod's name while a writer is active, unset while suspended;
//! - `spec.leaseTransitions` = the epoch;
//! - `spec.acquireTime` = when the holder was elected, `spec.renewTime` = last write;
//! - annotations `writer-election.microstream.one/{holder,writer-address,writer-uid,active}` =
//!   the holder of the epoch (also while suspended), its address, its pod UID and whether it is
//!   active.
//!
//! No `leaseDurationSeconds`: this Lease is a record, not a lock that expires. Every write is a
//! replace carrying the resourceVersion of the last read (or a create when none existed), so a
//! second decider that read the same state gets 409 Conflict and must re-read and decide again:
//! one epoch can never be written with two holders.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use super::{RecordStore, StoreError};
use crate::decision::{Holder, Recorded};

pub const ANNOTATION_PREFIX: &str = "writer-election.microstream.one/";
pub const HOLDER: &str = "writer-election.microstream.one/holder";
pub const ADDRESS: &str = "writer-election.microstream.one/writer-address";
pub const UID: &str = "writer-election.microstream.one/writer-uid";
pub const ACTIVE: &str = "writer-election.microstream.one/active";
/// JSON array of the last writer changes (bounded by `topology::push_history`).
pub const HISTORY: &str = "writer-election.microstream.one/history";

pub struct LeaseStore {
    api: Api<Lease>,
    name: String,
    namespace: String,
    /// The Lease as last read or written: its resourceVersion guards the next write.
    last: Mutex<Option<Lease>>,
}

impl LeaseStore {
    pub fn new(api: Api<Lease>, namespace: &str, name: &str) -> Self {
        LeaseStore {
            api,
            name: name.to_string(),
            namespace: namespace.to_string(),
            last: Mutex::new(None),
        }
    }

    fn remember(&self, lease: Option<Lease>) {
        if let Ok(mut g) = self.last.lock() {
            *g = lease;
        }
    }

    fn last(&self) -> Option<Lease> {
        self.last.lock().ok().and_then(|g| g.clone())
    }
}

/// Decodes the record held by a Lease.
pub fn record_from_lease(lease: &Lease) -> Result<Recorded, String> {
    let spec = lease.spec.clone().unwrap_or_default();
    let ann = lease.metadata.annotations.clone().unwrap_or_default();
    let epoch = spec.lease_transitions.unwrap_or(0);
    let epoch =
        u64::try_from(epoch).map_err(|_| format!("leaseTransitions {epoch} is negative"))?;
    let holder_name = ann
        .get(HOLDER)
        .cloned()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.holder_identity.clone().filter(|s| !s.is_empty()));
    let active = match ann.get(ACTIVE).map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        None => spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty()),
        Some(other) => return Err(format!("annotation {ACTIVE}={other:?} is not true/false")),
    };
    let Some(name) = holder_name else {
        if epoch > 0 {
            return Err(format!("epoch {epoch} (leaseTransitions) without a holder"));
        }
        return Ok(Recorded::default());
    };
    if epoch == 0 {
        return Err(format!("holder {name} at epoch 0"));
    }
    if let Some(h) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        if h != name {
            return Err(format!(
                "holderIdentity {h} differs from annotation {HOLDER}={name}"
            ));
        }
    }
    let address = ann
        .get(ADDRESS)
        .cloned()
        .ok_or_else(|| format!("holder {name} without annotation {ADDRESS}"))?;
    // The history is kept for people, not for the decision: an annotation someone broke by hand
    // costs the history (logged), never the start or the failover.
    let history = match ann.get(HISTORY) {
        None => Vec::new(),
        Some(s) => serde_json::from_str(s).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "annotation {HISTORY} is not a valid history; starting a new one");
            Vec::new()
        }),
    };
    Ok(Recorded {
        epoch,
        holder: Some(Holder {
            name,
            address,
            uid: ann.get(UID).cloned().filter(|s| !s.is_empty()),
        }),
        active,
        history,
    })
}

/// Writes `rec` into `base` (keeping its other metadata).
pub fn lease_with_record(base: Option<Lease>, name: &str, rec: &Recorded) -> Result<Lease, String> {
    let mut lease = base.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: None,
    });
    let previous = record_from_lease(&lease).ok();
    let epoch = i32::try_from(rec.epoch).map_err(|_| format!("epoch {} overflows", rec.epoch))?;
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let mut spec = lease.spec.take().unwrap_or_default();
    let holder_changed =
        previous.as_ref().map(|p| (&p.holder, p.epoch)) != Some((&rec.holder, rec.epoch));
    spec.holder_identity = rec.writer().map(|h| h.name.clone());
    spec.lease_transitions = Some(epoch);
    spec.lease_duration_seconds = None;
    spec.renew_time = Some(now.clone());
    if holder_changed || spec.acquire_time.is_none() {
        spec.acquire_time = Some(now);
    }
    lease.spec = Some(spec);
    let ann = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.retain(|k, _| !k.starts_with(ANNOTATION_PREFIX));
    if let Some(h) = &rec.holder {
        ann.insert(HOLDER.into(), h.name.clone());
        ann.insert(ADDRESS.into(), h.address.clone());
        if let Some(uid) = &h.uid {
            ann.insert(UID.into(), uid.clone());
        }
    }
    ann.insert(ACTIVE.into(), rec.active.to_string());
    if !rec.history.is_empty() {
        let json = serde_json::to_string(&rec.history).map_err(|e| e.to_string())?;
        ann.insert(HISTORY.into(), json);
    }
    Ok(lease)
}

/// A partitioned API must not stall the decision loop (kube's own timeouts are minutes, and it
/// retries 503s): every call gives up after this.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(API_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| api_error(what, e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: no answer within {API_TIMEOUT:?}"
        ))),
    }
}

fn api_error(what: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() => {
            StoreError::Conflict(format!("{what}: {}", s.message))
        }
        _ => StoreError::Unavailable(format!("{what}: {e}")),
    }
}

#[async_trait]
impl RecordStore for LeaseStore {
    async fn load(&self) -> Result<Recorded, StoreError> {
        let what = format!("get Lease {}/{}", self.namespace, self.name);
        let lease = bounded(&what, self.api.get_opt(&self.name)).await?;
        let rec = match &lease {
            None => Recorded::default(),
            Some(l) => record_from_lease(l).map_err(|why| {
                StoreError::Corrupt(format!(
                    "Lease {}/{} does not hold a valid writer record: {why}",
                    self.namespace, self.name
                ))
            })?,
        };
        self.remember(lease);
        Ok(rec)
    }

    async fn save(&self, rec: &Recorded) -> Result<(), StoreError> {
        let base = self.last();
        let create = base.is_none();
        let lease = lease_with_record(base, &self.name, rec).map_err(StoreError::Corrupt)?;
        let written = if create {
            let what = format!("create Lease {}/{}", self.namespace, self.name);
            bounded(&what, self.api.create(&PostParams::default(), &lease)).await?
        } else {
            let what = format!("replace Lease {}/{}", self.namespace, self.name);
            bounded(
                &what,
                self.api.replace(&self.name, &PostParams::default(), &lease),
            )
            .await?
        };
        self.remember(Some(written));
        Ok(())
    }

    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(active: bool) -> Recorded {
        Recorded {
            epoch: 7,
            holder: Some(Holder {
                name: "storagenode-1".into(),
                address: "10.1.2.3:8080".into(),
                uid: Some("u-1".into()),
            }),
            active,
            history: super::super::sample_history(),
        }
    }

    #[test]
    fn record_round_trips_through_a_lease() {
        for active in [true, false] {
            let l = lease_with_record(None, "storage-writer", &rec(active)).unwrap();
            let spec = l.spec.as_ref().unwrap();
            assert_eq!(spec.lease_transitions, Some(7));
            assert_eq!(
                spec.holder_identity.as_deref(),
                if active { Some("storagenode-1") } else { None }
            );
            assert_eq!(record_from_lease(&l).unwrap(), rec(active));
        }
    }

    #[test]
    fn foreign_annotations_are_kept_and_an_empty_lease_is_no_record() {
        let mut l = lease_with_record(None, "w", &rec(true)).unwrap();
        l.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("team".into(), "storage".into());
        let l2 = lease_with_record(Some(l), "w", &Recorded::default()).unwrap();
        let ann = l2.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.get("team").map(String::as_str), Some("storage"));
        assert!(ann.get(HOLDER).is_none());
        let empty = Lease {
            metadata: ObjectMeta::default(),
            spec: None,
        };
        assert_eq!(record_from_lease(&empty).unwrap(), Recorded::default());
    }

    #[test]
    fn inconsistent_leases_are_rejected() {
        let mut l = lease_with_record(None, "w", &rec(true)).unwrap();
        l.spec.as_mut().unwrap().holder_identity = Some("someone-else".into());
        assert!(record_from_lease(&l).is_err());
        let mut l = lease_with_record(None, "w", &rec(true)).unwrap();
        l.spec.as_mut().unwrap().lease_transitions = Some(0);
        assert!(record_from_lease(&l).is_err());
        let mut l = lease_with_record(None, "w", &rec(true)).unwrap();
        l.metadata.annotations.as_mut().unwrap().remove(ADDRESS);
        assert!(record_from_lease(&l).is_err());
    }
}
