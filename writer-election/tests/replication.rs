//! Replication progress end to end: the writer-election binary against stand-in nodes whose
//! `/replication/offset` the tests set, read back over /v1/topology and /metrics.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::cluster::*;
use writer_election::client::fetch_topology;
use writer_election::topology::{Replication, Topology};

const LONG: Duration = Duration::from_secs(60);
const PROGRESS: &str =
    "election: { progress: { path: /replication/offset, json_pointer: /offset, interval: 200ms } }\n";

struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(nodes: &[TestNode], extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("election.yaml");
    std::fs::write(
        &config,
        static_config(nodes, &dir.path().join("election-state.json"), extra),
    )
    .expect("write config");
    Setup { _dir: dir, config }
}

fn node<'a>(r: &'a Replication, name: &str) -> &'a writer_election::topology::NodeProgress {
    r.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {r:#?}"))
}

async fn metric(e: &Election, key: &str) -> f64 {
    e.metric(key).await.unwrap_or(0.0)
}

/// Polls /metrics until `key` is at least `min`.
async fn wait_metric(e: &Election, key: &str, min: f64) {
    test_kit::wait::until(&format!("{key} >= {min}"), LONG, || async {
        metric(e, key).await >= min
    })
    .await;
}

const ROUNDS_OK: &str = r#"writer_election_progress_rounds_total{result="ok"}"#;
const ROUNDS_UNREADABLE: &str =
    r#"writer_election_progress_rounds_total{result="writer_unreadable"}"#;

