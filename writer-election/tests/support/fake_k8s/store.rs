//! The object store: the semantics of etcd plus the apiserver's registry for the few resources
//! the fake serves. One global resourceVersion counter (as in etcd) is bumped by every write and
//! stamped on the written object; every write is also appended to a bounded history that watches
//! read from, so a watch resuming from a compacted resourceVersion gets 410 Gone, as it would
//! from a real cluster.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use serde_json::{json, Map, Value};

use super::patch::{json_patch, merge_patch, PatchType};
use super::resources::Kind;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::time;

pub const DEFAULT_HISTORY_CAPACITY: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn wire_name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    rv: u64,
    kind: Kind,
    namespace: String,
    event: EventType,
    /// The object after the write (for a delete: its last state, carrying the delete's rv).
    object: Value,
    /// The object before the write (None for a create).
    previous: Option<Value>,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Value,
    /// Creation order, so tests can read events in the order they were posted.
    created_seq: u64,
}

type Key = (Kind, String, String);

/// Which objects a list or watch wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object.pointer("/metadata/labels")) && self.fields.matches(object)
    }
}

/// What a DELETE did.
pub enum Deleted {
    /// Removed; the object's last state, stamped with the deletion's resourceVersion.
    Gone(Value),
    /// A pod kept terminating (deletionTimestamp set) because pod deletions are held.
    Terminating(Value),
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<HistoryEntry>,
    history_capacity: usize,
    /// A watch may resume from any rv >= this; older ones were compacted away (410 Gone).
    oldest_watchable: u64,
    next_seq: u64,
    hold_pod_deletions: bool,
    random: RandomState,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_capacity: DEFAULT_HISTORY_CAPACITY,
            oldest_watchable: 0,
            next_seq: 0,
            hold_pod_deletions: false,
            random: RandomState::new(),
        }
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    (kind, namespace.to_string(), name.to_string())
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        // Unreachable: the metadata object was just ensured above.
        _ => unreachable!("metadata is an object"),
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    metadata_mut(object).insert("resourceVersion".into(), Value::String(rv.to_string()));
}

