//! `loadtest node` as real processes sharing one log file. Nodes that several tests write to
//! directly run with `--no-promotion-needed`; the role tests below promote through each API.

mod support;

use loadtest::node::api::Api;
use loadtest::node::log::{read_all, Line};
use loadtest::procs::{wait_for, Group};
use support::*;

#[tokio::test]
async fn a_write_on_one_node_appears_on_the_other() {
    let mut s = SharedLog::new();
    let (a, b) = s.writers().await;

    let r = put(&a, "greeting", "hello", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["epoch"], 1);
    assert_eq!(body["seq"], 1);
    assert_eq!(r.header("x-writer-epoch"), Some("1"));

    let c = client();
    let got = get_ok("the write to reach node-b", &format!("{b}/kv/greeting")).await;
    assert_eq!(got.text(), "hello");
    assert_eq!(got.header("x-node"), Some("node-b"));

    // Delete on b (same epoch is fine), gone on a.
    let d = c
        .send(
            http::Method::DELETE,
            &format!("{b}/kv/greeting"),
            &[("X-Writer-Epoch", "1")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(d.status, 200, "{}", d.text());
    wait_for("the delete to reach node-a", WAIT, || {
        let c = c.clone();
        let url = format!("{a}/kv/greeting");
        async move { c.get(&url).await.ok().filter(|r| r.status == 404) }
    })
    .await
    .unwrap();

    assert_eq!(offset_of(&a).await, 2);
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn a_lower_epoch_is_refused_after_a_higher_one_was_accepted_elsewhere() {
    let mut s = SharedLog::new();
    let (a, b) = s.writers().await;

    assert_eq!(put(&a, "k", "old-writer", Some(3)).await.status, 200);
    assert_eq!(put(&b, "k", "new-writer", Some(4)).await.status, 200);
    // node-a has not necessarily tailed b's line yet: the check must catch up under the lock.
    let r = put(&a, "k", "stale", Some(3)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["error"], "stale_epoch");
    assert_eq!(body["request_epoch"], 3);
    assert_eq!(body["highest_epoch"], 4);

    // Missing and malformed epochs are client errors, not writes.
    let r = put(&a, "k", "no-epoch", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"], "missing_epoch");
    let r = client()
        .send(
            http::Method::PUT,
            &format!("{a}/kv/k"),
            &[("X-Writer-Epoch", "seven")],
            "x",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"], "invalid_epoch");

    let who = whoami(&a).await;
    assert_eq!(who["name"], "node-a");
    assert_eq!(who["highest_epoch"], 4);
    assert_eq!(who["role"], "reader");

    let lines = read_all(&s.log).unwrap();
    let epochs: Vec<(String, u64)> = lines
        .iter()
        .map(|l| match l {
            Line::Record(r) => (r.node.clone(), r.epoch),
            Line::Corrupt { reason, .. } => panic!("corrupt line: {reason}"),
        })
        .collect();
    assert_eq!(
        epochs,
        vec![("node-a".to_owned(), 3), ("node-b".to_owned(), 4)]
    );
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn concurrent_writers_never_interleave_lines() {
    let mut s = SharedLog::new();
    let (a, b) = s.writers().await;

    let mut tasks = Vec::new();
    for w in 0..8 {
        let url = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..40 {
                let r = put(&url, &format!("w{w}-{i}"), &"x".repeat(300), Some(1)).await;
                assert_eq!(r.status, 200, "{}", r.text());
                ok += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let lines = read_all(&s.log).unwrap();
    assert_eq!(lines.len(), total);
    for (i, l) in lines.iter().enumerate() {
        match l {
            Line::Record(r) => assert_eq!(r.seq, i as u64 + 1, "seq must be the line number"),
            Line::Corrupt { reason, .. } => panic!("line {}: {reason}", i + 1),
        }
    }
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn readiness_can_be_switched_off_and_on() {
    let mut s = SharedLog::new();
    let a = s.node("node-a", &[]).await;
    let c = client();
    let api_ready = format!("{a}{}", Api::Microstream.ready_path());
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        200
    );
    assert_eq!(c.get(&api_ready).await.unwrap().status, 200);
    let r = c.post(&format!("{a}/admin/ready"), "false").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        503
    );
    // As the storage node library answers an unready node.
    assert_eq!(c.get(&api_ready).await.unwrap().status, 500);
    assert_eq!(c.get(&format!("{a}/health")).await.unwrap().status, 200);
    let r = c.post(&format!("{a}/admin/ready"), "maybe").await.unwrap();
    assert_eq!(r.status, 400);
    c.post(&format!("{a}/admin/ready"), "true\n").await.unwrap();
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        200
    );
    assert_eq!(c.get(&api_ready).await.unwrap().status, 200);
    s.group.shutdown(WAIT);
}

/// PUT, POST and DELETE on `url`, each without and with an epoch header: all must be refused
/// as a node that is not the distributor refuses them.
async fn assert_every_write_refused_nad(url: &str, api: Api) {
    let c = client();
    for method in [http::Method::PUT, http::Method::POST, http::Method::DELETE] {
        for headers in [vec![], vec![("X-Writer-Epoch", "7")]] {
            let r = c
                .send(method.clone(), &format!("{url}/kv/k"), &headers, "v")
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{method} {headers:?}: {}", r.text());
            assert_eq!(r.header(api.nad_header()), Some("true"), "{api} {method}");
            assert_eq!(r.json().unwrap()["error"], "not_a_distributor");
        }
    }
}

fn log_lines(log: &std::path::Path) -> usize {
    if log.exists() {
        read_all(log).unwrap().len()
    } else {
        0
    }
}

#[tokio::test]
async fn every_api_refuses_writes_until_promoted_through_its_own_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::new();
    let c = client();
    for api in Api::ALL {
        let log = dir.path().join(format!("{api}.log"));
        let url = start_node(
            &mut g,
            api.as_str(),
            &log,
            &["--api", api.as_str(), "--promotion-delay", "50ms"],
        )
        .await;
        assert_every_write_refused_nad(&url, api).await;
        assert_eq!(log_lines(&log), 0, "{api}: a refused write reached the log");
        let dist = c
            .get(&format!("{url}{}", api.distributor_path()))
            .await
            .unwrap();
        assert_eq!(dist.status, 200, "{api}");
        assert_eq!(dist.text(), "false", "{api}");
        assert_eq!(dist.header("content-type"), Some("text/plain"));

        // Another generation's calls are not this node's API.
        for other in Api::ALL.into_iter().filter(|o| *o != api) {
            let wrong = if other.two_step_activation() {
                other.start_path()
            } else {
                other.activate_path()
            };
            let r = c.post(&format!("{url}{wrong}"), "").await.unwrap();
            assert_eq!(r.status, 404, "{api} answered {other}'s {wrong}");
        }

        promote(&url, api).await;
        let dist = c
            .get(&format!("{url}{}", api.distributor_path()))
            .await
            .unwrap();
        assert_eq!(dist.text(), "true", "{api}");
        let r = put(&url, "k", "value", Some(1)).await;
        assert_eq!(r.status, 200, "{api}: {}", r.text());
        assert_eq!(log_lines(&log), 1);

        let gauge = c
            .get(&format!("{url}{}", api.storage_bytes_path()))
            .await
            .unwrap();
        assert_eq!(gauge.status, 200, "{api}");
        assert!(
            gauge
                .text()
                .lines()
                .any(|l| l == "cluster_storage_used_bytes 6"),
            "{api}: key k + value 'value': {}",
            gauge.text()
        );
        assert!(gauge
            .text()
            .contains("# TYPE cluster_storage_used_bytes gauge"));
        assert_eq!(
            c.get(&format!("{url}{}", api.ready_path()))
                .await
                .unwrap()
                .status,
            200
        );
    }
    g.shutdown(WAIT);
}

#[tokio::test]
async fn the_legacy_activation_promotes_in_one_call() {
    let mut s = SharedLog::new();
    let api = Api::MicrostreamLegacy;
    let url = s.api_node("node-a", api, "200ms").await;
    let c = client();
    let t0 = std::time::Instant::now();
    let r = c
        .post(&format!("{url}{}", api.activate_path()), "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(200),
        "answered before the promotion took place"
    );
    // The answer alone is the promotion: no start/finish on this API.
    let dist = c
        .get(&format!("{url}{}", api.distributor_path()))
        .await
        .unwrap();
    assert_eq!(dist.text(), "true");
    assert_eq!(put(&url, "k", "v", Some(1)).await.status, 200);
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn promotion_gates_writes_and_catches_up_past_the_lag() {
    let mut s = SharedLog::new();
    let a = s.node("node-a", &["--no-promotion-needed"]).await;
    // An hour of lag: b applies nothing by tailing during this test.
    let b = s
        .node("node-b", &["--lag", "1h", "--promotion-delay", "50ms"])
        .await;
    let c = client();
    let api = Api::Microstream;

    assert_eq!(put(&a, "k", "v1", Some(1)).await.status, 200);
    let r = put(&b, "k2", "x", Some(2)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("microstream-nad"), Some("true"));
    assert_eq!(
        r.header("storagenode-nad"),
        None,
        "the MicroStream lines' name only"
    );
    assert_eq!(r.json().unwrap()["error"], "not_a_distributor");
    assert_eq!(c.get(&format!("{b}/kv/k")).await.unwrap().status, 404);

    let start = c
        .post(&format!("{b}{}", api.start_path()), "")
        .await
        .unwrap();
    assert_eq!(start.status, 200);
    // Started is not promoted: writes are still refused, finish is still false.
    assert_eq!(put(&b, "k2", "x", Some(2)).await.status, 400);
    let first = c
        .post(&format!("{b}{}", api.finish_path()), "")
        .await
        .unwrap();
    assert_eq!(first.text(), "false");
    let finish_url = format!("{b}{}", api.finish_path());
    wait_for("promotion to finish", WAIT, || {
        let c = c.clone();
        let u = finish_url.clone();
        async move { c.post(&u, "").await.ok().filter(|r| r.text() == "true") }
    })
    .await
    .unwrap();
    let dist = c
        .get(&format!("{b}{}", api.distributor_path()))
        .await
        .unwrap();
    assert_eq!(dist.text(), "true");
    // Promotion caught up with the whole log despite the lag.
    let got = c.get(&format!("{b}/kv/k")).await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "v1");

    let r = put(&b, "k2", "x", Some(2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let who = whoami(&b).await;
    assert_eq!(who["role"], "writer");
    assert_eq!(who["promoted"], true);
    assert_eq!(who["api"], "microstream");
    // Fencing still applies to the distributor.
    let r = put(&b, "k3", "x", Some(1)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "stale_epoch");
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn a_demoted_writer_refuses_writes_until_promoted_again() {
    let mut s = SharedLog::new();
    let api = Api::EclipseDatagrid;
    let url = s.api_node("node-a", api, "0s").await;
    let c = client();
    promote(&url, api).await;
    assert_eq!(put(&url, "k", "v1", Some(1)).await.status, 200);

    let r = c.post(&format!("{url}/admin/demote"), "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["was_distributor"], true);
    let dist = c
        .get(&format!("{url}{}", api.distributor_path()))
        .await
        .unwrap();
    assert_eq!(dist.text(), "false");
    assert_every_write_refused_nad(&url, api).await;
    assert_eq!(
        log_lines(&s.log),
        1,
        "only the write made before the demotion"
    );
    // Reads go on: the data is still there.
    assert_eq!(c.get(&format!("{url}/kv/k")).await.unwrap().text(), "v1");

    promote(&url, api).await;
    assert_eq!(put(&url, "k", "v2", Some(1)).await.status, 200);
    assert_eq!(log_lines(&s.log), 2);
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn a_backup_node_refuses_the_distributor_calls_and_every_write() {
    let mut s = SharedLog::new();
    let c = client();
    for api in [Api::Microstream, Api::MicrostreamLegacy] {
        let url = s
            .node(
                &format!("backup-{api}"),
                &["--api", api.as_str(), "--backup", "--promotion-delay", "0s"],
            )
            .await;
        let calls = if api.two_step_activation() {
            vec![api.start_path(), api.finish_path(), api.finish_path()]
        } else {
            vec![api.activate_path()]
        };
        for path in calls {
            let r = c.post(&format!("{url}{path}"), "").await.unwrap();
            assert_eq!(r.status, 400, "{api} {path}: {}", r.text());
        }
        let dist = c
            .get(&format!("{url}{}", api.distributor_path()))
            .await
            .unwrap();
        assert_eq!(dist.status, 400, "{api}: {}", dist.text());
        assert_every_write_refused_nad(&url, api).await;
        let who = whoami(&url).await;
        assert_eq!(who["backup"], true);
        assert_eq!(who["promoted"], false);
        // Still a replica: ready, and serving reads.
        assert_eq!(
            c.get(&format!("{url}{}", api.ready_path()))
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(log_lines(&s.log), 0);
    s.group.shutdown(WAIT);
}

#[test]
fn a_backup_that_needs_no_promotion_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(loadtest_bin())
        .args([
            "node",
            "--name",
            "n",
            "--listen",
            "127.0.0.1:1",
            "--backup",
            "--no-promotion-needed",
        ])
        .arg("--log")
        .arg(dir.path().join("log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-promotion-needed"), "{err}");
}

#[tokio::test]
async fn sigterm_stops_the_node() {
    let mut s = SharedLog::new();
    let _a = s.node("node-a", &[]).await;
    s.group.signal("node-a", loadtest::procs::SIGTERM).unwrap();
    let st = wait_for("node-a to exit", WAIT, || {
        let exited = s.group.reap();
        async move { exited.into_iter().next() }
    })
    .await
    .unwrap();
    assert!(st.1.success(), "exit status {:?}", st.1);
}

#[tokio::test]
async fn a_torn_line_left_by_a_dead_writer_is_sealed_and_skipped() {
    use std::io::Write;
    let mut s = SharedLog::new();
    // What a writer killed in the middle of an append leaves behind.
    std::fs::File::create(&s.log)
        .unwrap()
        .write_all(br#"{"seq":1,"ts_ms":1,"node":"dead","epoch":1,"op":"put","key":"a","val"#)
        .unwrap();
    let (a, b) = s.writers().await;

    let r = put(&a, "k", "v", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["seq"],
        2,
        "the torn line keeps its number"
    );
    assert_eq!(
        r.header("x-replication-offset"),
        Some("2"),
        "the torn line counts in the offset a reader needs"
    );
    let lines = read_all(&s.log).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(matches!(lines[0], Line::Corrupt { line_no: 1, .. }));
    assert!(matches!(&lines[1], Line::Record(r) if r.key == "k" && r.seq == 2));

    let got = get_ok("node-b to apply past the torn line", &format!("{b}/kv/k")).await;
    assert_eq!(got.text(), "v");
    assert_eq!(offset_of(&b).await, 2);
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn a_stopped_node_does_not_block_the_others() {
    let mut s = SharedLog::new();
    let (a, b) = s.writers().await;
    assert_eq!(put(&a, "k1", "v", Some(1)).await.status, 200);
    s.group.signal("node-a", loadtest::procs::SIGSTOP).unwrap();
    // An idle writer holds no lock on the stream: the new one writes at once.
    let r = put(&b, "k2", "v", Some(2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.group.signal("node-a", loadtest::procs::SIGCONT).unwrap();
    let r = put(&a, "k3", "v", Some(1)).await;
    assert_eq!(
        r.status,
        409,
        "the resumed old writer is fenced: {}",
        r.text()
    );
    s.group.shutdown(WAIT);
}

/// The offset a write reports is exactly the one at which a reader serves it: one less and the
/// reader does not have it. The lag is switched at runtime to hold the reader there.
#[tokio::test]
async fn a_write_reports_the_offset_a_reader_needs_and_the_lag_changes_at_runtime() {
    let mut s = SharedLog::new();
    let a = s.node("node-a", &["--no-promotion-needed"]).await;
    let b = s
        .node("node-b", &["--no-promotion-needed", "--lag", "1h"])
        .await;
    let c = client();
    let lag = c.get(&format!("{b}/admin/lag")).await.unwrap();
    assert_eq!(lag.json().unwrap()["lag_ms"], 3_600_000);

    let r = put(&a, "k1", "v1", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let n1: u64 = r.header("x-replication-offset").unwrap().parse().unwrap();
    assert_eq!(n1, 1);
    assert_eq!(offset_of(&a).await, n1, "the writer is at its own write");
    assert!(offset_of(&b).await < n1);
    assert_eq!(c.get(&format!("{b}/kv/k1")).await.unwrap().status, 404);

    let changed = set_lag(&b, "0s").await;
    assert_eq!(changed["was_ms"], 3_600_000);
    assert_eq!(changed["lag_ms"], 0);
    let got = get_ok(
        "node-b to catch up once its lag is gone",
        &format!("{b}/kv/k1"),
    )
    .await;
    assert_eq!(got.text(), "v1");
    assert_eq!(offset_of(&b).await, n1);

    set_lag(&b, "1h").await;
    let r = put(&a, "k2", "v2", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let n2: u64 = r.header("x-replication-offset").unwrap().parse().unwrap();
    assert_eq!(n2, n1 + 1);
    // Time for the tailer to have read the line (it polls every few ms): held back, not missed.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(offset_of(&b).await, n2 - 1, "one short of the write");
    assert_eq!(c.get(&format!("{b}/kv/k2")).await.unwrap().status, 404);
    set_lag(&b, "0s").await;
    get_ok("node-b to reach the second write", &format!("{b}/kv/k2")).await;
    assert_eq!(offset_of(&b).await, n2);

    let bad = c.post(&format!("{b}/admin/lag"), "soon").await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json().unwrap()["error"], "invalid_body");
    s.group.shutdown(WAIT);
}
