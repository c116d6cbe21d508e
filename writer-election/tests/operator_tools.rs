//! `writer-election status` and `writer-election switchover` (the real binary) against a real
//! writer-election with real nodes on 127.0.0.1, and the history across a restart.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::cluster::*;
use writer_election::topology::{History, HistoryEntry};

const LONG: Duration = Duration::from_secs(60);
const TOKEN_ENV: &str = "TEST_OPS_SWITCHOVER_TOKEN";

/// Runs the binary with `args`, stdin from /dev/null (not a terminal), in a blocking thread.
async fn ops(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(binary());
        cmd.args(&args)
            .env_remove("WRITER_ELECTION_URL")
            .env_remove("WRITER_ELECTION_CONFIG")
            .stdin(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.output().expect("run writer-election")
    })
    .await
    .expect("join")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn history(e: &Election) -> Vec<HistoryEntry> {
    let (status, body) = e.get("/v1/history").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<History>(&body)
        .unwrap_or_else(|err| panic!("{err}: {body}"))
        .changes
}

struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(nodes: &[TestNode]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let config = dir.path().join("election.yaml");
    let extra = format!("switchover: {{ token_env: {TOKEN_ENV} }}\n");
    std::fs::write(&config, static_config(nodes, &state, &extra)).expect("write config");
    Setup { _dir: dir, config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_switchover_and_history_across_a_restart() {
    let mut nodes = nodes(3).await;
    let s = setup(&nodes);
    let env = [(TOKEN_ENV, "s3cret")];
    let mut e = Election::start(&s.config, &env);
    e.wait_for("node-0 writer, all ready", LONG, |t| {
        writer_name(t) == Some("node-0") && all_ready(t, 3)
    })
    .await;

    // The table.
    let out = ops(&["status", "--url", &e.url], &[]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        !stdout.contains('\x1b'),
        "no colour codes without a terminal: {stdout}"
    );
    let writer_line = stdout
        .lines()
        .find(|l| l.starts_with("writer:"))
        .unwrap_or_default();
    assert!(
        writer_line.contains("node-0")
            && writer_line.contains("epoch 1")
            && writer_line.contains("since "),
        "{stdout}"
    );
    assert!(stdout.contains("switchover:  none"), "{stdout}");
    for n in &nodes {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{} ", n.name)))
            .unwrap_or_else(|| panic!("no row for {}: {stdout}", n.name));
        assert!(row.contains(&n.address()) && row.contains("yes"), "{row}");
        let role = if n.name == "node-0" {
            "writer"
        } else {
            "reader"
        };
        assert!(row.contains(role), "{row}");
        assert!(
            row.contains("200 OK ("),
            "the last probe of {}: {row}",
            n.name
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("initial") && l.contains("node-0")),
        "the first election is in the history: {stdout}"
    );

    // The JSON shape.
    let out = ops(&["status", "--url", &e.url, "--json"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["topology"]["epoch"], 1);
    assert_eq!(v["topology"]["writer"]["name"], "node-0");
    assert_eq!(v["history"][0]["reason"], "initial");
    assert_eq!(v["history"][0]["to"], "node-0");
    assert_eq!(v["replicas"][0]["leading"], true);
    assert_eq!(v["replicas"][0]["url"], e.url.as_str());
    assert!(v["replicas"][0]["clients"].is_array());
    let probes = v["replicas"][0]["probes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(probes.len(), 3, "{probes:?}");
    assert!(
        probes
            .iter()
            .all(|p| p["ok"] == true && p["age_ms"].as_u64().is_some()),
        "{probes:?}"
    );

    // Nothing answers at the URL: exit 3, and nothing on stdout.
    let out = ops(&["status", "--url", "http://127.0.0.1:1"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // No confirmation without a terminal and without --yes: nothing happens.
    let sw = [
        "switchover",
        "--url",
        &e.url,
        "--to",
        "node-2",
        "--token-env",
        TOKEN_ENV,
    ];
    let out = ops(&sw, &env).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(e.topology().await.map(|t| t.epoch), Some(1));

    // The server's reasons, non-zero.
    let mut yes = sw.to_vec();
    yes.push("--yes");
    let out = ops(&yes, &[(TOKEN_ENV, "wrong")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("401") && text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );
    let out = ops(
        &[
            "switchover",
            "--url",
            &e.url,
            "--to",
            "node-9",
            "--token-env",
            TOKEN_ENV,
            "--yes",
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("409") && text(&out.stderr).contains("not_a_candidate"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(e.topology().await.map(|t| t.epoch), Some(1));

    // A real switchover, followed by a status --watch that sees it.
    let mut watch = std::process::Command::new(binary())
        .args(["status", "--watch", "--url", &e.url])
        .env_remove("WRITER_ELECTION_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn status --watch");
    let watch_out = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(watch_out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(LONG)
        .expect("the watch prints a first screen");
    assert!(
        first.contains("node-0") && first.contains("epoch 1"),
        "{first}"
    );

    let out = ops(&yes, &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "switched: writer node-2, epoch 2");
    assert!(nodes[2].promoted());

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("writer:") && l.contains("node-2") && l.contains("epoch 2") => {
                break
            }
            Ok(l) => seen.push(l),
            Err(_) => panic!("the watch did not show the new writer within 10 s: {seen:#?}"),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    let (_, text) = e.get("/metrics").await;
    let m = parse_metrics(&text);
    let writers: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("writer_election_writer{"))
        .collect();
    assert_eq!(
        writers,
        vec![(&"writer_election_writer{node=\"node-2\"}".to_string(), &1.0)],
        "one series, for the new writer only"
    );

    let h = history(&e).await;
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(
        (
            h[1].from.as_deref(),
            h[1].to.as_str(),
            h[1].epoch,
            h[1].reason.as_str()
        ),
        (Some("node-0"), "node-2", 2, "switchover")
    );
    assert!(
        h[1].drain_ms.is_some() && h[1].no_writer_ms.is_some(),
        "{h:#?}"
    );
    assert!(h[1].no_writer_ms >= h[1].drain_ms, "{h:#?}");

    // A crash and restart keeps the history (it is in the state file); the next failover adds
    // to it.
    e.kill();
    let e = Election::start(&s.config, &env);
    e.wait_for("node-2 still the writer", LONG, |t| {
        writer_name(t) == Some("node-2")
    })
    .await;
    assert_eq!(history(&e).await, h);
    nodes[2].stop().await;
    e.wait_for("node-0 writer again", LONG, |t| {
        writer_name(t) == Some("node-0")
    })
    .await;
    let after = history(&e).await;
    assert_eq!(after.len(), 3, "{after:#?}");
    assert_eq!(after[..2], h[..]);
    assert_eq!(
        (
            after[2].from.as_deref(),
            after[2].to.as_str(),
            after[2].epoch
        ),
        (Some("node-2"), "node-0", 3)
    );
    assert!(
        ["writer-unready", "writer-gone"].contains(&after[2].reason.as_str()),
        "{after:#?}"
    );
    assert!(
        after[2].no_writer_ms.is_some() && after[2].drain_ms.is_none(),
        "{after:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_needs_a_token_source_and_the_server_needs_a_token() {
    let nodes = nodes(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let config = dir.path().join("election.yaml");
    std::fs::write(&config, static_config(&nodes, &state, "")).expect("write config");
    let e = Election::start(&config, &[]);
    e.wait_for("a writer", LONG, |t| t.writer.is_some()).await;

    let out = ops(&["switchover", "--url", &e.url, "--yes"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );

    let token = dir.path().join("token");
    std::fs::write(&token, "abc\n").expect("token");
    let token = token.display().to_string();
    let out = ops(
        &[
            "switchover",
            "--url",
            &e.url,
            "--yes",
            "--token-file",
            &token,
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("403") && err.contains("switchover_disabled"),
        "{err}"
    );
}
