//! `loadtest run` against a real demo node.

mod support;

use std::collections::HashMap;
use std::process::Command;

use loadtest::node::log::{read_all, Line};
use loadtest::procs::{free_port, Group};
use loadtest::run::history::read_jsonl;
use support::*;

fn run_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(loadtest_bin())
        .arg("run")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Starts one node (taking writes without an election: the generator writes to it directly),
/// runs `loadtest run --url <node> ARGS EXTRA --json` against it (ARGS split on whitespace,
/// EXTRA as is), stops the node.
async fn run_against_a_node(args: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut g = Group::new();
    let url = start_node(&mut g, "node-a", &log, &["--no-promotion-needed"]).await;
    let args: Vec<String> = ["--url", &url]
        .into_iter()
        .chain(args.split_whitespace())
        .chain(extra.iter().copied())
        .map(str::to_owned)
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_json(&args)
    })
    .await
    .unwrap();
    g.shutdown(WAIT);
    out
}

#[tokio::test]
async fn closed_loop_history_matches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let hist = dir.path().join("history.jsonl");
    let mut g = Group::new();
    // The load generator writes to the node directly, with no election to promote it.
    let a = start_node(&mut g, "node-a", &log, &["--no-promotion-needed"]).await;

    let (code, report) = tokio::task::spawn_blocking({
        let a = a.clone();
        let hist = hist.clone();
        move || {
            run_json(&[
                "--url",
                &a,
                "--connections",
                "4",
                "--duration",
                "1s",
                "--read-ratio",
                "0.5",
                "--keys",
                "50",
                "--value-size",
                "32",
                "--header",
                "X-Writer-Epoch: 1",
                "--unique-write-keys",
                "--history",
                hist.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "closed");
    assert_eq!(report["connections"], 4);
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["write_errors"], 0, "{report}");
    assert_eq!(report["read_errors"], 0, "{report}");
    let writes = report["ok_writes"].as_u64().unwrap();
    assert!(writes > 0, "{report}");
    assert!(report["latency"]["all"]["p99_us"].as_u64().unwrap() > 0);

    let history = read_jsonl(&hist).unwrap();
    assert_eq!(history.len() as u64, writes);
    let logged: HashMap<String, (String, u64)> = read_all(&log)
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            Line::Record(r) => Some((r.key, (r.value.unwrap_or_default(), r.epoch))),
            Line::Corrupt { .. } => None,
        })
        .collect();
    for w in &history {
        assert!(w.acked(), "{w:?}");
        assert_eq!(w.epoch, Some(1));
        assert_eq!(w.node.as_deref(), Some("node-a"));
        assert_eq!(w.value.len(), 32);
        assert!(w.sent_us <= w.ack_us);
        assert_eq!(logged.get(&w.key), Some(&(w.value.clone(), 1)), "{w:?}");
    }
    g.shutdown(WAIT);
}

#[tokio::test]
async fn open_loop_sends_exactly_the_scheduled_requests() {
    let (code, report) = run_against_a_node(
        "--rate 200 --connections 8 --duration 1s --read-ratio 1 --prefill --keys 20",
        &["--header", "X-Writer-Epoch: 1"],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "open");
    assert_eq!(report["rate"], 200.0);
    // Indices 0..199 have intended times in [0, 1s).
    assert_eq!(report["requests"], 200, "{report}");
    assert_eq!(
        report["ok_reads"], 200,
        "prefilled: every read finds its key"
    );
    assert_eq!(report["ok_writes"], 0);
}

#[tokio::test]
async fn open_loop_reports_its_own_lateness_apart_and_it_is_small() {
    let (code, report) = run_against_a_node(
        "--rate 200 --connections 8 --duration 2s --read-ratio 1 --keys 20",
        &[],
    )
    .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["latency"]["from"], "schedule", "{report}");
    let late = &report["schedule_lateness"];
    assert_eq!(
        late["count"], 400,
        "every scheduled request counts: {report}"
    );
    let p50 = late["p50_us"].as_u64().unwrap();
    // On tokio's 1 ms timer alone the median send is ~1 ms late (the deadline is rounded up to
    // the next tick), so anything near 1 ms means the precise wake-up is not working. Measured
    // on a quiet machine: tens of µs. The bound leaves room for a shared 2-core VM running
    // other tests (the server, the generator and cargo compete for the CPU; a descheduled
    // thread is late by a scheduler slice) while still failing on a 1 ms timer.
    assert!(p50 < 300, "schedule lateness p50 {p50} µs: {report}");
    // The total is measured from the schedule, so it includes the lateness: at the median it
    // cannot be below it.
    assert!(
        report["latency"]["all"]["p50_us"].as_u64().unwrap() >= p50,
        "{report}"
    );
}

#[tokio::test]
async fn closed_loop_has_no_schedule_lateness() {
    let (code, report) =
        run_against_a_node("--connections 2 --duration 300ms --read-ratio 1", &[]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["latency"]["from"], "send", "{report}");
    assert!(report.get("schedule_lateness").is_none(), "{report}");
}

#[tokio::test]
async fn nothing_listening_counts_connect_errors_and_exits_non_zero() {
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let (code, report) = tokio::task::spawn_blocking(move || {
        run_json(&["--url", &url, "--connections", "2", "--duration", "300ms"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{report}");
    assert!(
        report["errors"]["connect"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["latency"]["all"]["count"], 0);
}

#[test]
fn bad_flags_are_named() {
    let out = Command::new(loadtest_bin())
        .args(["run", "--url", "http://127.0.0.1:1", "--read-ratio", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--read-ratio"), "{err}");
    for (args, named) in [
        (&["--read-your-writes", "--pairs", "0"][..], "--pairs"),
        (
            &["--read-your-writes", "--read-delay", "1s..0s"][..],
            "--read-delay",
        ),
        (&["--pairs", "5"][..], "--read-your-writes"),
        (&["--read-your-writes=maybe"][..], "--read-your-writes"),
    ] {
        let out = Command::new(loadtest_bin())
            .args(["run", "--url", "http://127.0.0.1:1"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn read_your_writes_pairs_read_back_every_write_of_their_own() {
    let (code, report) = run_against_a_node(
        "--connections 3 --duration 20s --read-your-writes --pairs 60 --read-delay 0ms..5ms",
        &["--header", "X-Writer-Epoch: 1"],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    let p = &report["read_your_writes"];
    assert_eq!(p["token"], "on", "{report:#}");
    assert_eq!(p["checked"], 60, "{report:#}");
    assert_eq!(p["fresh"], 60, "a single node has every write: {report:#}");
    assert_eq!(p["stale"], 0, "{report:#}");
    assert_eq!(p["tokens_issued"], 0, "a node issues no token: {report:#}");
    assert_eq!(p["reads_by_node"], serde_json::json!({"node-a": 60}));
    assert_eq!(report["ok_writes"], 60);
    assert_eq!(report["ok_reads"], 60);

    let (_, report) = run_against_a_node(
        "--connections 1 --duration 20s --read-your-writes=off --pairs 5",
        &["--header", "X-Writer-Epoch: 1"],
    )
    .await;
    assert_eq!(report["read_your_writes"]["token"], "off", "{report:#}");
    assert_eq!(report["read_your_writes"]["checked"], 5, "{report:#}");
}
