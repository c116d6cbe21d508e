//! Kubernetes mode against the fake API server (real wire protocol, real kube client), with the
//! storage pods' IP:port pointing at real HTTP nodes on 127.0.0.1. Every test enforces the Role
//! of k8s/writer-election/rbac.yaml, so a call the Role does not grant fails the test.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use support::cluster::*;
use support::fake_k8s::{shipped_role, FakeApiServer, Outage, StoragePod, DEFAULT_NAMESPACE};
use writer_election::client::fetch_topology;
use writer_election::config::ElectionConfig;
use writer_election::permissions;
use writer_election::topology::{History, HistoryEntry, Role as NodeRole, Topology};
use writer_election::{start, ServiceHandle, ServiceOptions};

const LONG: Duration = Duration::from_secs(60);
const NS: &str = DEFAULT_NAMESPACE;
const WRITER_LEASE: &str = "storage-writer";
const LEADER_LEASE: &str = "writer-election-leader";
const HOLDER: &str = "writer-election.microstream.one/holder";
const UID: &str = "writer-election.microstream.one/writer-uid";
const ADDRESS: &str = "writer-election.microstream.one/writer-address";
const ROLE_LABEL: &str = "microstream.one/role";

fn k8s_config(extra: &str) -> ElectionConfig {
    let yaml = format!(
        r#"listen: "127.0.0.1:0"
discovery:
  kubernetes: {{ namespace: "{NS}", port: http }}
probe: {{ path: /health/ready, interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}
state: {{ lease: {{ name: {WRITER_LEASE} }} }}
promotion:
  preset: none
  start:  {{ method: POST, path: {START} }}
  finish: {{ method: POST, path: {FINISH}, until_body: "true", interval: 50ms, timeout: 10s }}
label_pods: {{ enabled: true, key: {ROLE_LABEL} }}
{extra}"#
    );
    ElectionConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"))
}

async fn run(api: &FakeApiServer, extra: &str, identity: &str) -> ServiceHandle {
    start(
        k8s_config(extra),
        ServiceOptions {
            kube_client: Some(api.kube_client()),
            identity: Some(identity.to_string()),
            listener: None,
        },
    )
    .await
    .expect("start writer-election")
}

async fn topology(url: &str) -> Option<Topology> {
    fetch_topology(url, None, None).await.ok()
}

async fn wait_topology(url: &str, what: &str, cond: impl Fn(&Topology) -> bool) -> Topology {
    test_kit::election::wait_for_topology(url, what, LONG, cond).await
}

async fn history_of(url: &str) -> Vec<HistoryEntry> {
    let (status, body) = http_call("GET", &format!("{url}/v1/history"), &[], "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<History>(&body)
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .changes
}

async fn wait_history(url: &str, want: &[HistoryEntry]) {
    let deadline = Instant::now() + LONG;
    loop {
        let got = history_of(url).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "history of {url}: {got:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    support::wait_until(LONG, what, &mut cond).await
}

fn lease(api: &FakeApiServer, name: &str) -> Option<Lease> {
    api.get_lease(NS, name)
}

fn annotation(l: &Lease, key: &str) -> Option<String> {
    l.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

fn pod_uid(api: &FakeApiServer, name: &str) -> Option<String> {
    api.pod(NS, name).and_then(|p| p.metadata.uid)
}

fn role_label(api: &FakeApiServer, name: &str) -> Option<String> {
    api.pod(NS, name)
        .and_then(|p| p.metadata.labels)
        .and_then(|l| l.get(ROLE_LABEL).cloned())
}

/// Every request the fake saw was granted by the Role (none got 403).
fn assert_rbac_clean(api: &FakeApiServer) {
    let granted = permissions::granted_by(&shipped_role()).expect("rbac.yaml's Role");
    let requests = api.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_ne!(r.code, 403, "denied by the Role: {r:?}");
        // Refused by a simulated outage before the fake looked at it (a request on a connection
        // that was open when the outage began): nothing to say about the Role.
        if r.code == 503 && r.verb.is_empty() {
            continue;
        }
        let ok = granted
            .iter()
            .any(|p| p.group == r.group && p.resource == r.resource && p.verb == r.verb);
        assert!(ok, "request not granted by rbac.yaml: {r:?}");
    }
}

/// epoch -> every (holder name, pod uid) seen recorded for it.
type Holders = BTreeMap<u64, Vec<(String, String)>>;

/// Records (epoch -> holder name + uid) of every version of the writer Lease it sees.
struct LeaseHistory {
    seen: Arc<Mutex<Holders>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHistory {
    fn start(api: Arc<FakeApiServer>) -> Self {
        let seen: Arc<Mutex<Holders>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(l) = api.get_lease(NS, WRITER_LEASE) {
                    let epoch = l
                        .spec
                        .as_ref()
                        .and_then(|s| s.lease_transitions)
                        .unwrap_or(0) as u64;
                    if let Some(holder) = annotation(&l, HOLDER) {
                        let uid = annotation(&l, UID).unwrap_or_default();
                        let mut m = s.lock().unwrap();
                        let v = m.entry(epoch).or_default();
                        if !v.contains(&(holder.clone(), uid.clone())) {
                            v.push((holder, uid));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        LeaseHistory { seen, task }
    }

    fn epochs_seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn assert_one_holder_per_epoch(&self) -> BTreeMap<u64, (String, String)> {
        let m = self.seen.lock().unwrap().clone();
        let mut out = BTreeMap::new();
        for (epoch, holders) in m {
            assert_eq!(
                holders.len(),
                1,
                "epoch {epoch} was recorded with several holders: {holders:?}"
            );
            out.insert(epoch, holders[0].clone());
        }
        out
    }
}

impl Drop for LeaseHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_fails_over_records_the_lease_labels_pods_and_emits_an_event() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let history = LeaseHistory::start(api.clone());
    let svc = run(&api, "", "we-0").await;

    let t = wait_topology(&svc.url(), "storagenode-0 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-0") && all_ready(t, 3)
    })
    .await;
    assert_eq!(t.epoch, 1);
    assert!(nodes[0].promoted());
    let l = lease(&api, WRITER_LEASE).expect("writer Lease");
    let spec = l.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("storagenode-0"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(annotation(&l, UID), pod_uid(&api, "storagenode-0"));
    assert_eq!(annotation(&l, ADDRESS), Some(nodes[0].address()));

    wait("pods are labelled with their role", || {
        role_label(&api, "storagenode-0").as_deref() == Some("writer")
            && role_label(&api, "storagenode-1").as_deref() == Some("reader")
            && role_label(&api, "storagenode-2").as_deref() == Some("reader")
    })
    .await;

    // The writer pod is deleted while its process still answers probes: the watch event alone
    // drives the failover.
    assert!(api.delete_pod(NS, "storagenode-0"));
    let t = wait_topology(&svc.url(), "storagenode-1 writer", |t| {
        writer_name(t) == Some("storagenode-1")
    })
    .await;
    assert_eq!(t.epoch, 2);
    assert!(t.nodes.iter().all(|n| n.name != "storagenode-0"));
    assert!(nodes[1].promoted());
    let l = lease(&api, WRITER_LEASE).expect("writer Lease");
    assert_eq!(
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .as_deref(),
        Some("storagenode-1")
    );
    assert_eq!(l.spec.as_ref().and_then(|s| s.lease_transitions), Some(2));

    wait("an Event for the failover", || {
        api.events().iter().any(|e| {
            e.message.as_deref()
                == Some("elected storagenode-1 as writer, epoch 2, reason: writer-gone")
                && e.regarding == Some(("Pod".into(), "storagenode-1".into()))
                && e.reason.as_deref() == Some("WriterElected")
        })
    })
    .await;
    wait("storagenode-1 labelled writer", || {
        role_label(&api, "storagenode-1").as_deref() == Some("writer")
    })
    .await;

    let (_, text) = http_call("GET", &format!("{}/metrics", svc.url()), &[], "").await;
    let m = parse_metrics(&text);
    assert_eq!(
        m.get("writer_election_failovers_total{reason=\"writer-gone\"}"),
        Some(&1.0)
    );
    assert_eq!(m.get("writer_election_kubernetes_api_up"), Some(&1.0));

    let epochs = history.assert_one_holder_per_epoch();
    assert_eq!(epochs.get(&1).map(|h| h.0.as_str()), Some("storagenode-0"));
    assert_eq!(epochs.get(&2).map(|h| h.0.as_str()), Some("storagenode-1"));
    svc.stop().await;
    assert_rbac_clean(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_lease_and_a_recreated_writer_pod_is_a_reader() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let extra = "election: { candidate_order: oldest }\n";
    let svc = run(&api, extra, "we-0").await;
    wait_topology(&svc.url(), "storagenode-0 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-0") && all_ready(t, 3)
    })
    .await;
    svc.stop().await;

    // A plain restart: same writer, same epoch, no second promotion.
    let promotions = nodes[0].start_calls();
    let svc = run(&api, extra, "we-0").await;
    let t = wait_topology(&svc.url(), "all ready after restart", |t| all_ready(t, 3)).await;
    assert_eq!(writer_name(&t), Some("storagenode-0"));
    assert_eq!(t.epoch, 1);
    assert_eq!(nodes[0].start_calls(), promotions);
    svc.stop().await;

    // While the service is down, the writer pod is recreated under the same name (new UID, new
    // creation time). The Lease holds the old UID: the new pod is a new node, a reader.
    let old_uid = pod_uid(&api, "storagenode-0");
    assert!(api.delete_pod(NS, "storagenode-0"));
    api.add_pod(StoragePod::new("storagenode-0").port("http", nodes[0].addr.port()));
    assert_ne!(pod_uid(&api, "storagenode-0"), old_uid);
    let svc = run(&api, extra, "we-0").await;
    let t = wait_topology(&svc.url(), "storagenode-1 writer", |t| {
        writer_name(t) == Some("storagenode-1")
    })
    .await;
    assert_eq!(t.epoch, 2);
    let t = wait_topology(&svc.url(), "all ready", |t| all_ready(t, 3)).await;
    let n0 = t
        .nodes
        .iter()
        .find(|n| n.name == "storagenode-0")
        .expect("storagenode-0 listed");
    assert_eq!(n0.role, NodeRole::Reader);
    assert_eq!(writer_name(&t), Some("storagenode-1"));
    wait("an Event naming the reason", || {
        api.events().iter().any(|e| {
            e.message.as_deref()
                == Some("elected storagenode-1 as writer, epoch 2, reason: writer-recreated")
        })
    })
    .await;
    svc.stop().await;
    assert_rbac_clean(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_pod_is_no_candidate_while_it_exists_and_its_recreation_is() {
    // The pods serve the MicroStream node library's calls; storagenode-0 answers 400 to the
    // distributor calls, like a backup node.
    let nodes = api_nodes(3, Api::Microstream).await;
    nodes[0].set_backup(true);
    let api = storage_api(&nodes).await;
    let yaml = format!(
        r#"listen: "127.0.0.1:0"
discovery:
  kubernetes: {{ namespace: "{NS}", port: http }}
probe: {{ interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}
state: {{ lease: {{ name: {WRITER_LEASE} }} }}
promotion: {{ preset: microstream }}
"#
    );
    let cfg = ElectionConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("config: {e}"));
    let svc = start(
        cfg,
        ServiceOptions {
            kube_client: Some(api.kube_client()),
            identity: Some("we-0".into()),
            listener: None,
        },
    )
    .await
    .expect("start writer-election");
    let t = wait_topology(&svc.url(), "storagenode-1 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-1") && all_ready(t, 3)
    })
    .await;
    assert_eq!(t.epoch, 1, "the refused attempt recorded nothing");
    assert_eq!(nodes[0].start_attempts(), 1);
    assert!(!nodes[0].promoted());
    wait("the PromotionRefused event", || {
        api.events().iter().any(|e| {
            e.reason.as_deref() == Some("PromotionRefused")
                && e.regarding == Some(("Pod".into(), "storagenode-0".into()))
        })
    })
    .await;

    // The pod is replaced by a storage node under the same name (new UID): a new node, a
    // candidate again. The writer's pod goes away: the new storagenode-0 ranks first.
    let old_uid = pod_uid(&api, "storagenode-0");
    nodes[0].set_backup(false);
    assert!(api.delete_pod(NS, "storagenode-0"));
    api.add_pod(StoragePod::new("storagenode-0").port("http", nodes[0].addr.port()));
    assert_ne!(pod_uid(&api, "storagenode-0"), old_uid);
    wait_topology(&svc.url(), "the new storagenode-0 ready", |t| {
        t.nodes.iter().any(|n| n.name == "storagenode-0" && n.ready)
    })
    .await;
    assert!(api.delete_pod(NS, "storagenode-1"));
    let t = wait_topology(&svc.url(), "storagenode-0 writer", |t| {
        writer_name(t) == Some("storagenode-0")
    })
    .await;
    assert_eq!(t.epoch, 2);
    assert!(nodes[0].promoted());
    assert_eq!(nodes[2].start_attempts(), 0);
    let (_, text) = http_call("GET", &format!("{}/metrics", svc.url()), &[], "").await;
    assert_eq!(
        parse_metrics(&text)
            .get("writer_election_candidates_excluded_total{reason=\"promotion_refused\"}"),
        Some(&1.0)
    );
    assert_rbac_clean(&api);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_api_never_fails_over() {
    let mut nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let svc = run(&api, "", "we-0").await;
    wait_topology(&svc.url(), "storagenode-0 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-0") && all_ready(t, 3)
    })
    .await;
    let metrics_url = format!("{}/metrics", svc.url());

    api.set_outage(Outage::Down);
    let metric = |series: &'static str| {
        let url = metrics_url.clone();
        async move {
            let (_, text) = http_call("GET", &url, &[], "").await;
            test_kit::metrics::value(&text, series)
        }
    };
    test_kit::wait::until("api_up goes to 0", LONG, || async {
        metric("writer_election_kubernetes_api_up").await == Some(0.0)
    })
    .await;

    // The writer dies during the outage: probes see it, but no failover happens.
    nodes[0].stop().await;
    let t = wait_topology(&svc.url(), "storagenode-0 seen unready", |t| {
        t.nodes
            .iter()
            .any(|n| n.name == "storagenode-0" && !n.ready)
    })
    .await;
    assert_eq!(writer_name(&t), Some("storagenode-0"));
    test_kit::wait::until("the blocked failover is counted", LONG, || async {
        metric(r#"writer_election_failovers_blocked_total{reason="api_unreachable"}"#)
            .await
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    let t = topology(&svc.url()).await.expect("topology");
    assert_eq!(
        writer_name(&t),
        Some("storagenode-0"),
        "kept the recorded writer"
    );
    assert_eq!(t.epoch, 1);
    assert!(
        !nodes[1].promoted(),
        "nobody was promoted during the outage"
    );

    // The API is back: now the failover happens.
    api.set_outage(Outage::None);
    let t = wait_topology(&svc.url(), "storagenode-1 writer after the outage", |t| {
        writer_name(t) == Some("storagenode-1")
    })
    .await;
    assert_eq!(t.epoch, 2);
    nodes[0].restart().await;
    svc.stop().await;
    assert_rbac_clean(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_deletes_the_old_writer_pod_before_promoting() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let svc = run(
        &api,
        "fencing: { delete_old_writer_pod: true, timeout: 60s }\n",
        "we-0",
    )
    .await;
    wait_topology(&svc.url(), "storagenode-0 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-0") && all_ready(t, 3)
    })
    .await;
    // The kubelet takes its time: the deleted pod stays terminating until the test finishes it.
    api.hold_pod_deletions(true);
    nodes[0].set_hang(true);

    wait(
        "the old writer pod was deleted and is being watched",
        || {
            let reqs = api.requests();
            let Some(i) = reqs.iter().position(|r| {
                r.verb == "delete"
                    && r.resource == "pods"
                    && r.name.as_deref() == Some("storagenode-0")
            }) else {
                return false;
            };
            reqs[i..]
                .iter()
                .filter(|r| {
                    r.verb == "get"
                        && r.resource == "pods"
                        && r.name.as_deref() == Some("storagenode-0")
                })
                .count()
                >= 2
        },
    )
    .await;
    assert!(
        api.pod(NS, "storagenode-0")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the pod is terminating"
    );
    assert!(
        !nodes[1].promoted(),
        "no promotion before the old writer is gone"
    );
    let t = topology(&svc.url()).await.expect("topology");
    assert_eq!(writer_name(&t), Some("storagenode-0"));
    assert_eq!(t.epoch, 1);

    // The pod is gone: now storagenode-1 is promoted and published.
    assert!(api.delete_pod(NS, "storagenode-0"));
    let t = wait_topology(&svc.url(), "storagenode-1 writer", |t| {
        writer_name(t) == Some("storagenode-1")
    })
    .await;
    assert_eq!(t.epoch, 2);
    assert!(nodes[1].promoted());
    svc.stop().await;
    assert_rbac_clean(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_record_by_someone_else_is_followed() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let svc = run(&api, "", "we-0").await;
    wait_topology(&svc.url(), "storagenode-0 writer, all ready", |t| {
        writer_name(t) == Some("storagenode-0") && all_ready(t, 3)
    })
    .await;
    // A competing writer (an operator, another decider) records storagenode-2 at epoch 5.
    let mut l = lease(&api, WRITER_LEASE).expect("lease");
    let ann = l.metadata.annotations.get_or_insert_with(Default::default);
    ann.insert(HOLDER.into(), "storagenode-2".into());
    ann.insert(ADDRESS.into(), nodes[2].address());
    ann.insert(
        UID.into(),
        pod_uid(&api, "storagenode-2").unwrap_or_default(),
    );
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some("storagenode-2".into());
    spec.lease_transitions = Some(5);
    api.put_lease(l);
    let t = wait_topology(&svc.url(), "storagenode-2 followed", |t| {
        writer_name(t) == Some("storagenode-2")
    })
    .await;
    assert_eq!(t.epoch, 5);
    // The next change continues from the epoch in the record.
    assert!(api.delete_pod(NS, "storagenode-2"));
    let t = wait_topology(&svc.url(), "storagenode-0 writer", |t| {
        writer_name(t) == Some("storagenode-0")
    })
    .await;
    assert_eq!(t.epoch, 6);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_deciders_never_record_two_holders_for_one_epoch() {
    // Two replicas without leader election, deliberately disagreeing on the candidates: every
    // record write carries a resourceVersion, so whoever loses a race re-reads instead of
    // overwriting. (HA leader election is what keeps two replicas from deciding at all.)
    let mut nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let history = LeaseHistory::start(api.clone());
    let a = run(&api, "election: { exclude: [storagenode-0] }\n", "we-a").await;
    let b = run(&api, "election: { exclude: [storagenode-1] }\n", "we-b").await;
    let first = wait_topology(&a.url(), "a writer", |t| t.writer.is_some() && t.epoch == 1).await;
    let w1 = writer_name(&first).expect("writer").to_string();
    wait_topology(&b.url(), "b agrees", |t| {
        writer_name(t) == Some(w1.as_str()) && t.epoch == 1
    })
    .await;

    let idx: usize = w1
        .trim_start_matches("storagenode-")
        .parse()
        .expect("ordinal");
    nodes[idx].stop().await;
    let second = wait_topology(&a.url(), "a sees epoch 2", |t| {
        t.epoch == 2 && t.writer.is_some()
    })
    .await;
    let w2 = writer_name(&second).expect("writer").to_string();
    assert_ne!(w2, w1);
    wait_topology(&b.url(), "b agrees on epoch 2", |t| {
        writer_name(t) == Some(w2.as_str()) && t.epoch == 2
    })
    .await;

    let epochs = history.assert_one_holder_per_epoch();
    assert_eq!(epochs.get(&1).map(|h| h.0.clone()), Some(w1));
    assert_eq!(epochs.get(&2).map(|h| h.0.clone()), Some(w2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_replicas_elect_one_leader_and_the_other_takes_over() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let history = LeaseHistory::start(api.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("token file");
    let extra = format!(
        "ha: {{ enabled: true, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 250ms }}\n\
         switchover: {{ token_file: \"{}\" }}\n",
        token.display()
    );
    let a = run(&api, &extra, "we-a").await;
    let b = run(&api, &extra, "we-b").await;

    wait("exactly one leader", || a.is_leader() != b.is_leader()).await;
    // Stays exactly one for a while (sampled).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(leader.is_leader() && !follower.is_leader());
    let l = lease(&api, LEADER_LEASE).expect("leader Lease");
    assert_eq!(
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .as_deref(),
        Some(leader.identity())
    );

    // Both serve the same writer; only the leader decides.
    wait_topology(&leader.url(), "leader: storagenode-0 writer", |t| {
        writer_name(t) == Some("storagenode-0")
    })
    .await;
    wait_topology(&follower.url(), "follower: storagenode-0 writer", |t| {
        writer_name(t) == Some("storagenode-0") && t.epoch == 1
    })
    .await;
    let (status, _) = http_call("GET", &format!("{}/health/ready", follower.url()), &[], "").await;
    assert_eq!(status, 200, "a follower that knows its leader is ready");
    let (_, text) = http_call("GET", &format!("{}/metrics", follower.url()), &[], "").await;
    assert_eq!(
        parse_metrics(&text).get("writer_election_is_leader"),
        Some(&0.0)
    );
    let (_, text) = http_call("GET", &format!("{}/metrics", leader.url()), &[], "").await;
    assert_eq!(
        parse_metrics(&text).get("writer_election_is_leader"),
        Some(&1.0)
    );
    let auth = [("authorization", "Bearer t0ken")];
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover", follower.url()),
        &auth,
        "{}",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_leader") && body.contains(leader.identity()),
        "{body}"
    );

    // Switchover through the leader; the follower serves it from the Lease.
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover", leader.url()),
        &auth,
        r#"{"to": "storagenode-2"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_topology(&follower.url(), "follower: storagenode-2 writer", |t| {
        writer_name(t) == Some("storagenode-2") && t.epoch == 2
    })
    .await;
    // The follower serves the leader's history (from the writer Lease) as soon as it re-read it.
    let leader_history = history_of(&leader.url()).await;
    assert_eq!(
        leader_history
            .iter()
            .map(|h| (h.epoch, h.reason.as_str(), h.to.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (1, "initial", "storagenode-0"),
            (2, "switchover", "storagenode-2")
        ]
    );
    wait_history(&follower.url(), &leader_history).await;

    // The leader crashes (no release): the follower takes over once the lease expired.
    let transitions = l
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    let survivor_id = follower.identity().to_string();
    leader.kill();
    wait("the follower leads", || follower.is_leader()).await;
    let l = lease(&api, LEADER_LEASE).expect("leader Lease");
    let spec = l.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(survivor_id.as_str()));
    assert_eq!(spec.lease_transitions, Some(transitions + 1));

    // The new leader decides: the writer pod goes away, a new writer is elected.
    assert!(api.delete_pod(NS, "storagenode-2"));
    let t = wait_topology(
        &follower.url(),
        "storagenode-0 elected by the new leader",
        |t| writer_name(t) == Some("storagenode-0"),
    )
    .await;
    assert_eq!(t.epoch, 3);
    // The new leader continued the old leader's history from the Lease.
    let h = history_of(&follower.url()).await;
    assert_eq!(h.len(), 3, "{h:#?}");
    assert_eq!(h[..2], leader_history[..]);
    assert_eq!((h[2].epoch, h[2].to.as_str()), (3, "storagenode-0"));
    assert_eq!(h[2].from.as_deref(), Some("storagenode-2"));
    assert!(h[2].no_writer_ms.is_some(), "{h:#?}");
    let l = lease(&api, WRITER_LEASE).expect("writer Lease");
    let stored: Vec<HistoryEntry> = serde_json::from_str(
        &annotation(&l, writer_election::store::lease::HISTORY).expect("history annotation"),
    )
    .expect("history annotation is JSON");
    assert_eq!(stored, h);
    // The sampler polls the Lease on its own schedule: let it catch up with the record.
    wait("the Lease sampler saw 3 epochs", || {
        history.epochs_seen() >= 3
    })
    .await;
    let epochs = history.assert_one_holder_per_epoch();
    assert_eq!(epochs.len(), 3, "{epochs:?}");

    // A graceful stop releases the leader Lease for the next replica.
    follower.stop().await;
    let l = lease(&api, LEADER_LEASE).expect("leader Lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
        ""
    );
    assert_rbac_clean(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_leading() {
    let nodes = nodes(2).await;
    let api = Arc::new(storage_api(&nodes).await);
    let extra =
        "ha: { enabled: true, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 250ms }\n";
    let a = run(&api, extra, "we-a").await;
    wait("a leads", || a.is_leader()).await;
    wait_topology(&a.url(), "a writer", |t| t.writer.is_some()).await;
    // A partition: every API request hangs. The leader cannot renew and must step down by itself.
    api.set_outage(Outage::Hang);
    wait("a stops leading", || !a.is_leader()).await;
    let t = topology(&a.url())
        .await
        .expect("a still serves the topology");
    assert!(t.writer.is_some(), "the recorded writer is still published");
    api.set_outage(Outage::None);
    wait("a leads again", || a.is_leader()).await;
    a.stop().await;
}

#[test]
fn the_role_grants_what_the_code_calls_and_no_more() {
    // Every verb the role grants is used by some code path (the tests above exercise them).
    let granted = permissions::granted_by(&shipped_role()).expect("rbac.yaml's Role");
    let all: std::collections::BTreeSet<_> = permissions::ALL.iter().cloned().collect();
    assert_eq!(granted, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_in_kubernetes_mode_from_a_kubeconfig() {
    let nodes = nodes(2).await;
    let api = Arc::new(storage_api(&nodes).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let config = dir.path().join("election.yaml");
    std::fs::write(
        &config,
        format!(
            r#"listen: "127.0.0.1:0"
discovery: {{ kubernetes: {{ port: http }} }}
probe: {{ interval: 200ms, timeout: 1s }}
state: {{ lease: {{ name: {WRITER_LEASE} }} }}
promotion: {{ preset: none }}
ha: {{ enabled: true, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 250ms }}
label_pods: {{ enabled: true }}
"#
        ),
    )
    .expect("config");
    let kc = kubeconfig.display().to_string();
    let mut e = Election::start(
        &config,
        &[("KUBECONFIG", kc.as_str()), ("POD_NAME", "we-proc")],
    );
    e.wait_for("storagenode-0 writer", LONG, |t| {
        writer_name(t) == Some("storagenode-0")
    })
    .await;
    let l = lease(&api, LEADER_LEASE).expect("leader Lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("we-proc"),
        "identity from POD_NAME"
    );
    assert!(api.delete_pod(NS, "storagenode-0"));
    let t = e
        .wait_for("storagenode-1 writer", LONG, |t| {
            writer_name(t) == Some("storagenode-1")
        })
        .await;
    assert_eq!(t.epoch, 2);
    let status = e.terminate().expect("exit status");
    assert!(status.success(), "{status:?}");
    let l = lease(&api, LEADER_LEASE).expect("leader Lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
        "",
        "released on SIGTERM"
    );
    assert_rbac_clean(&api);
}
