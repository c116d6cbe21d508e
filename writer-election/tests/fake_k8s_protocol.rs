//! The fake Kubernetes API server, driven by the real kube client and kube-runtime's watcher:
//! if these pass, writer-election's Kubernetes mode talks to the fake exactly as it would talk to
//! a cluster.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use support::fake_k8s::{
    role_from_manifests, FakeApiServer, Outage, StoragePod, DEFAULT_NAMESPACE, STORAGE_LABEL_KEY,
    STORAGE_LABEL_VALUE,
};
use support::wait_until;

/// Generous: the machine is small and shared; nothing here is timed, this only stops a hang.
const PATIENCE: Duration = Duration::from_secs(30);

fn storage_selector() -> String {
    format!("{STORAGE_LABEL_KEY}={STORAGE_LABEL_VALUE}")
}

async fn start() -> FakeApiServer {
    match FakeApiServer::start().await {
        Ok(api) => api,
        Err(e) => panic!("cannot start the fake API server: {e}"),
    }
}

fn api_code(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

/// Aborts the spawned task when the test ends, also on panic.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs kube-runtime's pod watcher in a task and reports each step as a short string:
/// `init`, `init_apply:NAME`, `init_done`, `apply:NAME`, `delete:NAME`, `error:code=N` (an ERROR
/// watch event), `error:TEXT` (anything else).
fn watch_pods(
    api: Api<Pod>,
    config: watcher::Config,
) -> (mpsc::UnboundedReceiver<(String, Option<Pod>)>, AbortOnDrop) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        // With kube's default backoff, as production code uses it (no hot loop during outages).
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            let report = match item {
                Ok(watcher::Event::Init) => ("init".to_string(), None),
                Ok(watcher::Event::InitApply(p)) => {
                    (format!("init_apply:{}", p.name_any()), Some(p))
                }
                Ok(watcher::Event::InitDone) => ("init_done".to_string(), None),
                Ok(watcher::Event::Apply(p)) => (format!("apply:{}", p.name_any()), Some(p)),
                Ok(watcher::Event::Delete(p)) => (format!("delete:{}", p.name_any()), Some(p)),
                Err(watcher::Error::WatchError(status)) => {
                    (format!("error:code={}", status.code), None)
                }
                Err(e) => (format!("error:{e}"), None),
            };
            if tx.send(report).is_err() {
                return;
            }
        }
    });
    (rx, AbortOnDrop(task))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Option<Pod>)>) -> (String, Option<Pod>) {
    match tokio::time::timeout(PATIENCE, rx.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the watcher task ended"),
        Err(_) => panic!("no watcher event within {PATIENCE:?}"),
    }
}

async fn next_name(rx: &mut mpsc::UnboundedReceiver<(String, Option<Pod>)>) -> String {
    next(rx).await.0
}

/// Skips transport errors (a watcher reconnecting across an outage) up to the next real event.
async fn next_non_error(rx: &mut mpsc::UnboundedReceiver<(String, Option<Pod>)>) -> String {
    loop {
        let (name, _) = next(rx).await;
        if !name.starts_with("error:") {
            return name;
        }
    }
}

fn container_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

