//! Static mode end to end: the writer-election binary against three real HTTP nodes on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use writer_election::client::fetch_topology;
use writer_election::topology::Role;

const LONG: Duration = Duration::from_secs(60);

struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    state: std::path::PathBuf,
}

fn setup(nodes: &[TestNode], extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("election-state.json");
    let config = dir.path().join("election.yaml");
    std::fs::write(&config, static_config(nodes, &state, extra)).expect("write config");
    Setup {
        _dir: dir,
        config,
        state,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_by_name_fails_over_and_keeps_the_old_writer_a_reader() {
    let mut nodes = nodes(3).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);

    let t = e
        .wait_for("node-0 is the writer at epoch 1", LONG, |t| {
            writer_name(t) == Some("node-0")
        })
        .await;
    assert_eq!(t.epoch, 1);
    assert!(
        nodes[0].promoted(),
        "the writer was promoted before it was published"
    );
    assert_eq!(t.writer.as_ref().unwrap().address, nodes[0].address());
    let t = e
        .wait_for("all nodes ready", LONG, |t| all_ready(t, 3))
        .await;
    let readers: Vec<_> = t.readers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(readers, vec!["node-1", "node-2"]);

    // The writer dies (refused): node-1 takes over with the next epoch.
    nodes[0].stop().await;
    let t = e
        .wait_for("node-1 is the writer", LONG, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    assert_eq!(t.epoch, 2);
    assert!(nodes[1].promoted());
    assert!(!t.readers.iter().any(|r| r.name == "node-0"));

    // The old writer comes back: it is a reader, the writer stays.
    let promotions_of_node0 = nodes[0].start_calls();
    nodes[0].restart().await;
    let t = e
        .wait_for("node-0 ready again", LONG, |t| {
            t.nodes.iter().any(|n| n.name == "node-0" && n.ready)
        })
        .await;
    assert_eq!(writer_name(&t), Some("node-1"));
    assert_eq!(t.epoch, 2);
    let n0 = t.nodes.iter().find(|n| n.name == "node-0").unwrap();
    assert_eq!(n0.role, Role::Reader);
    assert!(t.readers.iter().any(|r| r.name == "node-0"));
    assert_eq!(
        nodes[0].start_calls(),
        promotions_of_node0,
        "the restarted old writer is not promoted again"
    );

    // Metrics say what happened.
    let (status, text) = e.get("/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    assert_eq!(m.get("writer_election_epoch"), Some(&2.0));
    assert_eq!(
        m.get("writer_election_failovers_total{reason=\"initial\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("writer_election_failovers_total{reason=\"writer-unready\"}"),
        Some(&1.0)
    );
    assert_eq!(m.get("writer_election_is_leader"), Some(&1.0));
    assert_eq!(
        m.get("writer_election_node_ready{node=\"node-0\"}"),
        Some(&1.0)
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("writer_election_probe_duration_seconds_bucket")));
    // The standard process series, of the election process (not of this test).
    test_kit::process::assert_process_metrics(
        &text,
        "writer_election",
        env!("WRITER_ELECTION_COMMIT"),
        env!("CARGO_PKG_VERSION"),
    );
}

#[test]
fn version_names_the_version_and_the_commit() {
    assert_eq!(
        test_kit::process::version_line(&binary()),
        format!(
            "writer-election {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("WRITER_ELECTION_COMMIT")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_writer_is_replaced_after_the_failure_threshold() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 is the writer", LONG, |t| {
        writer_name(t) == Some("node-0")
    })
    .await;
    e.wait_for("all nodes ready", LONG, |t| all_ready(t, 3))
        .await;
    nodes[0].set_hang(true);
    let t = e
        .wait_for("node-1 replaces the hung writer", LONG, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    assert_eq!(t.epoch, 2);
    // Unready (not hung) readers drop out of the readers, the writer stays.
    nodes[2].set_ready(false);
    let t = e
        .wait_for("node-2 unready", LONG, |t| {
            t.nodes.iter().any(|n| n.name == "node-2" && !n.ready)
        })
        .await;
    assert_eq!(writer_name(&t), Some("node-1"));
    assert!(t.readers.iter().all(|r| r.name != "node-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_writer_and_epoch_from_the_state_file() {
    let mut nodes = nodes(3).await;
    let s = setup(&nodes, "");
    let mut e = Election::start(&s.config, &[]);
    e.wait_for("node-0 is the writer", LONG, |t| {
        writer_name(t) == Some("node-0")
    })
    .await;
    nodes[0].stop().await;
    e.wait_for("node-1 is the writer", LONG, |t| {
        writer_name(t) == Some("node-1")
    })
    .await;
    nodes[0].restart().await;
    e.wait_for("all ready", LONG, |t| all_ready(t, 3)).await;

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.state).expect("state file")).expect("json");
    assert_eq!(state["epoch"], 2);
    assert_eq!(state["holder"]["name"], "node-1");
    assert_eq!(state["active"], true);

    // Crash and restart: node-0 would win by name, but the recorded writer is kept.
    e.kill();
    let promotions_before = nodes[1].start_calls();
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("a writer is published", LONG, |t| t.writer.is_some())
        .await;
    assert_eq!(writer_name(&t), Some("node-1"));
    assert_eq!(t.epoch, 2);
    let t = e.wait_for("all ready", LONG, |t| all_ready(t, 3)).await;
    assert_eq!(writer_name(&t), Some("node-1"));
    assert_eq!(t.epoch, 2);
    assert_eq!(
        nodes[1].start_calls(),
        promotions_before,
        "no re-promotion on restart"
    );
    let (status, _) = e.get("/health/ready").await;
    assert_eq!(status, 200);

    // The next failover continues the epoch sequence.
    nodes[1].stop().await;
    let t = e
        .wait_for("node-0 is the writer", LONG, |t| {
            writer_name(t) == Some("node-0")
        })
        .await;
    assert_eq!(t.epoch, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_start() {
    let nodes = nodes(1).await;
    let s = setup(&nodes, "");
    std::fs::write(&s.state, "{\"version\":1,\"epoch\":").unwrap();
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&s.config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains(&s.state.display().to_string()), "{err}");
    // The file is left as it was for the operator to inspect.
    assert_eq!(
        std::fs::read_to_string(&s.state).unwrap(),
        "{\"version\":1,\"epoch\":"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_wakes_on_a_change() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    let t = e.wait_for("all ready", LONG, |t| all_ready(t, 3)).await;
    assert!(t.revision > 0);

    // Nothing changes: the query is held for `wait`, then answers with the same revision.
    let started = Instant::now();
    let same = fetch_topology(&e.url, Some(t.revision), Some(Duration::from_millis(500)))
        .await
        .expect("blocking query");
    if same.revision == t.revision {
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "held for `wait`"
        );
    } else {
        // Something did change meanwhile (a busy machine can fail a probe): a newer document.
        assert!(same.revision > t.revision);
    }

    // A change while a long query is open answers it at once (well before its wait).
    let long_query = |rev: u64| {
        let url = e.url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = fetch_topology(&url, Some(rev), Some(Duration::from_secs(120))).await;
            (r.expect("blocking query answer"), started.elapsed())
        })
    };
    let q = long_query(same.revision.max(t.revision));
    // Let the query reach the server before the change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes[2].set_ready(false);
    let (mut t2, took) = q.await.expect("join");
    assert!(t2.revision > same.revision.max(t.revision));
    assert!(
        took < Duration::from_secs(100),
        "woken by the change, not by the wait"
    );
    let deadline = Instant::now() + LONG;
    while !t2.nodes.iter().any(|n| n.name == "node-2" && !n.ready) {
        // Another change came first (a busy machine can fail a probe) and woke it just as
        // well: node-2's own change must wake the next query the same way.
        assert!(Instant::now() < deadline, "node-2 never published unready");
        let (next, took) = long_query(t2.revision).await.expect("join");
        assert!(next.revision > t2.revision);
        assert!(
            took < Duration::from_secs(100),
            "woken by the change, not by the wait"
        );
        t2 = next;
    }

    // An `after` from another replica or an earlier process (above ours) answers at once.
    let t3 = fetch_topology(&e.url, Some(u64::MAX - 1), Some(Duration::from_secs(120)))
        .await
        .expect("resync");
    assert!(t3.revision < u64::MAX - 1);

    // Malformed queries are 400 with a JSON error.
    let (status, body) = e.get("/v1/topology?after=abc").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""));
    let (status, _) = e.get("/v1/topology?after=1&wait=soon").await;
    assert_eq!(status, 400);
    let (status, _) = e.get("/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_needs_the_token_and_a_ready_target() {
    let nodes = nodes(3).await;
    let s = setup(&nodes, "switchover: { token_env: TEST_SWITCHOVER_TOKEN }\n");
    let e = Election::start(&s.config, &[("TEST_SWITCHOVER_TOKEN", "s3cret")]);
    e.wait_for("all ready", LONG, |t| {
        all_ready(t, 3) && writer_name(t) == Some("node-0")
    })
    .await;
    let url = format!("{}/v1/switchover", e.url);
    let body = r#"{"to": "node-2"}"#;

    let (status, resp) = http_call("POST", &url, &[], body).await;
    assert_eq!(status, 401, "{resp}");
    let (status, _) = http_call("POST", &url, &[("authorization", "Bearer wrong")], body).await;
    assert_eq!(status, 401);
    let (status, _) = http_call("POST", &url, &[("authorization", "Basic s3cret")], body).await;
    assert_eq!(status, 401);
    assert_eq!(
        e.topology().await.map(|t| t.epoch),
        Some(1),
        "nothing changed"
    );

    let auth = [("authorization", "Bearer s3cret")];
    let (status, resp) = http_call("POST", &url, &auth, r#"{"to": "node-9"}"#).await;
    assert_eq!(status, 409, "{resp}");
    nodes[1].set_ready(false);
    e.wait_for("node-1 unready", LONG, |t| {
        t.nodes.iter().any(|n| n.name == "node-1" && !n.ready)
    })
    .await;
    let (status, resp) = http_call("POST", &url, &auth, r#"{"to": "node-1"}"#).await;
    assert_eq!(status, 409, "{resp}");
    let (status, resp) = http_call("POST", &url, &auth, r#"{"too": "node-2"}"#).await;
    assert_eq!(status, 400, "unknown keys are rejected: {resp}");
    let (status, _) = http_call("POST", &url, &auth, "{not json").await;
    assert_eq!(status, 400);

    let (status, resp) = http_call("POST", &url, &auth, body).await;
    assert_eq!(status, 200, "{resp}");
    let t: writer_election::topology::Topology = serde_json::from_str(&resp).expect("topology");
    assert_eq!(writer_name(&t), Some("node-2"));
    assert_eq!(t.epoch, 2);
    assert!(nodes[2].promoted());
    assert_eq!(
        e.topology().await.and_then(|t| t.writer).map(|w| w.name),
        Some("node-2".into())
    );

    // To the writer itself: nothing to do.
    let (status, resp) = http_call("POST", &url, &auth, body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(e.topology().await.map(|t| t.epoch), Some(2));

    // `{}`: the best ready candidate other than the writer (node-1 is unready -> node-0).
    let (status, resp) = http_call("POST", &url, &auth, "{}").await;
    assert_eq!(status, 200, "{resp}");
    let t: writer_election::topology::Topology = serde_json::from_str(&resp).expect("topology");
    assert_eq!(writer_name(&t), Some("node-0"));
    assert_eq!(t.epoch, 3);

    let (_, text) = e.get("/metrics").await;
    let m = parse_metrics(&text);
    assert_eq!(
        m.get("writer_election_failovers_total{reason=\"switchover\"}"),
        Some(&2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_without_a_configured_token_is_forbidden() {
    let nodes = nodes(2).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("writer", LONG, |t| t.writer.is_some()).await;
    let url = format!("{}/v1/switchover", e.url);
    let (status, body) = http_call("POST", &url, &[("authorization", "Bearer x")], "{}").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("switchover_disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_promotion_moves_on_to_the_next_candidate() {
    let nodes = nodes(3).await;
    nodes[0]
        .state
        .fail_start
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("node-1 is the writer", LONG, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    // node-0 was never recorded: node-1 gets epoch 1, not 2.
    assert_eq!(t.epoch, 1);
    assert!(!nodes[0].promoted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_candidate_means_no_writer_and_the_writer_is_reinstated_when_back() {
    let mut nodes = nodes(2).await;
    let s = setup(&nodes, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 writer, all ready", LONG, |t| {
        writer_name(t) == Some("node-0") && all_ready(t, 2)
    })
    .await;
    nodes[1].set_ready(false);
    e.wait_for("node-1 unready", LONG, |t| {
        t.nodes.iter().any(|n| n.name == "node-1" && !n.ready)
    })
    .await;
    nodes[0].stop().await;
    let t = e.wait_for("no writer", LONG, |t| t.writer.is_none()).await;
    assert_eq!(t.epoch, 1, "no new epoch without a new writer");
    nodes[0].restart().await;
    let t = e
        .wait_for("node-0 reinstated", LONG, |t| {
            writer_name(t) == Some("node-0")
        })
        .await;
    assert_eq!(t.epoch, 1);
    assert!(nodes[0].promoted(), "re-promoted after its restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_caught_up_elects_the_highest_offset() {
    let mut nodes = nodes(3).await;
    let s = setup(
        &nodes,
        "election: { candidate_order: most_caught_up, progress: { path: /replication/offset, json_pointer: /offset } }\n",
    );
    nodes[0]
        .state
        .offset
        .store(10, std::sync::atomic::Ordering::SeqCst);
    nodes[1]
        .state
        .offset
        .store(5, std::sync::atomic::Ordering::SeqCst);
    nodes[2]
        .state
        .offset
        .store(7, std::sync::atomic::Ordering::SeqCst);
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 writer", LONG, |t| writer_name(t) == Some("node-0"))
        .await;
    e.wait_for("all ready", LONG, |t| all_ready(t, 3)).await;
    nodes[0].stop().await;
    let t = e
        .wait_for("node-2 (offset 7) is the writer", LONG, |t| {
            writer_name(t) == Some("node-2")
        })
        .await;
    assert_eq!(t.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let nodes = nodes(1).await;
    let s = setup(&nodes, "");
    let mut e = Election::start(&s.config, &[]);
    e.wait_for("writer", LONG, |t| t.writer.is_some()).await;
    // An open blocking query must not hold the shutdown up.
    let url = e.url.clone();
    let rev = e.topology().await.map(|t| t.revision).unwrap_or(0);
    let q = tokio::spawn(async move {
        fetch_topology(&url, Some(rev), Some(Duration::from_secs(120))).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = e.terminate().expect("exit status");
    assert!(status.success(), "{status:?}");
    let _ = q.await;
}

#[test]
fn check_validates_and_names_the_key() {
    let good = "discovery: { static: { nodes: [ { name: a, address: \"127.0.0.1:1\" } ] } }\n\
                state: { file: ./s.json }\n";
    let out = test_kit::process::check_config_text(&binary(), good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = format!("{good}probe: {{ timeout: fast }}\n");
    let out = test_kit::process::check_config_text(&binary(), &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("probe.timeout"), "{err}");

    for shipped in ["election.yaml", "local-election.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config")
            .join(shipped);
        let out = test_kit::process::check_config(&binary(), &path);
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--log-format"));
}
