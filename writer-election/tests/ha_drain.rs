//! HA and the switchover drain barrier: two replicas against the fake Kubernetes API. A proxy that
//! follows the follower replica must be part of the leader's drain set and see its draining
//! document: the follower forwards topology queries and acknowledgements to the leader (whose URL
//! it reads from the leader Lease), and serves its own record when the leader does not answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::cluster::*;
use support::fake_k8s::{FakeApiServer, DEFAULT_NAMESPACE};
use support::fake_proxy::{Ack, FakeProxy};
use tokio::sync::watch;
use writer_election::config::ElectionConfig;
use writer_election::topology::Topology;
use writer_election::{start, ServiceHandle, ServiceOptions};

const LONG: Duration = Duration::from_secs(60);
const NS: &str = DEFAULT_NAMESPACE;
const LEADER_LEASE: &str = "writer-election-leader";
const URL_ANNOTATION: &str = "writer-election.microstream.one/url";

async fn run(api: &FakeApiServer, token: &std::path::Path, identity: &str) -> ServiceHandle {
    let yaml = format!(
        r#"listen: "127.0.0.1:0"
discovery:
  kubernetes: {{ namespace: "{NS}", port: http }}
probe: {{ path: /health/ready, interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}
state: {{ lease: {{ name: storage-writer }} }}
promotion:
  preset: none
  start:  {{ method: POST, path: {START} }}
  finish: {{ method: POST, path: {FINISH}, until_body: "true", interval: 50ms, timeout: 10s }}
ha: {{ enabled: true, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 250ms }}
switchover: {{ token_file: "{}", drain_timeout: 5m }}
"#,
        token.display()
    );
    let cfg = ElectionConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("config: {e}"));
    start(
        cfg,
        ServiceOptions {
            kube_client: Some(api.kube_client()),
            identity: Some(identity.to_string()),
            listener: None,
        },
    )
    .await
    .expect("start writer-election")
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    support::wait_until(LONG, what, &mut cond).await
}

async fn wait_topology(url: &str, what: &str, cond: impl Fn(&Topology) -> bool) -> Topology {
    test_kit::election::wait_for_topology(url, what, LONG, cond).await
}

async fn metric(url: &str, name: &str) -> Option<f64> {
    let (_, text) = http_call("GET", &format!("{url}/metrics"), &[], "").await;
    parse_metrics(&text).get(name).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_on_a_follower_are_part_of_the_leaders_drain_barrier() {
    let nodes = nodes(3).await;
    let api = Arc::new(storage_api(&nodes).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("token file");
    let a = run(&api, &token, "we-a").await;
    let b = run(&api, &token, "we-b").await;
    wait("exactly one leader", || a.is_leader() != b.is_leader()).await;
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };

    // The leader wrote its URL next to its name in the leader Lease.
    let l = api.get_lease(NS, LEADER_LEASE).expect("leader Lease");
    assert_eq!(
        l.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(URL_ANNOTATION))
            .cloned(),
        Some(leader.url())
    );
    wait_topology(&follower.url(), "the follower serves storagenode-0", |t| {
        writer_name(t) == Some("storagenode-0") && t.nodes.iter().filter(|n| n.ready).count() == 3
    })
    .await;

    // One proxy follows the leader, one the follower; the second acknowledges (through the
    // follower) only when the test says so.
    let (release, gate) = watch::channel(false);
    let on_leader = FakeProxy::start(&leader.url(), "proxy-on-leader", Ack::At);
    let on_follower = FakeProxy::start(
        &follower.url(),
        "proxy-on-follower",
        Ack::WhenReleased(gate),
    );
    test_kit::wait::until("the leader counts the follower's proxy", LONG, || async {
        metric(&leader.url(), "writer_election_clients").await == Some(2.0)
    })
    .await;

    let url = format!("{}/v1/switchover", leader.url());
    let call = tokio::spawn(async move {
        http_call(
            "POST",
            &url,
            &[("authorization", "Bearer t0ken")],
            r#"{"to": "storagenode-2"}"#,
        )
        .await
    });
    on_follower
        .wait_seen(
            "the leader's draining document, through the follower",
            |t| t.switchover.is_some() && writer_name(t) == Some("storagenode-0"),
        )
        .await;
    wait("proxy-on-leader acknowledges", || {
        !on_leader.acks().is_empty()
    })
    .await;
    assert_eq!(
        metric(&leader.url(), "writer_election_switchover_pending_clients").await,
        Some(1.0)
    );
    assert!(
        !call.is_finished(),
        "the switchover went on without the follower's proxy"
    );
    assert_eq!(nodes[2].start_calls(), 0);

    release.send_replace(true);
    let (status, body) = call.await.expect("switchover task");
    assert_eq!(status, 200, "{body}");
    let acks = on_follower.acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].status, 204, "forwarded to the leader and recorded");
    on_follower
        .wait_seen("storagenode-2 as writer", |t| {
            writer_name(t) == Some("storagenode-2") && t.epoch == 2
        })
        .await;

    // A follower passes the leader's 409 for an unknown switchover on.
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover/drained", follower.url()),
        &[],
        r#"{"client": "p", "switchover": 1}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // The leader crashes: the follower keeps serving the recorded writer from the Lease (static
    // stability) instead of failing the proxies' queries, and takes over later.
    let follower_url = follower.url();
    leader.kill();
    let t = wait_topology(&follower_url, "the follower answers alone", |t| {
        writer_name(t) == Some("storagenode-2")
    })
    .await;
    assert_eq!(t.epoch, 2);
    let (status, body) = http_call(
        "POST",
        &format!("{follower_url}/v1/switchover/drained"),
        &[],
        r#"{"client": "p", "switchover": 1}"#,
    )
    .await;
    assert!(
        status == 503 || status == 409,
        "the dead leader cannot take it (503), or the follower already leads (409): {status} {body}"
    );
    wait("the follower leads", || follower.is_leader()).await;
    drop(on_follower);
    drop(on_leader);
    follower.stop().await;
}
