//! HA across real network hosts: two writer-election processes, each in a network namespace of
//! its own, the fake Kubernetes API server in another, three storage-node stand-ins in a fourth,
//! and the test's client in a fifth, all on one bridge (loadtest's namespace kit). The faults are
//! nftables cuts between those hosts, each bounded and healed; the checks read what the hosts
//! saw: the Leases in the API server, who called which node and when, each replica's
//! `/v1/status`, `/v1/topology` and `/metrics`. Needs root and `ip netns`; without them each test
//! says SKIPPED and why, and returns.

mod support;

#[allow(dead_code)]
#[path = "../../loadtest/src/netns/lab.rs"]
mod lab;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode, Uri};
use serde_json::Value;
use support::cluster::{http_call, parse_metrics, Election, FINISH, START};
use support::fake_k8s::{shipped_role, FakeApiServer, StoragePod, DEFAULT_NAMESPACE};
use tokio::task::JoinHandle;
use writer_election::client::fetch_topology;
use writer_election::topology::Topology;

const API: &str = "api";
const NODES: &str = "nodes";
const CLIENT: &str = "client";
const REPLICAS: [&str; 2] = ["we-a", "we-b"];
const API_PORT: u16 = 6443;
const NODE_PORT: u16 = 9001;
const ELECTION_PORT: u16 = 8080;
const LEADER_LEASE: &str = "writer-election-leader";
const RECORD_LEASE: &str = "storage-writer";
/// Every wait is bounded by this; the machine is small and shared, so it is generous.
const LONG: Duration = Duration::from_secs(30);
/// Longer than the leader Lease (2 s): a replica that wrongly took over on its own clock would
/// have done so within the fault.
const REPLICA_CUT: Duration = Duration::from_secs(4);
/// Longer than every API call's own timeout (5 s) after the lease ran out: the cut-off leader's
/// calls fail within the fault instead of arriving late after the heal, and its decision loop,
/// held up to that long in a call, reports what it is before the heal.
const API_CUT: Duration = Duration::from_secs(8);