/// The body of a create/update must be an object of the addressed kind, in the addressed namespace.
fn check_body(kind: Kind, namespace: &str, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of a {} request must be a JSON object",
            kind.kind()
        )));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str) {
        if api_version != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
    }
    if let Some(k) = body.get("kind").and_then(Value::as_str) {
        if k != kind.kind() {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind()
            )));
        }
    }
    if body.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let Some(ns) = meta_str(body, "namespace") {
        if !ns.is_empty() && ns != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(())
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn set_history_capacity(&mut self, capacity: usize) {
        self.history_capacity = capacity.max(1);
        self.trim_history();
    }

    pub fn set_hold_pod_deletions(&mut self, hold: bool) {
        self.hold_pod_deletions = hold;
    }

    /// Compacts the whole history: every open watch and every watch resumed from an rv older than
    /// now gets 410 Gone. The rv is bumped (as any write elsewhere in a real cluster would) so
    /// that even a watcher that has seen every event is behind the compaction point.
    pub fn expire_history(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.oldest_watchable = self.rv;
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_watchable = dropped.rv;
            }
        }
    }

    fn uid(&mut self) -> String {
        let mut a = self.random.build_hasher();
        a.write_u64(self.next_seq);
        a.write_u64(self.rv);
        let high = a.finish();
        let mut b = self.random.build_hasher();
        b.write_u64(high);
        let low = b.finish();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xfff,
            (low >> 48) & 0xfff,
            low & 0xffff_ffff_ffff
        )
    }

    fn generated_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut h = self.random.build_hasher();
        h.write_u64(self.next_seq);
        h.write_u64(self.rv);
        let mut bits = h.finish();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
                bits /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    /// Applies one write: bumps the rv, stamps it, stores or removes, records history.
    fn commit(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        event: EventType,
        mut object: Value,
    ) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let k = key(kind, namespace, name);
        let previous = match event {
            EventType::Deleted => self.objects.remove(&k).map(|s| s.value),
            EventType::Added | EventType::Modified => {
                let created_seq = match self.objects.get(&k) {
                    Some(existing) => existing.created_seq,
                    None => {
                        self.next_seq += 1;
                        self.next_seq
                    }
                };
                self.objects
                    .insert(
                        k,
                        Stored {
                            value: object.clone(),
                            created_seq,
                        },
                    )
                    .map(|s| s.value)
            }
        };
        self.history.push_back(HistoryEntry {
            rv: self.rv,
            kind,
            namespace: namespace.to_string(),
            event,
            object: object.clone(),
            previous,
        });
        self.trim_history();
        object
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(kind, namespace, name))
            .map(|s| s.value.clone())
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Matching objects in key order (namespace, name) and the rv the list is consistent at.
    pub fn list(&self, kind: Kind, namespace: Option<&str>, filter: &Filter) -> (Vec<Value>, u64) {
        let items = self
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .filter(|(_, s)| filter.matches(&s.value))
            .map(|(_, s)| s.value.clone())
            .collect();
        (items, self.rv)
    }

    /// Objects of these kinds in the order they were created (for events).
    pub fn in_creation_order(&self, kinds: &[Kind]) -> Vec<Value> {
        let mut stored: Vec<&Stored> = self
            .objects
            .iter()
            .filter(|((k, _, _), _)| kinds.contains(k))
            .map(|(_, s)| s)
            .collect();
        stored.sort_by_key(|s| s.created_seq);
        stored.into_iter().map(|s| s.value.clone()).collect()
    }

    /// POST: the object must not exist; uid, creationTimestamp and resourceVersion are the server's.
    pub fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_body(kind, namespace, &body)?;
        if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match meta_str(&body, "name").filter(|n| !n.is_empty()) {
            Some(name) => name.to_string(),
            None => match meta_str(&body, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", self.generated_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        if self.objects.contains_key(&key(kind, namespace, &name)) {
            return Err(ApiError::already_exists(kind, &name));
        }
        body["apiVersion"] = Value::from(kind.api_version());
        body["kind"] = Value::from(kind.kind());
        let uid = self.uid();
        let meta = metadata_mut(&mut body);
        meta.insert("name".into(), Value::from(name.clone()));
        meta.insert("namespace".into(), Value::from(namespace));
        meta.insert("uid".into(), Value::from(uid));
        meta.insert("creationTimestamp".into(), Value::from(time::now()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if dry_run {
            set_rv(&mut body, self.rv);
            return Ok(body);
        }
        Ok(self.commit(kind, namespace, &name, EventType::Added, body))
    }

    /// Carries over what a client cannot change by update or patch.
    fn keep_server_fields(kind: Kind, old: &Value, new: &mut Value) {
        new["apiVersion"] = Value::from(kind.api_version());
        new["kind"] = Value::from(kind.kind());
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let meta = metadata_mut(new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        // Pod status is a subresource: writes to the pod itself leave it as it was.
        if kind == Kind::Pod {
            match old.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Value::Object(map) = new {
                        map.remove("status");
                    }
                }
            }
        }
    }

    /// The optimistic-concurrency checks shared by update and patch: a resourceVersion or uid in
    /// the new object that differs from the stored one is a 409 Conflict.
    fn check_preconditions(
        kind: Kind,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        if let Some(uid) = meta_str(new, "uid").filter(|u| !u.is_empty()) {
            let current = meta_str(old, "uid").unwrap_or("");
            if uid != current {
                return Err(ApiError::conflict_because(
                    kind,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current}"),
                ));
            }
        }
        if let Some(rv) = meta_str(new, "resourceVersion").filter(|rv| !rv.is_empty()) {
            if Some(rv) != meta_str(old, "resourceVersion") {
                return Err(ApiError::conflict(kind, name));
            }
        }
        Ok(())
    }

    /// Stores `new` unless it equals what is stored (a no-op write bumps nothing, as in Kubernetes).
    fn write_if_changed(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        old: Value,
        mut new: Value,
        dry_run: bool,
    ) -> Value {
        let current_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        metadata_mut(&mut new).insert("resourceVersion".into(), Value::from(current_rv));
        if new == old || dry_run {
            return new;
        }
        self.commit(kind, namespace, name, EventType::Modified, new)
    }

    /// PUT: replace with optimistic concurrency (a stale metadata.resourceVersion is a 409;
    /// none at all is an unconditional update, which leases and pods allow).
    pub fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_body(kind, namespace, &body)?;
        let body_name = meta_str(&body, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old = self.get(kind, namespace, name)?;
        Self::check_preconditions(kind, name, &old, &body)?;
        Self::keep_server_fields(kind, &old, &mut body);
        Ok(self.write_if_changed(kind, namespace, name, old, body, dry_run))
    }

    /// PATCH. A resourceVersion in the patched result that differs from the stored one is a
    /// 409, exactly as for update (that is how clients make a patch conditional).
    pub fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = match self.get(kind, namespace, name) {
            Ok(old) => old,
            Err(_) if patch_type == PatchType::Apply => {
                // Server-side apply creates what does not exist yet.
                let mut body = patch.clone();
                if body.is_object() {
                    metadata_mut(&mut body).insert("name".into(), Value::from(name));
                }
                return self.create(kind, namespace, body, dry_run);
            }
            Err(e) => return Err(e),
        };
        let mut new = old.clone();
        match patch_type {
            PatchType::Json => {
                json_patch(&mut new, patch).map_err(|e| ApiError::invalid(kind, name, &e))?
            }
            PatchType::Merge | PatchType::StrategicMerge | PatchType::Apply => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut new, patch);
            }
        }
        check_body(kind, namespace, &new)?;
        Self::check_preconditions(kind, name, &old, &new)?;
        Self::keep_server_fields(kind, &old, &mut new);
        Ok(self.write_if_changed(kind, namespace, name, old, new, dry_run))
    }

    /// DELETE with optional DeleteOptions (preconditions, gracePeriodSeconds).
    pub fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let old = self.get(kind, namespace, name)?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
        {
            let current = meta_str(&old, "uid").unwrap_or("");
            if uid != current {
                return Err(ApiError::conflict_because(
                    kind,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current}"),
                ));
            }
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let current = meta_str(&old, "resourceVersion").unwrap_or("");
            if rv != current {
                return Err(ApiError::conflict_because(
                    kind,
                    name,
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {current}"),
                ));
            }
        }
        let grace = options.get("gracePeriodSeconds").and_then(Value::as_i64);
        if kind == Kind::Pod && self.hold_pod_deletions && grace != Some(0) {
            if meta_str(&old, "deletionTimestamp").is_some() || dry_run {
                return Ok(Deleted::Terminating(old));
            }
            let grace = grace
                .or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(1);
            let mut terminating = old;
            let meta = metadata_mut(&mut terminating);
            meta.insert(
                "deletionTimestamp".into(),
                Value::from(time::seconds_from_now(grace.unsigned_abs())),
            );
            meta.insert("deletionGracePeriodSeconds".into(), Value::from(grace));
            return Ok(Deleted::Terminating(self.commit(
                kind,
                namespace,
                name,
                EventType::Modified,
                terminating,
            )));
        }
        if dry_run {
            return Ok(Deleted::Gone(old));
        }
        Ok(Deleted::Gone(self.commit(
            kind,
            namespace,
            name,
            EventType::Deleted,
            old,
        )))
    }

    /// Test control: create or replace unconditionally, keeping uid and creationTimestamp of an
    /// existing object unless the new one sets them.
    pub fn upsert(
        &mut self,
        kind: Kind,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, String> {
        if !object.is_object() {
            return Err("object must serialize to a JSON object".into());
        }
        let name = meta_str(&object, "name")
            .filter(|n| !n.is_empty())
            .ok_or("object needs metadata.name")?
            .to_string();
        object["apiVersion"] = Value::from(kind.api_version());
        object["kind"] = Value::from(kind.kind());
        let existing = self
            .objects
            .get(&key(kind, namespace, &name))
            .map(|s| s.value.clone());
        let fresh_uid = self.uid();
        let meta = metadata_mut(&mut object);
        meta.insert("namespace".into(), Value::from(namespace));
        for (field, default) in [
            ("uid", Value::from(fresh_uid)),
            ("creationTimestamp", Value::from(time::now())),
        ] {
            if meta.get(field).is_none_or(|v| v.is_null() || v == "") {
                let keep = existing
                    .as_ref()
                    .and_then(|e| e.get("metadata"))
                    .and_then(|m| m.get(field))
                    .cloned()
                    .unwrap_or(default);
                meta.insert(field.into(), keep);
            }
        }
        let event = if existing.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        Ok(self.commit(kind, namespace, &name, event, object))
    }

    /// Test control: change a stored object in place (one write, one MODIFIED event).
    pub fn modify(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut object = self.get(kind, namespace, name).ok()?;
        let before = object.clone();
        change(&mut object);
        if !object.is_object() {
            return None;
        }
        if object == before {
            return Some(object);
        }
        Some(self.commit(kind, namespace, name, EventType::Modified, object))
    }

    /// Test control: remove at once (a force delete, or the kubelet finishing a graceful one).
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let old = self.get(kind, namespace, name).ok()?;
        Some(self.commit(kind, namespace, name, EventType::Deleted, old))
    }

    /// The watch events after `since` for one kind/namespace/filter, and the rv the watch has now
    /// seen up to. Selector semantics follow the apiserver's watch cache: an object that starts
    /// matching arrives as ADDED, one that stops matching as DELETED (its previous content with
    /// the new rv).
    pub fn events_since(
        &self,
        since: u64,
        kind: Kind,
        namespace: Option<&str>,
        filter: &Filter,
    ) -> Result<(Vec<(EventType, Value)>, u64), ApiError> {
        if since < self.oldest_watchable {
            return Err(ApiError::expired(since, self.oldest_watchable));
        }
        let start = self.history.partition_point(|e| e.rv <= since);
        let mut events = Vec::new();
        for entry in self.history.range(start..) {
            if entry.kind != kind || namespace.is_some_and(|ns| ns != entry.namespace) {
                continue;
            }
            let now_matches = filter.matches(&entry.object);
            let matched_before = entry.previous.as_ref().is_some_and(|p| filter.matches(p));
            match entry.event {
                EventType::Added if now_matches => {
                    events.push((EventType::Added, entry.object.clone()))
                }
                EventType::Deleted if now_matches => {
                    events.push((EventType::Deleted, entry.object.clone()))
                }
                EventType::Modified => match (matched_before, now_matches) {
                    (true, true) => events.push((EventType::Modified, entry.object.clone())),
                    (false, true) => events.push((EventType::Added, entry.object.clone())),
                    (true, false) => {
                        let mut gone = entry.previous.clone().unwrap_or_default();
                        set_rv(&mut gone, entry.rv);
                        events.push((EventType::Deleted, gone));
                    }
                    (false, false) => {}
                },
                _ => {}
            }
        }
        Ok((events, self.rv.max(since)))
    }

    /// Whether a watch may start (or resume) at `rv`.
    pub fn check_watchable(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.oldest_watchable {
            Err(ApiError::expired(rv, self.oldest_watchable))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {}})
    }

    fn rv_of(v: &Value) -> u64 {
        meta_str(v, "resourceVersion")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn writes_bump_one_global_resource_version() {
        let mut store = Store::default();
        let a = store
            .create(Kind::Pod, "ns", pod("a", "x"), false)
            .unwrap_or_default();
        let lease = store
            .create(Kind::Lease, "ns", json!({"metadata": {"name": "l"}}), false)
            .unwrap_or_default();
        assert_eq!((rv_of(&a), rv_of(&lease)), (1, 2));
        assert!(meta_str(&a, "uid").is_some_and(|u| u.len() == 36));
        assert_ne!(meta_str(&a, "uid"), meta_str(&lease, "uid"));
        assert_eq!(
            store
                .create(Kind::Pod, "ns", pod("a", "x"), false)
                .map_err(|e| e.code),
            Err(409)
        );
        assert_eq!(store.resource_version(), 2);
    }

    #[test]
    fn update_checks_resource_version_and_skips_no_ops() {
        let mut store = Store::default();
        let created = store
            .create(
                Kind::Lease,
                "ns",
                json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}),
                false,
            )
            .unwrap_or_default();
        let mut change = created.clone();
        change["spec"]["holderIdentity"] = json!("b");
        let updated = store
            .update(Kind::Lease, "ns", "l", change.clone(), false)
            .unwrap_or_default();
        assert_eq!(rv_of(&updated), 2);
        // The same body again carries the old resourceVersion: a conflict.
        let stale = store.update(Kind::Lease, "ns", "l", change, false);
        assert_eq!(
            stale.map_err(|e| (e.code, e.reason)),
            Err((409, "Conflict"))
        );
        // Writing what is stored changes nothing.
        let same = store
            .update(Kind::Lease, "ns", "l", updated.clone(), false)
            .unwrap_or_default();
        assert_eq!(rv_of(&same), 2);
        assert_eq!(store.resource_version(), 2);
    }

    #[test]
    fn watch_history_honours_selectors_and_compaction() {
        let mut store = Store::default();
        store.create(Kind::Pod, "ns", pod("a", "x"), false).ok();
        let filter = Filter {
            labels: LabelSelector::parse("app=x").unwrap_or_default(),
            fields: FieldSelector::default(),
        };
        store
            .patch(
                Kind::Pod,
                "ns",
                "a",
                PatchType::Merge,
                &json!({"metadata": {"labels": {"app": "y"}}}),
                false,
            )
            .ok();
        store
            .patch(
                Kind::Pod,
                "ns",
                "a",
                PatchType::Merge,
                &json!({"metadata": {"labels": {"app": "x"}}}),
                false,
            )
            .ok();
        store.delete(Kind::Pod, "ns", "a", &json!({}), false).ok();
        let (events, seen) = store
            .events_since(0, Kind::Pod, Some("ns"), &filter)
            .unwrap_or_default();
        let types: Vec<_> = events
            .iter()
            .map(|(t, o)| (t.wire_name(), rv_of(o)))
            .collect();
        assert_eq!(
            types,
            vec![("ADDED", 1), ("DELETED", 2), ("ADDED", 3), ("DELETED", 4)]
        );
        assert_eq!(seen, 4);
        store.expire_history();
        assert_eq!(
            store
                .events_since(4, Kind::Pod, None, &filter)
                .map_err(|e| e.code)
                .err(),
            Some(410)
        );
        assert!(store
            .events_since(store.resource_version(), Kind::Pod, None, &filter)
            .is_ok());
    }

    #[test]
    fn bounded_history_expires_the_oldest() {
        let mut store = Store::default();
        store.set_history_capacity(2);
        for name in ["a", "b", "c"] {
            store.create(Kind::Pod, "ns", pod(name, "x"), false).ok();
        }
        assert!(store.check_watchable(0).is_err());
        assert!(store.check_watchable(1).is_ok());
    }

    #[test]
    fn delete_preconditions_and_held_pod_deletion() {
        let mut store = Store::default();
        store.create(Kind::Pod, "ns", pod("a", "x"), false).ok();
        let wrong = json!({"preconditions": {"uid": "nope"}});
        assert_eq!(
            store
                .delete(Kind::Pod, "ns", "a", &wrong, false)
                .err()
                .map(|e| e.code),
            Some(409)
        );
        store.set_hold_pod_deletions(true);
        let held = store.delete(Kind::Pod, "ns", "a", &json!({}), false);
        assert!(
            matches!(held, Ok(Deleted::Terminating(ref p)) if meta_str(p, "deletionTimestamp").is_some())
        );
        assert!(store.get(Kind::Pod, "ns", "a").is_ok());
        let forced = store.delete(
            Kind::Pod,
            "ns",
            "a",
            &json!({"gracePeriodSeconds": 0}),
            false,
        );
        assert!(matches!(forced, Ok(Deleted::Gone(_))));
        assert_eq!(
            store.get(Kind::Pod, "ns", "a").err().map(|e| e.code),
            Some(404)
        );
    }
}