/// Moves `node`'s offset up by one every `every` until the returned task is aborted.
fn keep_writing(node: &TestNode, every: Duration) -> tokio::task::JoinHandle<()> {
    let state = node.state.clone();
    tokio::spawn(async move {
        loop {
            state.offset.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_offsets_and_a_lag_that_grows_behind_a_moving_writer() {
    let nodes = nodes(3).await;
    for n in &nodes {
        n.set_offset(100);
    }
    let s = setup(&nodes, PROGRESS);
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("all three nodes measured level", LONG, |t| {
            writer_name(t) == Some("node-0")
                && t.replication.as_ref().is_some_and(|r| r.nodes.len() == 3)
        })
        .await;
    let r = t.replication.unwrap();
    assert_eq!(r.epoch, t.epoch);
    assert_eq!(r.writer_offset, 100);
    for n in &r.nodes {
        assert_eq!(
            (n.offset, n.lag_offsets, n.lag_ms, n.lag_at_least),
            (100, 0, 0, false),
            "{n:?}"
        );
    }

    // node-1 is ahead (read after the writer), node-2 stays at 100 while the writer moves on.
    nodes[1].set_offset(1_000_000);
    let writing = keep_writing(&nodes[0], Duration::from_millis(20));
    let mut seen: Vec<Replication> = Vec::new();
    while seen.len() < 4 {
        let t = e
            .wait_for("a newer measurement with the writer past 100", LONG, |t| {
                t.replication.as_ref().is_some_and(|r| {
                    r.writer_offset > 100
                        && seen
                            .last()
                            .is_none_or(|l| r.measured_at_ms > l.measured_at_ms)
                })
            })
            .await;
        seen.push(t.replication.unwrap());
    }
    writing.abort();
    for r in &seen {
        let w = node(r, "node-0");
        assert_eq!((w.offset, w.lag_offsets, w.lag_ms), (r.writer_offset, 0, 0));
        let ahead = node(r, "node-1");
        assert_eq!(
            (ahead.offset, ahead.lag_offsets, ahead.lag_ms),
            (1_000_000, 0, 0)
        );
        let behind = node(r, "node-2");
        assert_eq!(behind.offset, 100);
        assert_eq!(behind.lag_offsets, r.writer_offset - 100);
        assert!(behind.lag_ms > 0, "{behind:?}");
        assert!(
            !behind.lag_at_least,
            "the history holds the writer at 100: {r:#?}"
        );
    }
    let lags: Vec<u64> = seen.iter().map(|r| node(r, "node-2").lag_ms).collect();
    assert!(
        lags.windows(2).all(|w| w[1] > w[0]),
        "node-2's lag grows while it stays behind: {lags:?}"
    );

    let (_, text) = e.get("/metrics").await;
    let m = parse_metrics(&text);
    assert!(m.contains_key(r#"writer_election_replication_writer_offset{node="node-0"}"#));
    assert!(
        m.get(r#"writer_election_replication_lag_offsets{node="node-2"}"#)
            .is_some_and(|v| *v > 0.0),
        "{text}"
    );
    assert!(
        m.get(r#"writer_election_replication_lag_seconds{node="node-2"}"#)
            .is_some_and(|v| *v > 0.0),
        "{text}"
    );
    assert!(m.get(ROUNDS_OK).is_some_and(|v| *v >= 4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_moves_at_most_once_per_round() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, PROGRESS);
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("measured", LONG, |t| {
            all_ready(t, 3) && t.replication.as_ref().is_some_and(|r| r.nodes.len() == 3)
        })
        .await;
    // Every node's offset changes all the time, far more often than the rounds run.
    let writers: Vec<_> = nodes
        .iter()
        .map(|n| keep_writing(n, Duration::from_millis(2)))
        .collect();
    let rounds_before = metric(&e, ROUNDS_OK).await;
    let mut revision = t.revision;
    let mut revisions = 0u32;
    let mut rounds = 0.0;
    while rounds < 10.0 {
        let t = fetch_topology(&e.url, Some(revision), Some(Duration::from_secs(10)))
            .await
            .expect("topology");
        if t.revision != revision {
            revisions += 1;
            revision = t.revision;
        }
        rounds = metric(&e, ROUNDS_OK).await - rounds_before;
    }
    for w in writers {
        w.abort();
    }
    // One round may have been under way when counting began, and one publishes after its count.
    assert!(
        f64::from(revisions) <= rounds + 2.0,
        "{revisions} revisions in {rounds} rounds"
    );
    assert!(
        f64::from(revisions) >= rounds / 2.0,
        "every round with new offsets publishes: {revisions} revisions in {rounds} rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_writer_keeps_the_last_measurement_of_its_epoch() {
    let nodes = nodes(3).await;
    for (i, n) in nodes.iter().enumerate() {
        n.set_offset(50 - i as u64 * 10);
    }
    let s = setup(&nodes, PROGRESS);
    let e = Election::start(&s.config, &[]);
    e.wait_for("measured", LONG, |t| {
        t.replication.as_ref().is_some_and(|r| r.nodes.len() == 3)
    })
    .await;

    nodes[0].set_offset_fails(true);
    let unreadable = metric(&e, ROUNDS_UNREADABLE).await;
    // A round finds the writer unreadable.
    wait_metric(&e, ROUNDS_UNREADABLE, unreadable + 1.0).await;
    let kept = e.topology().await.expect("topology");
    let kept_rep = kept
        .replication
        .clone()
        .expect("the last measurement stays");
    assert_eq!(kept_rep.writer_offset, 50);
    let now = metric(&e, ROUNDS_UNREADABLE).await;
    // Three more rounds without the writer.
    wait_metric(&e, ROUNDS_UNREADABLE, now + 3.0).await;
    let later = e.topology().await.expect("topology");
    assert_eq!(later.replication, Some(kept_rep.clone()));
    assert_eq!(later.revision, kept.revision, "nothing new to publish");

    nodes[0].set_offset_fails(false);
    nodes[0].set_offset(60);
    let t = e
        .wait_for("measured again", LONG, |t| {
            t.replication
                .as_ref()
                .is_some_and(|r| r.measured_at_ms > kept_rep.measured_at_ms)
        })
        .await;
    let r = t.replication.unwrap();
    assert_eq!(r.writer_offset, 60);
    assert_eq!(node(&r, "node-2").lag_offsets, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_only_the_new_writer_is_compared() {
    let mut nodes = nodes(3).await;
    nodes[0].set_offset(500);
    nodes[1].set_offset(300);
    nodes[2].set_offset(200);
    let s = setup(&nodes, PROGRESS);
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("measured at epoch 1", LONG, |t| {
            t.replication.as_ref().is_some_and(|r| r.nodes.len() == 3)
        })
        .await;
    assert_eq!(t.epoch, 1);
    assert_eq!(t.replication.unwrap().writer_offset, 500);

    nodes[0].stop().await;
    let mixed: Arc<Mutex<Vec<Topology>>> = Arc::default();
    let t = e
        .wait_for("node-1 writer and measured at epoch 2", LONG, |t| {
            if t.epoch != 1 && t.replication.as_ref().is_some_and(|r| r.epoch != t.epoch) {
                mixed.lock().unwrap().push(t.clone());
            }
            writer_name(t) == Some("node-1") && t.replication.as_ref().is_some_and(|r| r.epoch == 2)
        })
        .await;
    assert!(
        mixed.lock().unwrap().is_empty(),
        "a document published another epoch's offsets: {:#?}",
        mixed.lock().unwrap()
    );
    let r = t.replication.unwrap();
    assert_eq!(t.epoch, 2);
    assert_eq!(r.writer_offset, 300);
    assert!(r.nodes.iter().all(|n| n.name != "node-0"), "{r:#?}");
    let behind = node(&r, "node-2");
    assert_eq!(behind.lag_offsets, 100);
    assert!(
        behind.lag_at_least,
        "the new writer's history never was at 200: {r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_election_progress_there_is_no_replication_key() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("all ready", LONG, |t| all_ready(t, 3)).await;
    // Long enough for several rounds at the default interval (probe.interval), had any run.
    let probes = nodes[2].state.probes.load(Ordering::SeqCst);
    support::wait_until(LONG, "five more probes of node-2", || {
        nodes[2].state.probes.load(Ordering::SeqCst) >= probes + 5
    })
    .await;
    let (status, body) = e.get("/v1/topology").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(doc.get("writer").is_some_and(|w| w.is_object()), "{body}");
    assert!(doc.get("replication").is_none(), "{body}");
    assert!(nodes.iter().all(|n| n.offset_calls() == 0));
    let (_, text) = e.get("/metrics").await;
    assert!(
        !text.contains("writer_election_replication_lag_offsets{"),
        "{text}"
    );
}