fn can_run(test: &str) -> bool {
    match lab::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Runs `scenario` on the client host's runtime against a freshly started cluster.
fn run<F>(test: &str, scenario: fn(Cluster) -> F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    if !can_run(test) {
        return;
    }
    let mut hosts = vec![API, NODES, CLIENT];
    hosts.extend(REPLICAS);
    let lab = lab::Lab::new(&hosts).expect("network namespaces");
    let client = lab.handle(CLIENT).expect("client namespace");
    lab::block_on_in(client, "ha-partition", move || {
        Box::pin(async move { scenario(Cluster::start(lab).await).await })
    })
    .expect("client runtime");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Probe,
    Start,
    Finish,
    Other,
}

#[derive(Debug, Clone)]
struct Call {
    from: IpAddr,
    kind: CallKind,
    at: Instant,
}

/// A storage node as writer-election sees one (readiness, start, finish), which remembers who
/// called it, with what, and when.
#[derive(Default)]
struct Node {
    unready: std::sync::atomic::AtomicBool,
    calls: Mutex<Vec<Call>>,
}

impl Node {
    fn set_ready(&self, ready: bool) {
        self.unready
            .store(!ready, std::sync::atomic::Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn node_call(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
) -> (StatusCode, &'static str) {
    let (kind, answer) = match (method.as_str(), uri.path()) {
        ("GET", "/health/ready") if node.unready.load(std::sync::atomic::Ordering::SeqCst) => (
            CallKind::Probe,
            (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        ),
        ("GET", "/health/ready") => (CallKind::Probe, (StatusCode::OK, "ok")),
        ("POST", START) => (CallKind::Start, (StatusCode::OK, "started")),
        ("POST", FINISH) => (CallKind::Finish, (StatusCode::OK, "true")),
        _ => (CallKind::Other, (StatusCode::NOT_FOUND, "no")),
    };
    node.calls.lock().unwrap().push(Call {
        from: peer.ip(),
        kind,
        at: Instant::now(),
    });
    answer
}

/// What the test saw at one moment: each replica's own word on leading, and both Leases.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    leading: [Option<bool>; 2],
    leader: Option<String>,
    leader_transitions: i32,
    /// (epoch, holder) of the writer record.
    record: Option<(u64, String)>,
}

struct Replica {
    name: &'static str,
    ip: IpAddr,
    url: String,
    process: Election,
}

struct Cluster {
    /// Killed first (fields drop in order), the namespaces last.
    replicas: Vec<Replica>,
    nodes: Vec<Arc<Node>>,
    api: Arc<FakeApiServer>,
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: JoinHandle<()>,
    _dir: tempfile::TempDir,
    lab: lab::Lab,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sampler.abort();
        if std::thread::panicking() {
            for r in &self.replicas {
                eprintln!("--- {} ---\n{}", r.name, r.process.log_text());
            }
        }
    }
}

fn config() -> String {
    format!(
        r#"listen: "0.0.0.0:{ELECTION_PORT}"
discovery:
  kubernetes: {{ namespace: "{DEFAULT_NAMESPACE}", port: http }}
probe: {{ path: /health/ready, interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}
state: {{ lease: {{ name: {RECORD_LEASE} }} }}
promotion:
  preset: none
  start:  {{ method: POST, path: {START} }}
  finish: {{ method: POST, path: {FINISH}, until_body: "true", interval: 50ms, timeout: 10s }}
ha: {{ enabled: true, lease_name: {LEADER_LEASE}, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 250ms }}
fencing: {{ delete_old_writer_pod: true, timeout: 10s }}
"#
    )
}

fn lease_of(api: &FakeApiServer, name: &str) -> Option<(String, i32)> {
    let spec = api.get_lease(DEFAULT_NAMESPACE, name)?.spec?;
    Some((
        spec.holder_identity.unwrap_or_default(),
        spec.lease_transitions.unwrap_or(0),
    ))
}

/// (epoch, holder) of the writer record: its leaseTransitions and holderIdentity.
fn record_of(api: &FakeApiServer) -> Option<(u64, String)> {
    lease_of(api, RECORD_LEASE).map(|(holder, epoch)| (epoch as u64, holder))
}

async fn get_json(url: &str) -> Option<(u16, Value)> {
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(3), http_call("GET", url, &[], ""))
            .await
            .ok()?;
    (status != 0).then(|| (status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

async fn leading(url: &str) -> Option<bool> {
    let (_, v) = get_json(&format!("{url}/v1/status")).await?;
    v["leading"].as_bool()
}

async fn topology(url: &str) -> Option<Topology> {
    tokio::time::timeout(Duration::from_secs(3), fetch_topology(url, None, None))
        .await
        .ok()?
        .ok()
}

async fn metrics(url: &str) -> std::collections::BTreeMap<String, f64> {
    let (_, text) = tokio::time::timeout(
        Duration::from_secs(3),
        http_call("GET", &format!("{url}/metrics"), &[], ""),
    )
    .await
    .unwrap_or((0, String::new()));
    parse_metrics(&text)
}

fn shows(t: &Topology, epoch: u64, writer: &str) -> bool {
    t.epoch == epoch && t.writer.as_ref().is_some_and(|w| w.name == writer)
}

/// Polls `cond` until it holds; panics naming `what` after [`LONG`].
async fn until<Fut: std::future::Future<Output = bool>>(what: &str, cond: impl FnMut() -> Fut) {
    test_kit::wait::until(what, LONG, cond).await
}

impl Cluster {
    async fn start(lab: lab::Lab) -> Cluster {
        let listener = lab.listen(API, API_PORT).expect("API server socket");
        let api = Arc::new(
            FakeApiServer::start_on(listener)
                .expect("fake API server")
                .with_role(shipped_role()),
        );
        let nodes_ip = lab.ip(NODES).expect("nodes host").to_string();
        let now = SystemTime::now();
        let mut nodes = Vec::new();
        for i in 0..3u16 {
            let node = Arc::new(Node::default());
            let socket = lab.listen(NODES, NODE_PORT + i).expect("node socket");
            socket
                .set_nonblocking(true)
                .expect("non-blocking node socket");
            let listener = tokio::net::TcpListener::from_std(socket).expect("node listener");
            let app = axum::Router::new()
                .fallback(node_call)
                .with_state(node.clone())
                .into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            api.add_pod(
                StoragePod::new(format!("storagenode-{i}"))
                    .pod_ip(Some(&nodes_ip))
                    .port("http", NODE_PORT + i)
                    .created_at(now - Duration::from_secs(600 - 100 * u64::from(i))),
            );
            nodes.push(node);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, DEFAULT_NAMESPACE)
            .expect("kubeconfig");
        let cfg = dir.path().join("election.yaml");
        std::fs::write(&cfg, config()).expect("config");
        let mut replicas = Vec::new();
        for name in REPLICAS {
            let ip = IpAddr::V4(lab.ip(name).expect("replica host"));
            let cmd = lab
                .command(name, &support::cluster::binary())
                .expect("replica command");
            let ip_text = ip.to_string();
            let mut process = Election::start_command(
                cmd,
                &cfg,
                &[
                    ("KUBECONFIG", &kubeconfig.to_string_lossy()),
                    ("POD_NAME", name),
                    ("POD_IP", &ip_text),
                ],
            );
            let url = format!("http://{ip}:{ELECTION_PORT}");
            process.url = url.clone();
            replicas.push(Replica {
                name,
                ip,
                url,
                process,
            });
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sampler = tokio::spawn(sample(
            api.clone(),
            replicas.iter().map(|r| r.url.clone()).collect(),
            samples.clone(),
        ));
        let c = Cluster {
            replicas,
            nodes,
            api,
            samples,
            sampler,
            _dir: dir,
            lab,
        };
        until("storagenode-0 is recorded as writer at epoch 1", || async {
            record_of(&c.api) == Some((1, "storagenode-0".into()))
        })
        .await;
        c.settled(1, "storagenode-0").await;
        c
    }

    /// (leader, follower) by the replicas' own word, once exactly one says it leads.
    async fn roles(&self) -> (usize, usize) {
        let deadline = Instant::now() + LONG;
        loop {
            let a = leading(&self.replicas[0].url).await;
            let b = leading(&self.replicas[1].url).await;
            match (a, b) {
                (Some(true), Some(false)) => return (0, 1),
                (Some(false), Some(true)) => return (1, 0),
                seen => assert!(
                    Instant::now() < deadline,
                    "no single leader within {LONG:?}: {seen:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn replica_at(&self, ip: IpAddr) -> &str {
        self.replicas
            .iter()
            .find(|r| r.ip == ip)
            .map_or("somebody else", |r| r.name)
    }

    /// Every promotion call, (node index, call).
    fn promotions(&self) -> Vec<(usize, Call)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.calls().into_iter().map(move |c| (i, c)))
            .filter(|(_, c)| matches!(c.kind, CallKind::Start | CallKind::Finish))
            .collect()
    }

    /// The promises of every fault: one replica decides at a time, and only the one that holds
    /// the leader Lease acts, on the nodes and in the API.
    fn assert_one_decider(&self) {
        let samples = self.samples();
        assert!(samples.len() > 20, "too few samples: {}", samples.len());
        for s in &samples {
            assert_ne!(
                s.leading,
                [Some(true), Some(true)],
                "both replicas said they lead at once: {s:?}"
            );
        }
        // An epoch names one holder, and epochs only grow.
        let mut last: Option<(u64, String)> = None;
        for s in &samples {
            let Some(r) = &s.record else { continue };
            if let Some((epoch, holder)) = &last {
                assert!(r.0 >= *epoch, "the epoch went back: {last:?} then {r:?}");
                assert!(
                    r.0 != *epoch || r.1 == *holder,
                    "epoch {epoch} with two holders: {holder} and {}",
                    r.1
                );
            }
            last = Some(r.clone());
        }
        // Whoever acted held the leader Lease at that moment (by the API server's own state).
        let holder_at = |at: Instant| {
            samples
                .iter()
                .rev()
                .find(|s| s.at <= at)
                .and_then(|s| s.leader.clone())
        };
        for (node, call) in self.promotions() {
            let by = self.replica_at(call.from);
            assert_eq!(
                holder_at(call.at).as_deref(),
                Some(by),
                "storagenode-{node} got {:?} from {by}, which did not hold the leader Lease",
                call.kind
            );
        }
        for r in self.api.requests() {
            let record_write = r.resource == "leases"
                && r.name.as_deref() == Some(RECORD_LEASE)
                && matches!(r.verb.as_str(), "create" | "update" | "patch");
            let fencing = r.resource == "pods" && r.verb == "delete";
            if record_write || fencing {
                let by = self.replica_at(r.peer.ip());
                assert_eq!(
                    holder_at(r.at).as_deref(),
                    Some(by),
                    "{} {} {:?} by {by}, which did not hold the leader Lease",
                    r.verb,
                    r.resource,
                    r.name
                );
            }
        }
        // A node is promoted by one replica, for one epoch.
        for (i, n) in self.nodes.iter().enumerate() {
            let starts: Vec<Call> = n
                .calls()
                .into_iter()
                .filter(|c| c.kind == CallKind::Start)
                .collect();
            let mut by: Vec<IpAddr> = starts.iter().map(|c| c.from).collect();
            by.dedup();
            assert!(by.len() <= 1, "storagenode-{i} promoted by {by:?}");
        }
    }

    /// The history as `replica` serves it: (epoch, to) of every change.
    async fn history(&self, replica: usize) -> Vec<(u64, String)> {
        let (_, v) = get_json(&format!("{}/v1/history", self.replicas[replica].url))
            .await
            .expect("history");
        v["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|c| {
                (
                    c["epoch"].as_u64().unwrap_or(0),
                    c["to"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// (leader, follower, (holder, transitions) of the leader Lease) before a fault.
    async fn before_fault(&self) -> (usize, usize, (String, i32)) {
        let (l, f) = self.roles().await;
        let lease = lease_of(&self.api, LEADER_LEASE).expect("leader Lease");
        (l, f, lease)
    }

    /// Heals every fault, waits until both replicas serve `writer` at `epoch` with one leader,
    /// samples a little longer and checks [`Self::assert_one_decider`]: (when healed, leader).
    async fn heal_and_settle(&self, epoch: u64, writer: &str) -> (Instant, usize) {
        let healed_at = Instant::now();
        self.lab.heal_all().expect("heal");
        self.settled(epoch, writer).await;
        let (leader, _) = self.roles().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.assert_one_decider();
        (healed_at, leader)
    }

    /// Waits until both replicas serve `writer` at `epoch`.
    async fn settled(&self, epoch: u64, writer: &str) {
        for r in &self.replicas {
            until(
                &format!("{} serves {writer} at epoch {epoch}", r.name),
                || async {
                    topology(&r.url)
                        .await
                        .is_some_and(|t| shows(&t, epoch, writer))
                },
            )
            .await;
        }
    }
}

async fn sample(api: Arc<FakeApiServer>, urls: Vec<String>, out: Arc<Mutex<Vec<Sample>>>) {
    loop {
        let at = Instant::now();
        let leading = [leading(&urls[0]).await, leading(&urls[1]).await];
        let (leader, leader_transitions) = lease_of(&api, LEADER_LEASE).unzip();
        out.lock().unwrap().push(Sample {
            at,
            leading,
            leader,
            leader_transitions: leader_transitions.unwrap_or(0),
            record: record_of(&api),
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn replicas_cut_from_each_other_leave_exactly_one_deciding() {
    run(
        "replicas_cut_from_each_other_leave_exactly_one_deciding",
        replicas_cut,
    );
}

async fn replicas_cut(c: Cluster) {
    let (l, f, before) = c.before_fault().await;
    let (leader, follower) = (&c.replicas[l], &c.replicas[f]);
    assert_eq!(before.0, leader.name);

    c.lab.cut(REPLICAS[0], REPLICAS[1]).expect("cut");
    let cut_at = Instant::now();
    // The follower cannot forward to the leader now, and must still answer.
    let asked = Instant::now();
    let t = topology(&follower.url).await;
    let answered_in = asked.elapsed();
    assert!(
        t.as_ref().is_some_and(|t| shows(t, 1, "storagenode-0")),
        "the follower, cut from the leader, answered {t:?}"
    );
    // A decision falls due while the replicas cannot see each other.
    c.nodes[0].set_ready(false);
    until("the failover to storagenode-1 is recorded", || async {
        record_of(&c.api) == Some((2, "storagenode-1".into()))
    })
    .await;
    let failed_over_in = cut_at.elapsed();
    // The follower learns it from the record, not from the leader it cannot reach.
    until("the follower serves storagenode-1 at epoch 2", || async {
        topology(&follower.url)
            .await
            .is_some_and(|t| shows(&t, 2, "storagenode-1"))
    })
    .await;
    tokio::time::sleep_until((cut_at + REPLICA_CUT).into()).await;
    let (healed_at, l2) = c.heal_and_settle(2, "storagenode-1").await;
    assert_eq!(
        l2, l,
        "the leader changed although both replicas reached the API"
    );
    let during: Vec<Sample> = c.samples().into_iter().filter(|s| s.at >= cut_at).collect();
    for s in &during {
        assert_eq!(s.leader.as_deref(), Some(leader.name), "{s:?}");
        assert_eq!(s.leader_transitions, before.1, "{s:?}");
        assert_ne!(s.leading[f], Some(true), "the follower led: {s:?}");
    }
    // Only the leader ever called a node; the follower did not even probe.
    for (i, n) in c.nodes.iter().enumerate() {
        let theirs: Vec<Call> = n
            .calls()
            .into_iter()
            .filter(|c| c.from == follower.ip)
            .collect();
        assert!(
            theirs.is_empty(),
            "the follower called storagenode-{i}: {theirs:?}"
        );
    }
    let starts = |i: usize| {
        c.nodes[i]
            .calls()
            .iter()
            .filter(|c| c.kind == CallKind::Start)
            .count()
    };
    assert_eq!([starts(0), starts(1), starts(2)], [1, 1, 0]);
    assert_eq!(
        c.history(f).await,
        vec![(1, "storagenode-0".into()), (2, "storagenode-1".into())]
    );
    let lm = metrics(&leader.url).await;
    let fm = metrics(&follower.url).await;
    assert_eq!(
        lm.get(r#"writer_election_failovers_total{reason="writer-unready"}"#),
        Some(&1.0)
    );
    assert_eq!(lm.get("writer_election_is_leader"), Some(&1.0));
    assert_eq!(fm.get("writer_election_is_leader"), Some(&0.0));
    assert_ne!(
        fm.get(r#"writer_election_failovers_total{reason="writer-unready"}"#),
        Some(&1.0)
    );
    eprintln!(
        "replicas cut for {:?}: the follower answered in {answered_in:?}; failover recorded {failed_over_in:?} after the cut; {} samples, leader {} throughout",
        healed_at - cut_at,
        during.len(),
        leader.name
    );
}

#[test]
fn a_leader_cut_from_the_api_stops_deciding_and_the_other_takes_over() {
    run(
        "a_leader_cut_from_the_api_stops_deciding_and_the_other_takes_over",
        leader_cut_from_api,
    );
}

async fn leader_cut_from_api(c: Cluster) {
    let (l, f, before) = c.before_fault().await;
    let (leader, follower) = (&c.replicas[l], &c.replicas[f]);

    c.lab.cut(leader.name, API).expect("cut");
    let cut_at = Instant::now();
    // The writer fails at the same moment: the cut-off leader has a reason to decide while its
    // lease may still be valid, and must not act once it could have expired.
    c.nodes[0].set_ready(false);
    until("the follower leads", || async {
        leading(&follower.url).await == Some(true)
    })
    .await;
    let took_over_in = cut_at.elapsed();
    until("the failover to storagenode-1 is recorded", || async {
        record_of(&c.api) == Some((2, "storagenode-1".into()))
    })
    .await;
    let failed_over_in = cut_at.elapsed();
    // The old leader says at once that it does not decide (its leadership watch); readiness and
    // the gauge follow once its decision loop is out of the API call the cut left it in.
    assert_eq!(leading(&leader.url).await, Some(false));
    let old_view = topology(&leader.url).await;
    let heal_at = cut_at + API_CUT;
    let mut unready_in = None;
    let mut old_metrics = Default::default();
    while Instant::now() < heal_at {
        let ready = get_json(&format!("{}/health/ready", leader.url)).await;
        old_metrics = metrics(&leader.url).await;
        if ready
            .as_ref()
            .is_some_and(|(code, body)| *code == 503 && body["leader"] == false)
            && old_metrics.get("writer_election_is_leader") == Some(&0.0)
        {
            unready_in = Some(cut_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unready_in = unready_in.unwrap_or_else(|| {
        panic!("the cut-off leader still said ready or leading {API_CUT:?} into the cut")
    });
    tokio::time::sleep_until((cut_at + API_CUT).into()).await;
    let (healed_at, l2) = c.heal_and_settle(2, "storagenode-1").await;
    assert_eq!(l2, f, "the replica that took over leads after the heal");
    let after = lease_of(&c.api, LEADER_LEASE).expect("leader Lease");
    assert_eq!(after, (follower.name.to_string(), before.1 + 1));
    // Nothing of the old leader reached the API during the cut (the cut was real), and it
    // called no node to promote after the cut began.
    let leaked: Vec<_> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.peer.ip() == leader.ip && r.at > cut_at && r.at < healed_at)
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    let late: Vec<_> = c
        .promotions()
        .into_iter()
        .filter(|(_, call)| call.from == leader.ip && call.at >= cut_at)
        .collect();
    assert!(late.is_empty(), "the cut-off leader promoted: {late:?}");
    let theirs: Vec<usize> = c
        .promotions()
        .into_iter()
        .filter(|(_, call)| call.from == follower.ip && call.kind == CallKind::Start)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(theirs, vec![1], "the new leader's promotions");
    assert_eq!(
        c.history(l).await,
        vec![(1, "storagenode-0".into()), (2, "storagenode-1".into())]
    );
    let blocked = old_metrics
        .get(r#"writer_election_failovers_blocked_total{reason="api_unreachable"}"#)
        .copied()
        .unwrap_or(0.0);
    eprintln!(
        "leader cut from the API for {:?}: {} took over {took_over_in:?} after the cut, failover recorded after {failed_over_in:?}; \
         the old leader said unready and not leading {unready_in:?} after the cut and served {:?} during it, \
         failovers blocked (api_unreachable): {blocked}",
        healed_at - cut_at,
        follower.name,
        old_view.map(|t| (t.epoch, t.writer.map(|w| w.name)))
    );
}
