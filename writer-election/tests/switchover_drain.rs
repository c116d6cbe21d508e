//! The planned-switchover drain barrier against the real binary: fake "proxies" (plain HTTP loops
//! that follow `/v1/topology` with a client id and acknowledge the drain the way rw-proxy does)
//! and three fake storage nodes.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::cluster::*;
use support::fake_proxy::{Ack, FakeProxy};
use support::wait_until;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writer_election::topology::Topology;

const LONG: Duration = Duration::from_secs(60);
const TOKEN: (&str, &str) = ("TEST_DRAIN_TOKEN", "drain-s3cret");
const AUTH: [(&str, &str); 1] = [("authorization", "Bearer drain-s3cret")];

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn setup(nodes: &[TestNode], extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let config = dir.path().join("election.yaml");
    let text = static_config(nodes, &state, extra);
    std::fs::write(&config, text).expect("write config");
    Setup {
        _dir: dir,
        config,
        state,
    }
}

fn recorded_epoch(state: &PathBuf) -> u64 {
    let text = std::fs::read_to_string(state).expect("state file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("state json");
    v["epoch"].as_u64().expect("epoch")
}

async fn metric(e: &Election, name: &str) -> Option<f64> {
    e.metric(name).await
}

/// Until the election counts `n` clients (they have made their first query).
async fn wait_clients(e: &Election, n: usize) {
    test_kit::wait::until(&format!("the election sees {n} clients"), LONG, || async {
        metric(e, "writer_election_clients").await == Some(n as f64)
    })
    .await;
}

async fn ready_cluster(e: &Election) -> Topology {
    e.wait_for("all ready, node-0 writer", LONG, |t| {
        all_ready(t, 3) && writer_name(t) == Some("node-0")
    })
    .await
}

fn switchover(e: &Election, body: &str) -> JoinHandle<(u16, String)> {
    let url = format!("{}/v1/switchover", e.url);
    let body = body.to_string();
    tokio::spawn(async move { http_call("POST", &url, &AUTH, &body).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_writer_is_published_only_after_every_proxy_drained() {
    let nodes = nodes(3).await;
    // A long drain timeout: this switchover can only finish through the acknowledgements.
    let s = setup(
        &nodes,
        "switchover: { token_env: TEST_DRAIN_TOKEN, drain_timeout: 5m }\n",
    );
    let e = Election::start(&s.config, &[TOKEN]);
    let before = ready_cluster(&e).await;
    assert_eq!(before.epoch, 1);

    let (release, gate) = watch::channel(false);
    let a = FakeProxy::start(&e.url, "proxy-a", Ack::At);
    let b = FakeProxy::start(&e.url, "proxy-b", Ack::WhenReleased(gate));
    wait_clients(&e, 2).await;

    let call = switchover(&e, r#"{"to": "node-2"}"#);
    a.wait_seen("the draining switchover", |t| t.switchover.is_some())
        .await;
    b.wait_seen("the draining switchover", |t| t.switchover.is_some())
        .await;
    // proxy-a acknowledged; proxy-b holds out: the switchover must still be draining.
    wait_until(LONG, "proxy-a acknowledges", || !a.acks().is_empty()).await;
    assert_eq!(a.acks()[0].status, 204, "{:?}", a.acks());
    let t = e.topology().await.expect("topology");
    let sw = t
        .switchover
        .clone()
        .expect("still draining after one of two acks");
    assert_eq!(
        (sw.state.as_str(), sw.from.as_str(), sw.to.as_str()),
        ("draining", "node-0", "node-2")
    );
    assert_eq!(
        writer_name(&t),
        Some("node-0"),
        "writer unchanged while draining"
    );
    assert_eq!(t.epoch, 1, "epoch unchanged while draining");
    assert!(
        !call.is_finished(),
        "the switchover answered before proxy-b drained"
    );
    assert_eq!(nodes[2].start_calls(), 0, "no promotion before the drain");
    assert_eq!(
        metric(&e, "writer_election_switchover_pending_clients").await,
        Some(1.0)
    );
    // A repeated acknowledgement is accepted again and changes nothing.
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover/drained", e.url),
        &[],
        &format!(r#"{{"client": "proxy-a", "switchover": {}}}"#, sw.id),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        metric(&e, "writer_election_switchover_pending_clients").await,
        Some(1.0)
    );
    assert!(!call.is_finished());
    assert_eq!(
        metric(&e, "writer_election_switchover_draining").await,
        Some(1.0)
    );

    release.send_replace(true);
    let (status, body) = call.await.expect("switchover task");
    assert_eq!(status, 200, "{body}");
    let t: Topology = serde_json::from_str(&body).expect("topology");
    assert_eq!(writer_name(&t), Some("node-2"));
    assert_eq!(t.epoch, 2);
    assert!(t.switchover.is_none());
    assert_eq!(recorded_epoch(&s.state), 2, "recorded durably");
    assert!(nodes[2].promoted());
    let b_ack = b.acks();
    assert_eq!(b_ack.len(), 1);
    assert_eq!(b_ack[0].status, 204);
    assert_eq!(b_ack[0].switchover, sw.id);

    // Each proxy saw: old writer -> draining (old writer, same epoch) -> new writer, and the new
    // writer only after both acknowledgements were sent.
    let last_ack = a.acks()[0].sent.max(b_ack[0].sent);
    for p in [&a, &b] {
        p.wait_seen("node-2 as writer", |t| writer_name(t) == Some("node-2"))
            .await;
        let seen = p.seen();
        let first_draining = seen
            .iter()
            .position(|(_, t)| t.switchover.is_some())
            .expect("saw draining");
        let first_new = seen
            .iter()
            .position(|(_, t)| writer_name(t) == Some("node-2"))
            .expect("saw node-2");
        assert!(first_draining < first_new, "{}: {seen:#?}", p.id);
        for (_, t) in &seen[..first_new] {
            assert_eq!(writer_name(t), Some("node-0"), "{}", p.id);
            assert_eq!(t.epoch, 1);
        }
        let (when, new) = &seen[first_new];
        assert!(
            *when > last_ack,
            "{} saw the new writer before the last ack",
            p.id
        );
        assert_eq!(new.epoch, 2);
        assert!(new.switchover.is_none());
    }
    assert_eq!(
        metric(&e, "writer_election_switchover_draining").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&e, "writer_election_switchovers_total{result=\"switched\"}").await,
        Some(1.0)
    );

    // The finished switchover's id is no longer accepted; repeating is harmless but answered 409.
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover/drained", e.url),
        &[],
        &format!(r#"{{"client": "proxy-a", "switchover": {}}}"#, sw.id),
    )
    .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_acknowledges_aborts_the_switchover_unless_forced() {
    let nodes = nodes(3).await;
    let s = setup(
        &nodes,
        "switchover: { token_env: TEST_DRAIN_TOKEN, drain_timeout: 1s }\n",
    );
    let e = Election::start(&s.config, &[TOKEN]);
    ready_cluster(&e).await;
    let a = FakeProxy::start(&e.url, "proxy-a", Ack::At);
    let stuck = FakeProxy::start(&e.url, "proxy-stuck", Ack::Never);
    wait_clients(&e, 2).await;

    let call = switchover(&e, r#"{"to": "node-1"}"#);
    stuck
        .wait_seen("the draining switchover", |t| t.switchover.is_some())
        .await;
    // A second switchover while one drains: 409.
    let (status, body) = http_call(
        "POST",
        &format!("{}/v1/switchover", e.url),
        &AUTH,
        r#"{"to": "node-2"}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("switchover_running"), "{body}");

    let (status, body) = call.await.expect("switchover task");
    assert_eq!(status, 504, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"], "drain_timeout");
    assert_eq!(v["pending"], serde_json::json!(["proxy-stuck"]));
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Aborted: the old writer stays with the same epoch, nothing promoted, the proxies released.
    let t = e.topology().await.expect("topology");
    assert_eq!(writer_name(&t), Some("node-0"));
    assert_eq!(t.epoch, 1);
    assert!(t.switchover.is_none(), "draining state cleared");
    assert_eq!(recorded_epoch(&s.state), 1);
    assert_eq!(nodes[1].start_calls(), 0);
    let t = a
        .wait_seen_after_draining("the abort", |t| t.switchover.is_none())
        .await;
    assert_eq!((writer_name(&t), t.epoch), (Some("node-0"), 1));
    assert_eq!(
        metric(
            &e,
            "writer_election_switchovers_total{result=\"drain_timeout\"}"
        )
        .await,
        Some(1.0)
    );

    // `force`: past the timeout, promoted anyway.
    let (status, body) = switchover(&e, r#"{"to": "node-1", "force": true}"#)
        .await
        .expect("switchover task");
    assert_eq!(status, 200, "{body}");
    let t: Topology = serde_json::from_str(&body).expect("topology");
    assert_eq!(writer_name(&t), Some("node-1"));
    assert_eq!(t.epoch, 2);
    assert!(t.switchover.is_none());
    assert_eq!(recorded_epoch(&s.state), 2);
    assert!(nodes[1].promoted());
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxies_the_switchover_proceeds_at_once() {
    let nodes = nodes(3).await;
    // Waiting for the timeout would outlast the test's HTTP client (150 s): a 200 proves it
    // did not wait.
    let s = setup(
        &nodes,
        "switchover: { token_env: TEST_DRAIN_TOKEN, drain_timeout: 5m }\n",
    );
    let e = Election::start(&s.config, &[TOKEN]);
    ready_cluster(&e).await;
    // A client without an id is not a drain-set member.
    let (status, _) = e.get("/v1/topology").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&e, "writer_election_clients").await, Some(0.0));
    // A proxy that asked once (wait 0) and went away is forgotten after wait + 5 s.
    let (status, _) = e.get("/v1/topology?client=gone-proxy&wait=0s").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&e, "writer_election_clients").await, Some(1.0));
    wait_clients(&e, 0).await;
    let (status, body) = switchover(&e, r#"{"to": "node-1"}"#)
        .await
        .expect("switchover task");
    assert_eq!(status, 200, "{body}");
    let t: Topology = serde_json::from_str(&body).expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (Some("node-1"), 2));
    assert_eq!(recorded_epoch(&s.state), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_acknowledgements_are_checked() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, "switchover: { token_env: TEST_DRAIN_TOKEN }\n");
    let e = Election::start(&s.config, &[TOKEN]);
    ready_cluster(&e).await;
    let url = format!("{}/v1/switchover/drained", e.url);
    // No switchover is running: any id is unknown (no token is needed to be told so).
    let (status, body) =
        http_call("POST", &url, &[], r#"{"client": "p", "switchover": 12345}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("unknown_switchover"), "{body}");
    for bad in [
        "",
        "{not json",
        r#"{"client": "p"}"#,
        r#"{"switchover": 1}"#,
        r#"{"client": "p", "switchover": "one"}"#,
        r#"{"client": "", "switchover": 1}"#,
    ] {
        let (status, body) = http_call("POST", &url, &[], bad).await;
        assert_eq!(status, 400, "{bad:?} -> {body}");
    }
    let (status, body) = e.get("/v1/topology?client=").await;
    assert_eq!(status, 400, "an empty client id: {body}");
    let long = "x".repeat(300);
    let (status, _) = e.get(&format!("/v1/topology?client={long}")).await;
    assert_eq!(status, 400, "an overlong client id");
    // The service is unharmed.
    let (status, _) = e.get("/v1/topology?client=ok-1").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_failing_during_the_drain_abandons_the_switchover_for_a_failover() {
    let mut nodes = nodes(3).await;
    let s = setup(
        &nodes,
        "switchover: { token_env: TEST_DRAIN_TOKEN, drain_timeout: 5m }\n",
    );
    let e = Election::start(&s.config, &[TOKEN]);
    ready_cluster(&e).await;
    let stuck = FakeProxy::start(&e.url, "proxy-stuck", Ack::Never);
    wait_clients(&e, 1).await;
    let call = switchover(&e, r#"{"to": "node-2"}"#);
    stuck
        .wait_seen("the draining switchover", |t| t.switchover.is_some())
        .await;

    nodes[0].stop().await;
    let (status, body) = call.await.expect("switchover task");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("switchover_failed"), "{body}");
    // The failover picks by name (node-1), with the next epoch, and no draining state is left.
    let t = e
        .wait_for("the failover", LONG, |t| writer_name(t) == Some("node-1"))
        .await;
    assert_eq!(t.epoch, 2);
    assert!(t.switchover.is_none());
    assert_eq!(
        nodes[2].start_calls(),
        0,
        "the switchover target was not promoted"
    );
    stuck
        .wait_seen("the new writer", |t| writer_name(t) == Some("node-1"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_failing_after_the_drain_clears_the_draining_state() {
    let nodes = nodes(3).await;
    let s = setup(
        &nodes,
        "switchover: { token_env: TEST_DRAIN_TOKEN, drain_timeout: 5m }\n",
    );
    let e = Election::start(&s.config, &[TOKEN]);
    ready_cluster(&e).await;
    let p = FakeProxy::start(&e.url, "proxy-a", Ack::At);
    wait_clients(&e, 1).await;
    nodes[2]
        .state
        .fail_start
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let (status, body) = switchover(&e, r#"{"to": "node-2"}"#)
        .await
        .expect("switchover task");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("switchover_failed"), "{body}");
    assert_eq!(p.acks().len(), 1, "the drain happened first");
    let t = e.topology().await.expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (Some("node-0"), 1));
    assert!(t.switchover.is_none(), "draining state cleared");
    assert_eq!(recorded_epoch(&s.state), 1);
    p.wait_seen_after_draining("the draining state cleared", |t| t.switchover.is_none())
        .await;
    let seen = p.seen();
    let first_draining = seen
        .iter()
        .position(|(_, t)| t.switchover.is_some())
        .expect("saw draining");
    assert!(
        seen[first_draining..]
            .iter()
            .all(|(_, t)| writer_name(t) == Some("node-0") && t.epoch == 1),
        "{seen:#?}"
    );
    assert_eq!(
        metric(&e, "writer_election_switchovers_total{result=\"failed\"}").await,
        Some(1.0)
    );
}