#[tokio::test]
async fn lists_pods_by_label_and_field_selectors() {
    let api = start().await;
    api.add_pod(
        StoragePod::new("storagenode-0")
            .port("http", 8080)
            .label("zone", "a"),
    );
    api.add_pod(
        StoragePod::new("storagenode-1")
            .port("http", 8081)
            .label("zone", "b"),
    );
    api.add_pod(
        StoragePod::new("other")
            .without_labels()
            .label("app", "web"),
    );
    api.add_pod(StoragePod::new("elsewhere").namespace("other-ns"));
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());

    let names = |list: kube::core::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    let list = pods
        .list(&ListParams::default().labels(&storage_selector()))
        .await;
    let list = list.unwrap_or_else(|e| panic!("list failed: {e}"));
    assert_eq!(
        list.metadata.resource_version,
        Some(api.resource_version().to_string())
    );
    let first = &list.items[0];
    assert_eq!(
        first.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("127.0.0.1")
    );
    assert!(first.metadata.uid.as_deref().is_some_and(|u| !u.is_empty()));
    assert!(first.metadata.creation_timestamp.is_some());
    assert_eq!(names(list), ["storagenode-0", "storagenode-1"]);

    let cases = [
        (
            ListParams::default().labels("zone in (b,c)"),
            vec!["storagenode-1"],
        ),
        (
            ListParams::default().labels("zone!=a"),
            vec!["other", "storagenode-1"],
        ),
        (ListParams::default().labels("!zone"), vec!["other"]),
        (
            ListParams::default().labels(&format!("{},zone=a", storage_selector())),
            vec!["storagenode-0"],
        ),
        (
            ListParams::default().fields("metadata.name=other"),
            vec!["other"],
        ),
        (
            ListParams::default().limit(1),
            vec!["other", "storagenode-0", "storagenode-1"],
        ),
    ];
    for (params, expected) in cases {
        let got = pods.list(&params).await.map(names);
        assert_eq!(
            got.ok(),
            Some(expected.iter().map(|s| s.to_string()).collect()),
            "{params:?}"
        );
    }
    let all: Api<Pod> = Api::all(api.kube_client());
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .ok(),
        Some(4)
    );

    let bad = pods.list(&ListParams::default().labels("zone in (a")).await;
    assert_eq!(api_code(bad), (400, "BadRequest".to_string()));

    let log = api.requests();
    let first = &log[0];
    assert_eq!(
        (
            first.method.as_str(),
            first.verb.as_str(),
            first.resource.as_str(),
            first.group.as_str()
        ),
        ("GET", "list", "pods", "")
    );
    assert_eq!(first.namespace.as_deref(), Some(DEFAULT_NAMESPACE));
    assert_eq!(first.code, 200);
    assert!(log
        .iter()
        .any(|r| r.namespace.is_none() && r.verb == "list"));
    assert_eq!(log.last().map(|r| r.code), Some(400));
}

#[tokio::test]
async fn watcher_sees_changes_in_order_and_relists_after_410() {
    let api = start().await;
    api.set_bookmark_interval(Duration::from_millis(100));
    api.add_pod(StoragePod::new("storagenode-0").port("http", 8080));
    api.add_pod(StoragePod::new("not-storage").without_labels());
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());
    let (mut rx, _task) = watch_pods(pods, watcher::Config::default().labels(&storage_selector()));

    assert_eq!(next_name(&mut rx).await, "init");
    assert_eq!(next_name(&mut rx).await, "init_apply:storagenode-0");
    assert_eq!(next_name(&mut rx).await, "init_done");
    wait_until(PATIENCE, "the watcher's watch is open", || {
        api.open_watches() == 1
    })
    .await;

    api.add_pod(StoragePod::new("storagenode-1").port("http", 8081));
    assert!(api.set_pod_running("storagenode-1", false));
    api.add_pod(StoragePod::new("not-storage-2").without_labels());
    assert!(api.delete_pod(DEFAULT_NAMESPACE, "storagenode-0"));
    let (added, pod) = next(&mut rx).await;
    assert_eq!(added, "apply:storagenode-1");
    assert!(pod.is_some_and(|p| container_running(&p)));
    let (modified, pod) = next(&mut rx).await;
    assert_eq!(modified, "apply:storagenode-1");
    assert!(
        pod.is_some_and(|p| !container_running(&p)),
        "the stopped container is visible"
    );
    assert_eq!(next_name(&mut rx).await, "delete:storagenode-0");

    // A label change that takes a pod out of the selection is a delete for this watcher.
    let relabelled = api.update_pod(DEFAULT_NAMESPACE, "storagenode-1", |pod| {
        pod.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    });
    assert!(relabelled.is_some());
    assert_eq!(next_name(&mut rx).await, "delete:storagenode-1");

    // Compaction: the open watch gets 410 Gone and the watcher relists from scratch.
    api.add_pod(StoragePod::new("storagenode-2").port("http", 8082));
    assert_eq!(next_name(&mut rx).await, "apply:storagenode-2");
    let lists_before = api.requests().iter().filter(|r| r.verb == "list").count();
    api.expire_watch_history();
    assert_eq!(next_name(&mut rx).await, "error:code=410");
    assert_eq!(next_name(&mut rx).await, "init");
    assert_eq!(next_name(&mut rx).await, "init_apply:storagenode-2");
    assert_eq!(next_name(&mut rx).await, "init_done");
    let lists_after = api.requests().iter().filter(|r| r.verb == "list").count();
    assert_eq!(lists_after, lists_before + 1, "the watcher relisted once");

    // And it keeps watching from the fresh list.
    wait_until(PATIENCE, "the watcher's watch is open again", || {
        api.open_watches() == 1
    })
    .await;
    api.add_pod(StoragePod::new("storagenode-3").port("http", 8083));
    assert_eq!(next_name(&mut rx).await, "apply:storagenode-3");
    let watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch")
        .collect();
    assert!(watches
        .iter()
        .all(|w| w.query.contains("allowWatchBookmarks=true") && w.code == 200));
}

