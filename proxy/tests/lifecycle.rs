//! The process: --version, --check, reload on SIGHUP and on file change, /metrics, SIGTERM.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{eventually, get, send, static_topology, Backend, KeepAlive, Proxy};
use test_kit::metrics::value_or_zero;
use test_kit::process::{check_config, check_config_text};

#[test]
fn version_names_the_version_and_the_commit() {
    assert_eq!(
        test_kit::process::version_line(Path::new(env!("CARGO_BIN_EXE_rw-proxy"))),
        format!(
            "rw-proxy {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("RW_PROXY_COMMIT")
        )
    );
}

#[test]
fn check_validates_and_names_the_key() {
    let out = check_config_text(
        Path::new(env!("CARGO_BIN_EXE_rw-proxy")),
        "topology: { static: { writer: \"127.0.0.1:9001\" } }\n",
    );
    assert!(out.status.success(), "{out:?}");

    let out = check_config_text(
        Path::new(env!("CARGO_BIN_EXE_rw-proxy")),
        "timeouts: { connect: 5x }\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timeouts.connect: invalid value: string \"5x\", expected a duration"),
        "{err}"
    );

    let out = check_config_text(
        Path::new(env!("CARGO_BIN_EXE_rw-proxy")),
        "routing:\n  method: {}\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("routing.method: unknown field `method`"));

    let out = check_config(
        Path::new(env!("CARGO_BIN_EXE_rw-proxy")),
        Path::new("/nonexistent/rw-proxy.yaml"),
    );
    assert!(!out.status.success());

    let out = Command::new(env!("CARGO_BIN_EXE_rw-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("--check") && help.contains("--log-format"));
}

#[test]
fn a_taken_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: \"{addr}\"\nadmin_listen: \"127.0.0.1:0\"\ntopology: {{ static: {{ writer: \"127.0.0.1:1\" }} }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rw-proxy"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listen: cannot listen on {addr}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_bad_file_keeps_routing_good_file_takes_effect() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let other = Backend::start("other").await;
    let topo = static_topology(Some(writer.addr), &[reader.addr]);
    let mut proxy = Proxy::start(&topo).await;
    assert_eq!(get(proxy.addr, "/kv/a").await.text(), "reader-0");

    // A bad file, signalled with SIGHUP: rejected, counted, routing unchanged.
    std::fs::write(
        proxy.config_path(),
        proxy.full_config(&format!("{topo}routing: {{ default: wrong }}\n")),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually("the rejected reload is counted", || async {
        proxy
            .metric(r#"rw_proxy_config_reloads_total{result="error"}"#)
            .await
            >= 1.0
    })
    .await;
    // The log names the key.
    proxy.wait_log("routing.default").await;
    assert_eq!(get(proxy.addr, "/kv/a").await.text(), "reader-0");
    assert_eq!(
        send(proxy.addr, "PUT", "/kv/a", &[], b"v")
            .await
            .unwrap()
            .text(),
        "writer"
    );

    // A good file, again by SIGHUP: reads now go to the writer by rule.
    std::fs::write(
        proxy.config_path(),
        proxy.full_config(&format!(
            "{topo}routing:\n  rules: [ {{ path_prefix: /kv, to: writer }} ]\n"
        )),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually("the good reload takes effect", || async {
        get(proxy.addr, "/kv/a").await.text() == "writer"
    })
    .await;
    assert_eq!(get(proxy.addr, "/other").await.text(), "reader-0");
    assert!(
        proxy
            .metric(r#"rw_proxy_config_reloads_total{result="success"}"#)
            .await
            >= 1.0
    );

    // A file change alone (no signal) also reloads, topology included.
    let new_topo = static_topology(Some(other.addr), &[reader.addr]);
    proxy.write_config(&new_topo);
    eventually("the file change moves writes to the new writer", || async {
        send(proxy.addr, "PUT", "/kv/b", &[], b"v")
            .await
            .map(|r| r.text())
            .unwrap_or_default()
            == "other"
    })
    .await;
    // A new writer is a new epoch, and the nodes see it.
    let epoch = other
        .seen()
        .last()
        .and_then(|s| s.headers.get("x-writer-epoch").cloned());
    assert_eq!(epoch.as_ref().map(|v| v.as_bytes()), Some(&b"2"[..]));
    assert_eq!(proxy.metric("rw_proxy_writer_epoch").await, 2.0);

    // A broken file by file change: still rejected, the new routing stays.
    let errors_before = proxy
        .metric(r#"rw_proxy_config_reloads_total{result="error"}"#)
        .await;
    std::fs::write(proxy.config_path(), "listen: [broken\n").unwrap();
    eventually("the broken file is rejected", || async {
        proxy
            .metric(r#"rw_proxy_config_reloads_total{result="error"}"#)
            .await
            > errors_before
    })
    .await;
    assert_eq!(
        send(proxy.addr, "PUT", "/kv/c", &[], b"v")
            .await
            .unwrap()
            .text(),
        "other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_just_made() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let proxy = Proxy::start(&static_topology(Some(writer.addr), &[reader.addr])).await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/kv/a").await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            send(proxy.addr, "PUT", "/kv/a", &[], b"v")
                .await
                .unwrap()
                .status,
            200
        );
    }
    // The access log and the counters are written just after the response: poll.
    let put = r#"rw_proxy_requests_total{method="PUT",status="200",target="writer"}"#;
    let get_ = r#"rw_proxy_requests_total{method="GET",status="200",target="readers"}"#;
    eventually("the counters catch up", || async {
        proxy.metric(put).await == 2.0 && proxy.metric(get_).await == 3.0
    })
    .await;
    let m = proxy.metrics().await;
    let v = |s: &str| value_or_zero(&m, s);
    assert_eq!(v(get_), 3.0, "{m}");
    assert_eq!(v(put), 2.0, "{m}");
    assert_eq!(
        v(r#"rw_proxy_request_duration_seconds_count{target="readers"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        v(r#"rw_proxy_request_duration_seconds_count{target="writer"}"#),
        2.0,
        "{m}"
    );
    assert_eq!(v("rw_proxy_writer_epoch"), 1.0);
    assert_eq!(v("rw_proxy_topology_updates_total"), 1.0);
    assert!(m.contains("rw_proxy_held_writes 0"), "{m}");
    assert_eq!(
        v(r#"rw_proxy_upstream_errors_total{kind="connect_refused",target="readers"}"#),
        0.0
    );
    assert!(
        m.contains("rw_proxy_config_reloads_total{result=\"success\"} 0"),
        "{m}"
    );

    // The standard process series, of the proxy process (not of this test).
    test_kit::process::assert_process_metrics(
        &m,
        "rw_proxy",
        env!("RW_PROXY_COMMIT"),
        env!("CARGO_PKG_VERSION"),
    );

    let health = get(proxy.admin, "/health").await;
    assert_eq!(health.status, 200);
    let ready = get(proxy.admin, "/health/ready").await;
    assert_eq!(ready.json()["writer"], "writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_a_topology() {
    // writer-election does not answer: no topology, so not ready, and writes find no writer.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.yaml");
    let a = test_kit::ports::free_addr().unwrap();
    let b = test_kit::ports::free_addr().unwrap();
    std::fs::write(
        &cfg,
        format!("listen: \"{a}\"\nadmin_listen: \"{b}\"\ntopology: {{ election_url: \"http://127.0.0.1:1\" }}\nfailover: {{ hold_writes: 100ms }}\n"),
    )
    .unwrap();
    let _child = test_kit::process::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_rw-proxy"))
            .arg("--config")
            .arg(&cfg)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("/health answers", || async {
        support::send(b, "GET", "/health", &[], b"")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = get(b, "/health/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["topology"], false);
    let r = send(a, "PUT", "/kv/a", &[], b"v").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_slow_request_finish() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}shutdown_grace: 20s\naccess_log: all\n",
        static_topology(Some(writer.addr), &[reader.addr])
    );
    let mut proxy = Proxy::start(&cfg).await;
    let addr = proxy.addr;

    // An idle keep-alive connection, and a slow request in flight.
    let mut idle = KeepAlive::open(addr).await;
    assert_eq!(idle.get("/kv/a").await.status, 200);
    let slow = tokio::spawn(async move { send(addr, "GET", "/slow/3000", &[], b"").await });
    eventually("the slow request reached the reader", || async {
        reader.seen().iter().any(|s| s.path == "/slow/3000")
    })
    .await;
    let t0 = Instant::now();
    proxy.signal("TERM");

    // New connections are no longer served while the slow one drains.
    // (Bounded: a SYN racing the listener's close may be dropped and retried by the kernel.)
    eventually("the listener stops accepting", || async {
        let probe = send(addr, "GET", "/kv/a", &[], b"");
        !matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        )
    })
    .await;
    // The idle connection is closed by the proxy, not left to the process exit.
    eventually("the idle keep-alive connection is closed", || async {
        idle.closed()
    })
    .await;
    assert!(
        !slow.is_finished(),
        "closed while the slow request was still running"
    );

    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "reader-0");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "no keep-alive while draining"
    );
    let status = proxy.wait_exit().await;
    assert!(status.success(), "exit status {status:?}");
    // Log lines still queued for the log writer at the exit are written out.
    let log = proxy.log();
    assert!(
        log.contains("/slow/3000") && log.contains("drained; exiting"),
        "{log}"
    );
    // It left once drained, not after the 20 s grace period.
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    let slow_seen = reader
        .seen()
        .iter()
        .filter(|s| s.path == "/slow/3000")
        .count();
    assert_eq!(slow_seen, 1, "the slow request was sent once");
}
