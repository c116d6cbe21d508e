//! `loadtest node` as real processes sharing one log file.

mod support;

use loadtest::node::log::{read_all, Line};
use loadtest::procs::{wait_for, Group};
use support::*;

#[tokio::test]
async fn a_write_on_one_node_appears_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let b = start_node(&mut g, "node-b", &log, &[]).await;

    let r = put(&a, "greeting", "hello", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["epoch"], 1);
    assert_eq!(body["seq"], 1);
    assert_eq!(r.header("x-writer-epoch"), Some("1"));

    let c = client();
    let got = wait_for("the write to reach node-b", WAIT, || {
        let c = c.clone();
        let url = format!("{b}/kv/greeting");
        async move { c.get(&url).await.ok().filter(|r| r.status == 200) }
    })
    .await
    .unwrap();
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

    let off = c.get(&format!("{a}/replication/offset")).await.unwrap();
    assert_eq!(off.json().unwrap()["offset"], 2);
    g.shutdown(WAIT);
}

#[tokio::test]
async fn a_lower_epoch_is_refused_after_a_higher_one_was_accepted_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let b = start_node(&mut g, "node-b", &log, &[]).await;

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

    let who = client()
        .get(&format!("{a}/whoami"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(who["name"], "node-a");
    assert_eq!(who["highest_epoch"], 4);
    assert_eq!(who["role"], "reader");

    let lines = read_all(&log).unwrap();
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
    g.shutdown(WAIT);
}

#[tokio::test]
async fn concurrent_writers_never_interleave_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let b = start_node(&mut g, "node-b", &log, &[]).await;

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
    let lines = read_all(&log).unwrap();
    assert_eq!(lines.len(), total);
    for (i, l) in lines.iter().enumerate() {
        match l {
            Line::Record(r) => assert_eq!(r.seq, i as u64 + 1, "seq must be the line number"),
            Line::Corrupt { reason, .. } => panic!("line {}: {reason}", i + 1),
        }
    }
    g.shutdown(WAIT);
}

#[tokio::test]
async fn readiness_can_be_switched_off_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let c = client();
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        200
    );
    let r = c.post(&format!("{a}/admin/ready"), "false").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        503
    );
    assert_eq!(c.get(&format!("{a}/health")).await.unwrap().status, 200);
    let r = c.post(&format!("{a}/admin/ready"), "maybe").await.unwrap();
    assert_eq!(r.status, 400);
    c.post(&format!("{a}/admin/ready"), "true\n").await.unwrap();
    assert_eq!(
        c.get(&format!("{a}/health/ready")).await.unwrap().status,
        200
    );
    g.shutdown(WAIT);
}

#[tokio::test]
async fn promotion_gates_writes_and_catches_up_past_the_lag() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    // An hour of lag: b applies nothing by tailing during this test.
    let b = start_node(
        &mut g,
        "node-b",
        &log,
        &[
            "--require-promotion",
            "--lag",
            "1h",
            "--promotion-delay",
            "50ms",
        ],
    )
    .await;
    let c = client();

    assert_eq!(put(&a, "k", "v1", Some(1)).await.status, 200);
    let r = put(&b, "k2", "x", Some(2)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"], "not_writer");
    assert_eq!(c.get(&format!("{b}/kv/k")).await.unwrap().status, 404);
    let dist = c
        .get(&format!("{b}/eclipse-datagrid/distributor"))
        .await
        .unwrap();
    assert_eq!(dist.text(), "false");

    let start = c
        .post(
            &format!("{b}/eclipse-datagrid/activate-distributor/start"),
            "",
        )
        .await
        .unwrap();
    assert_eq!(start.status, 200);
    let finish_url = format!("{b}/eclipse-datagrid/activate-distributor/finish");
    wait_for("promotion to finish", WAIT, || {
        let c = c.clone();
        let u = finish_url.clone();
        async move { c.post(&u, "").await.ok().filter(|r| r.text() == "true") }
    })
    .await
    .unwrap();
    let dist = c
        .get(&format!("{b}/eclipse-datagrid/distributor"))
        .await
        .unwrap();
    assert_eq!(dist.text(), "true");
    // Promotion caught up with the whole log despite the lag.
    let got = c.get(&format!("{b}/kv/k")).await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "v1");

    let r = put(&b, "k2", "x", Some(2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let who = c.get(&format!("{b}/whoami")).await.unwrap().json().unwrap();
    assert_eq!(who["role"], "writer");
    assert_eq!(who["promoted"], true);
    g.shutdown(WAIT);
}

#[tokio::test]
async fn sigterm_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let _a = start_node(&mut g, "node-a", &log, &[]).await;
    g.signal("node-a", loadtest::procs::SIGTERM).unwrap();
    let st = wait_for("node-a to exit", WAIT, || {
        let exited = g.reap();
        async move { exited.into_iter().next() }
    })
    .await
    .unwrap();
    assert!(st.1.success(), "exit status {:?}", st.1);
}

#[tokio::test]
async fn a_torn_line_left_by_a_dead_writer_is_sealed_and_skipped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    // What a writer killed in the middle of an append leaves behind.
    std::fs::File::create(&log)
        .unwrap()
        .write_all(br#"{"seq":1,"ts_ms":1,"node":"dead","epoch":1,"op":"put","key":"a","val"#)
        .unwrap();
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let b = start_node(&mut g, "node-b", &log, &[]).await;

    let r = put(&a, "k", "v", Some(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json().unwrap()["seq"],
        2,
        "the torn line keeps its number"
    );
    let lines = read_all(&log).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(matches!(lines[0], Line::Corrupt { line_no: 1, .. }));
    assert!(matches!(&lines[1], Line::Record(r) if r.key == "k" && r.seq == 2));

    let c = client();
    let got = wait_for("node-b to apply past the torn line", WAIT, || {
        let c = c.clone();
        let url = format!("{b}/kv/k");
        async move { c.get(&url).await.ok().filter(|r| r.status == 200) }
    })
    .await
    .unwrap();
    assert_eq!(got.text(), "v");
    let off = c.get(&format!("{b}/replication/offset")).await.unwrap();
    assert_eq!(off.json().unwrap()["offset"], 2);
    g.shutdown(WAIT);
}

#[tokio::test]
async fn a_stopped_node_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let a = start_node(&mut g, "node-a", &log, &[]).await;
    let b = start_node(&mut g, "node-b", &log, &[]).await;
    assert_eq!(put(&a, "k1", "v", Some(1)).await.status, 200);
    g.signal("node-a", loadtest::procs::SIGSTOP).unwrap();
    // An idle writer holds no lock on the stream: the new one writes at once.
    let r = put(&b, "k2", "v", Some(2)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    g.signal("node-a", loadtest::procs::SIGCONT).unwrap();
    let r = put(&a, "k3", "v", Some(1)).await;
    assert_eq!(
        r.status,
        409,
        "the resumed old writer is fenced: {}",
        r.text()
    );
    g.shutdown(WAIT);
}