#[tokio::test]
async fn cut_watches_resume_from_their_resource_version_without_relisting() {
    let api = start().await;
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());
    let (mut rx, _task) = watch_pods(pods, watcher::Config::default());
    assert_eq!(next_name(&mut rx).await, "init");
    assert_eq!(next_name(&mut rx).await, "init_done");
    wait_until(PATIENCE, "the watch is open", || api.open_watches() == 1).await;
    api.cut_watches();
    wait_until(PATIENCE, "the watch is cut", || {
        api.requests().iter().filter(|r| r.verb == "watch").count() >= 2
    })
    .await;
    api.add_pod(StoragePod::new("storagenode-0"));
    assert_eq!(next_name(&mut rx).await, "apply:storagenode-0");
    let lists = api.requests().iter().filter(|r| r.verb == "list").count();
    assert_eq!(
        lists, 1,
        "a clean end of a watch does not make the watcher relist"
    );
}

#[tokio::test]
async fn raw_watch_gets_bookmarks_and_a_410_error_event() {
    let api = start().await;
    api.set_bookmark_interval(Duration::from_millis(50));
    api.add_pod(StoragePod::new("storagenode-0"));
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());
    let since = api.resource_version().to_string();
    let stream = pods
        .watch(&WatchParams::default().timeout(60), &since)
        .await;
    let mut stream = stream
        .unwrap_or_else(|e| panic!("watch failed: {e}"))
        .boxed();
    api.add_pod(StoragePod::new("storagenode-1"));
    let mut saw = Vec::new();
    while saw.len() < 2 {
        match tokio::time::timeout(PATIENCE, stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(p)))) => saw.push(format!("added:{}", p.name_any())),
            Ok(Ok(Some(WatchEvent::Bookmark(b)))) => {
                if !saw.is_empty() {
                    assert_eq!(
                        b.metadata.resource_version,
                        api.resource_version().to_string()
                    );
                    saw.push("bookmark".into());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(saw, ["added:storagenode-1", "bookmark"]);

    api.expire_watch_history();
    let stale = pods.watch(&WatchParams::default(), &since).await;
    let mut stale = stale
        .unwrap_or_else(|e| panic!("watch failed: {e}"))
        .boxed();
    match tokio::time::timeout(PATIENCE, stale.try_next()).await {
        Ok(Ok(Some(WatchEvent::Error(status)))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected an ERROR 410 event, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let api = start().await;
    api.add_pod(StoragePod::new("storagenode-0"));
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());
    let (mut rx, _task) = watch_pods(pods, watcher::Config::default().streaming_lists());
    assert_eq!(next_name(&mut rx).await, "init");
    assert_eq!(next_name(&mut rx).await, "init_apply:storagenode-0");
    assert_eq!(next_name(&mut rx).await, "init_done");
    api.add_pod(StoragePod::new("storagenode-1"));
    assert_eq!(next_name(&mut rx).await, "apply:storagenode-1");
    assert!(
        api.requests().iter().all(|r| r.verb == "watch"),
        "no list call"
    );
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(
                [(
                    "microstream.one/writer-address".to_string(),
                    "127.0.0.1:1".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

#[tokio::test]
async fn lease_create_get_replace_with_optimistic_concurrency() {
    let api = start().await;
    let leases: Api<Lease> = Api::default_namespaced(api.kube_client());

    let missing = leases.get("writer").await;
    assert_eq!(api_code(missing), (404, "NotFound".to_string()));
    assert_eq!(leases.get_opt("writer").await.ok(), Some(None));

    let created = leases
        .create(&PostParams::default(), &lease("writer", "storagenode-0"))
        .await;
    let created = created.unwrap_or_else(|e| panic!("create failed: {e}"));
    let first_rv = created.resource_version().unwrap_or_default();
    assert!(created.uid().is_some());
    let again = leases
        .create(&PostParams::default(), &lease("writer", "x"))
        .await;
    assert_eq!(api_code(again), (409, "AlreadyExists".to_string()));

    let mut next_state = created.clone();
    if let Some(spec) = next_state.spec.as_mut() {
        spec.holder_identity = Some("storagenode-1".into());
        spec.lease_transitions = Some(2);
    }
    let replaced = leases
        .replace("writer", &PostParams::default(), &next_state)
        .await;
    let replaced = replaced.unwrap_or_else(|e| panic!("replace failed: {e}"));
    assert_ne!(replaced.resource_version().unwrap_or_default(), first_rv);
    assert_eq!(replaced.uid(), created.uid());
    assert_eq!(holder(&replaced).as_deref(), Some("storagenode-1"));

    // The same write again carries the now stale resourceVersion.
    let stale = leases
        .replace("writer", &PostParams::default(), &next_state)
        .await;
    assert_eq!(api_code(stale), (409, "Conflict".to_string()));

    // A competing writer changes the lease behind our back: our next replace must fail.
    let mut theirs = replaced.clone();
    if let Some(spec) = theirs.spec.as_mut() {
        spec.holder_identity = Some("someone-else".into());
    }
    let competing = api.put_lease(theirs);
    assert_ne!(competing.resource_version(), replaced.resource_version());
    let mut ours = replaced.clone();
    if let Some(spec) = ours.spec.as_mut() {
        spec.lease_transitions = Some(3);
    }
    let lost = leases
        .replace("writer", &PostParams::default(), &ours)
        .await;
    assert_eq!(api_code(lost), (409, "Conflict".to_string()));
    let current = leases
        .get("writer")
        .await
        .unwrap_or_else(|e| panic!("get failed: {e}"));
    assert_eq!(holder(&current).as_deref(), Some("someone-else"));
    assert_eq!(
        api.get_lease(DEFAULT_NAMESPACE, "writer")
            .as_ref()
            .and_then(holder)
            .as_deref(),
        Some("someone-else")
    );

    // A merge patch that names a resourceVersion is conditional too.
    let stale_patch =
        json!({"metadata": {"resourceVersion": first_rv}, "spec": {"holderIdentity": "p"}});
    let patched = leases
        .patch(
            "writer",
            &PatchParams::default(),
            &Patch::Merge(&stale_patch),
        )
        .await;
    assert_eq!(api_code(patched), (409, "Conflict".to_string()));
    let patch = json!({"spec": {"holderIdentity": "patched"}});
    let patched = leases
        .patch("writer", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert_eq!(
        patched.ok().as_ref().and_then(holder).as_deref(),
        Some("patched")
    );

    // Replace of a lease that does not exist is 404, not an implicit create.
    let absent = leases
        .replace("nope", &PostParams::default(), &lease("nope", "a"))
        .await;
    assert_eq!(api_code(absent), (404, "NotFound".to_string()));
    let verbs: Vec<_> = api.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(verbs[..5], ["get", "get", "create", "create", "update"]);
}

#[tokio::test]
async fn pod_patch_and_delete_through_the_client() {
    let api = start().await;
    let stored = api.add_pod(StoragePod::new("storagenode-0").port("http", 8080));
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());

    let label = json!({"metadata": {"labels": {"microstream.one/role": "writer"}}});
    let patched = pods
        .patch(
            "storagenode-0",
            &PatchParams::default(),
            &Patch::Strategic(&label),
        )
        .await;
    let patched = patched.unwrap_or_else(|e| panic!("patch failed: {e}"));
    assert_eq!(
        patched
            .labels()
            .get("microstream.one/role")
            .map(String::as_str),
        Some("writer")
    );
    assert_eq!(
        patched.labels().get(STORAGE_LABEL_KEY).map(String::as_str),
        Some(STORAGE_LABEL_VALUE)
    );
    let unchanged = pods
        .patch(
            "storagenode-0",
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await;
    assert_eq!(
        unchanged.ok().and_then(|p| p.resource_version()),
        patched.resource_version(),
        "a no-op patch writes nothing"
    );
    // kube builds JSON patches only with its jsonpatch feature; send one as any client would.
    let raw = reqwest_free_http::Client::new(api.addr());
    let ops = r#"[{"op": "remove", "path": "/metadata/labels/microstream.one~1role"}]"#;
    let path = "/api/v1/namespaces/default/pods/storagenode-0";
    let (code, removed) = raw
        .send("PATCH", path, "application/json-patch+json", ops)
        .await;
    assert_eq!(code, 200, "{removed}");
    assert!(removed
        .pointer("/metadata/labels/microstream.one~1role")
        .is_none());
    let (code, failed) = raw
        .send("PATCH", path, "application/json-patch+json", ops)
        .await;
    assert_eq!(
        (code, &failed["reason"]),
        (422, &json!("Invalid")),
        "{failed}"
    );

    // Fencing: a delete bound to the uid of a pod that was since recreated must not delete it.
    let wrong_uid = DeleteParams::default().preconditions(kube::api::Preconditions {
        uid: Some("not-the-uid".into()),
        resource_version: None,
    });
    let fenced = pods.delete("storagenode-0", &wrong_uid).await;
    assert_eq!(api_code(fenced.map(|_| ())), (409, "Conflict".to_string()));

    api.hold_pod_deletions(true);
    let right_uid = DeleteParams::default().preconditions(kube::api::Preconditions {
        uid: stored.metadata.uid.clone(),
        resource_version: None,
    });
    let terminating = pods.delete("storagenode-0", &right_uid).await;
    let terminating = terminating.ok().and_then(|e| e.left());
    assert!(terminating.is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
    assert!(
        api.pod(DEFAULT_NAMESPACE, "storagenode-0").is_some(),
        "held: still terminating"
    );
    let forced = pods
        .delete("storagenode-0", &DeleteParams::default().grace_period(0))
        .await;
    assert!(forced.is_ok());
    assert!(api.pod(DEFAULT_NAMESPACE, "storagenode-0").is_none());
    let gone = pods.delete("storagenode-0", &DeleteParams::default()).await;
    assert_eq!(api_code(gone.map(|_| ())), (404, "NotFound".to_string()));
}

#[tokio::test]
async fn events_from_both_apis_are_stored() {
    let api = start().await;
    let client = api.kube_client();
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let event = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some("writer-election-".into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            name: Some("storagenode-1".into()),
            namespace: Some(DEFAULT_NAMESPACE.into()),
            ..ObjectReference::default()
        },
        reason: Some("WriterElected".into()),
        message: Some("elected storagenode-1 as writer, epoch 7, reason: writer-unready".into()),
        type_: Some("Normal".into()),
        ..CoreEvent::default()
    };
    let posted = core.create(&PostParams::default(), &event).await;
    let posted = posted.unwrap_or_else(|e| panic!("event create failed: {e}"));
    assert!(posted.name_any().starts_with("writer-election-"));

    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "writer-election".into(),
            instance: Some("writer-election-0".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("storagenode-2".into()),
        namespace: Some(DEFAULT_NAMESPACE.into()),
        ..ObjectReference::default()
    };
    let recorded = RecorderEvent {
        type_: EventType::Normal,
        reason: "WriterElected".into(),
        note: Some("elected storagenode-2 as writer, epoch 8, reason: switchover".into()),
        action: "Elect".into(),
        secondary: None,
    };
    let published = recorder.publish(&recorded, &reference).await;
    assert!(published.is_ok(), "{published:?}");
    // The same event again is a series: kube patches the stored one.
    let published = recorder.publish(&recorded, &reference).await;
    assert!(published.is_ok(), "{published:?}");

    let events = api.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].api_version, "v1");
    assert_eq!(events[0].message.as_deref(), event.message.as_deref());
    assert_eq!(
        events[0].regarding,
        Some(("Pod".into(), "storagenode-1".into()))
    );
    assert_eq!(events[1].api_version, "events.k8s.io/v1");
    assert_eq!(events[1].reason.as_deref(), Some("WriterElected"));
    assert_eq!(events[1].message.as_deref(), recorded.note.as_deref());
    assert_eq!(
        events[1].regarding,
        Some(("Pod".into(), "storagenode-2".into()))
    );
    assert_eq!(events[1].object.pointer("/series/count"), Some(&json!(2)));
    let groups: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| (r.group, r.verb))
        .collect();
    assert_eq!(
        groups,
        [
            ("".into(), "create".into()),
            ("events.k8s.io".into(), "create".into()),
            ("events.k8s.io".into(), "patch".into())
        ]
    );
}

#[tokio::test]
async fn outage_fails_calls_fast_and_recovery_resumes_watches() {
    let api = start().await;
    api.add_pod(StoragePod::new("storagenode-0"));
    let pods: Api<Pod> = Api::default_namespaced(api.kube_client());
    let (mut rx, _task) = watch_pods(pods.clone(), watcher::Config::default());
    assert_eq!(next_name(&mut rx).await, "init");
    assert_eq!(next_name(&mut rx).await, "init_apply:storagenode-0");
    assert_eq!(next_name(&mut rx).await, "init_done");
    wait_until(PATIENCE, "the watch is open", || api.open_watches() == 1).await;

    api.set_unavailable(true);
    wait_until(PATIENCE, "the open watch is cut", || {
        api.open_watches() == 0
    })
    .await;
    let during = tokio::time::timeout(PATIENCE, pods.list(&ListParams::default())).await;
    match during {
        Ok(Err(kube::Error::Api(status))) => {
            panic!("a lost API is a transport error, got Status {status:?}")
        }
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("list succeeded during the outage"),
        Err(_) => panic!("list hung during the outage instead of failing"),
    }
    // Changes made while the client is cut off arrive after recovery.
    api.add_pod(StoragePod::new("storagenode-1"));
    api.set_unavailable(false);
    assert_eq!(next_non_error(&mut rx).await, "apply:storagenode-1");
    let after = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len());
    assert_eq!(after.ok(), Some(2));
}

#[tokio::test]
async fn service_unavailable_and_hang_outages() {
    let api = start().await;
    let mut config = api.kube_config();
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(1));
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(e) => panic!("client: {e}"),
    };
    let leases: Api<Lease> = Api::default_namespaced(client);

    api.set_outage(Outage::ServiceUnavailable);
    assert_eq!(
        api_code(leases.get("writer").await),
        (503, "ServiceUnavailable".to_string())
    );

    api.set_outage(Outage::Hang);
    let hung = tokio::time::timeout(PATIENCE, leases.get("writer")).await;
    match hung {
        Ok(Err(kube::Error::Api(status))) => panic!("a hung API answers nothing, got {status:?}"),
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("a hung API answered"),
        Err(_) => panic!("the client's read timeout did not fire"),
    }

    api.set_outage(Outage::None);
    assert_eq!(
        api_code(leases.get("writer").await),
        (404, "NotFound".to_string())
    );
}

#[tokio::test]
async fn rbac_role_from_the_manifests_is_enforced() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/writer-election/rbac.yaml"
    );
    let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let role = role_from_manifests(&yaml).unwrap_or_else(|e| panic!("{path}: {e}"));
    let api = start().await.with_role(role);
    api.add_pod(StoragePod::new("storagenode-0"));
    let client = api.kube_client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let leases: Api<Lease> = Api::default_namespaced(client.clone());

    assert!(pods.list(&ListParams::default()).await.is_ok());
    assert!(pods.get("storagenode-0").await.is_ok());
    assert_eq!(
        api_code(leases.get("writer").await),
        (404, "NotFound".to_string())
    );
    assert!(leases
        .create(&PostParams::default(), &lease("writer", "a"))
        .await
        .is_ok());

    let denied = leases.delete("writer", &DeleteParams::default()).await;
    assert_eq!(api_code(denied.map(|_| ())), (403, "Forbidden".to_string()));
    let denied = leases.list(&ListParams::default()).await;
    assert_eq!(api_code(denied), (403, "Forbidden".to_string()));
    let denied = pods
        .create(&PostParams::default(), &StoragePod::new("x").build())
        .await;
    assert_eq!(api_code(denied), (403, "Forbidden".to_string()));
    let all: Api<Pod> = Api::all(client);
    let denied = all.list(&ListParams::default()).await;
    assert_eq!(api_code(denied), (403, "Forbidden".to_string()));
    let forbidden: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.code == 403)
        .map(|r| (r.verb, r.resource))
        .collect();
    assert_eq!(
        forbidden,
        [
            ("delete".to_string(), "leases".to_string()),
            ("list".into(), "leases".into()),
            ("create".into(), "pods".into()),
            ("list".into(), "pods".into())
        ]
    );

    api.allow_everything();
    assert!(leases
        .delete("writer", &DeleteParams::default())
        .await
        .is_ok());
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let api = start().await;
    let client = reqwest_free_http::Client::new(api.addr());
    let cases = [
        ("GET", "/api/v1/namespaces/default/secrets", "", "", 404),
        ("GET", "/nonsense", "", "", 404),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{not json",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{\"kind\":\"Lease\",\"metadata\":{\"name\":\"x\"}}",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{\"metadata\":{}}",
            422,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "text/plain",
            "{}",
            415,
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{}",
            405,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=abc",
            "",
            "",
            422,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/p/status",
            "",
            "",
            404,
        ),
    ];
    for (method, path, content_type, body, code) in cases {
        let (status, json) = client.send(method, path, content_type, body).await;
        assert_eq!(status, code, "{method} {path}: {json}");
        assert_eq!(json["kind"], "Status", "{method} {path}");
        assert_eq!(json["code"], code, "{method} {path}");
        assert_eq!(json["status"], "Failure", "{method} {path}");
    }
}

/// Just enough of an HTTP client to send requests kube would never build.
mod reqwest_free_http {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub struct Client {
        addr: SocketAddr,
    }

    impl Client {
        pub fn new(addr: SocketAddr) -> Self {
            Self { addr }
        }

        pub async fn send(
            &self,
            method: &str,
            path: &str,
            content_type: &str,
            body: &str,
        ) -> (u16, serde_json::Value) {
            let mut headers = Vec::new();
            if !content_type.is_empty() {
                headers.push(("content-type", content_type));
            }
            let url = format!("http://{}{path}", self.addr);
            let (status, text) =
                test_kit::http::call(method, &url, &headers, body, Duration::from_secs(60)).await;
            assert_ne!(status, 0, "{method} {path}: {text}");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
            (status, json)
        }
    }
}

#[tokio::test]
async fn kubeconfig_for_a_child_process_reaches_the_server() {
    let api = start().await;
    api.add_pod(StoragePod::new("storagenode-0").namespace("storage"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path, "storage")
        .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("kube cannot read the kubeconfig: {e}"));
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await;
    let config = config.unwrap_or_else(|e| panic!("kube rejects the kubeconfig: {e}"));
    assert_eq!(config.default_namespace, "storage");
    let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"));
    let pods: Api<Pod> = Api::default_namespaced(client);
    let names = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>());
    assert_eq!(names.ok(), Some(vec!["storagenode-0".to_string()]));
}

/// The fake runs on its own thread: a test that blocks its runtime's only thread (here with a
/// synchronous HTTP exchange on a current-thread runtime) still gets answers.
#[tokio::test(flavor = "current_thread")]
async fn serves_while_the_test_runtime_is_blocked() {
    use std::io::{Read, Write};
    let api = start().await;
    api.add_pod(StoragePod::new("storagenode-0"));
    let mut stream =
        std::net::TcpStream::connect(api.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(PATIENCE))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    let request = "GET /api/v1/namespaces/default/pods/storagenode-0 HTTP/1.1\r\n\
                   Host: 127.0.0.1\r\nConnection: close\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"name\":\"storagenode-0\""),
        "{response}"
    );
}

#[tokio::test]
async fn dropping_the_server_closes_it() {
    let api = start().await;
    let client = api.kube_client();
    let addr = api.addr();
    drop(api);
    let pods: Api<Pod> = Api::default_namespaced(client);
    wait_until(PATIENCE, "the port stops accepting", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(pods.list(&ListParams::default()).await.is_err());
}

#[tokio::test]
async fn injected_failures_and_a_slow_api() {
    let api = start().await;
    let leases: Api<Lease> = Api::default_namespaced(api.kube_client());
    let created = leases
        .create(&PostParams::default(), &lease("writer", "a"))
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    api.fail_requests("update", "leases", 500, 1);
    api.fail_requests("get", "leases", 409, 2);
    let failed = leases
        .replace("writer", &PostParams::default(), &created)
        .await;
    assert_eq!(api_code(failed), (500, "InternalError".to_string()));
    let replaced = leases
        .replace("writer", &PostParams::default(), &created)
        .await;
    assert!(replaced.is_ok(), "one failure only: {replaced:?}");
    for _ in 0..2 {
        assert_eq!(
            api_code(leases.get("writer").await),
            (409, "Conflict".to_string())
        );
    }
    assert!(leases.get("writer").await.is_ok());

    api.set_response_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(leases.get("writer").await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the answer was delayed"
    );
    api.set_response_delay(Duration::ZERO);
    let codes: Vec<_> = api.requests().into_iter().map(|r| r.code).collect();
    assert_eq!(codes, [201, 500, 200, 409, 409, 200, 200]);
}
