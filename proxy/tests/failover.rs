//! Live failover: rw-proxy following a real writer-election (static mode) in front of
//! real backends, and a fake election for what the real one must never do (an older epoch) or
//! for stepping through the switchover drain handshake.

mod support;

use std::time::{Duration, Instant};

use support::election::{doc, static_election, writer_name, FakeElection};
use support::{eventually, get, send, Backend, Proxy, Reply, WAIT};
use topology_client::topology::Switchover;

fn election_cfg(url: &str, extra: &str) -> String {
    format!("topology: {{ election_url: \"{url}\" }}\n{extra}")
}

/// `X-Writer-Epoch` of the requests `b` saw for `path`.
fn epochs_seen(b: &Backend, path: &str) -> Vec<String> {
    b.seen()
        .iter()
        .filter(|s| s.path == path)
        .map(|s| {
            s.headers
                .get("x-writer-epoch")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

fn put(proxy: &Proxy, path: &str) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let (addr, path) = (proxy.addr, path.to_string());
    tokio::spawn(async move { send(addr, "PUT", &path, &[], b"v").await })
}

async fn wait_metric(proxy: &Proxy, series: &str, what: &str, cond: impl Fn(f64) -> bool) {
    eventually(what, || async { cond(proxy.metric(series).await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_writer_holds_writes_until_the_new_writer_takes_them_with_the_next_epoch() {
    let mut nodes = [
        Backend::start("node-1").await,
        Backend::start("node-2").await,
        Backend::start("node-3").await,
    ];
    let list: Vec<(&str, _)> = nodes.iter().map(|n| (n.name.as_str(), n.addr)).collect();
    let election = static_election(&list);
    let t = election
        .wait_for("node-1 is the writer, two readers", WAIT, |t| {
            writer_name(t) == Some("node-1") && t.readers.len() == 2
        })
        .await;
    let epoch = t.epoch;
    let proxy = Proxy::start(&election_cfg(
        &election.url,
        "failover: { hold_writes: 30s }\n",
    ))
    .await;

    let r = send(proxy.addr, "PUT", "/kv/before", &[], b"v")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "node-1".to_string()));
    assert_eq!(
        epochs_seen(&nodes[0], "/kv/before"),
        vec![epoch.to_string()]
    );
    let ready = get(proxy.admin, "/health/ready").await.json();
    assert_eq!(ready["writer"], "node-1");

    // The election is frozen while the writer dies, so the writes below are certainly sent
    // before a new writer exists: they must be held, not failed.
    election.pause();
    nodes[0].kill().await;
    let writes: Vec<_> = (0..5)
        .map(|i| put(&proxy, &format!("/kv/after-{i}")))
        .collect();
    wait_metric(&proxy, "rw_proxy_held_writes", "5 writes held", |v| {
        v == 5.0
    })
    .await;
    assert_eq!(proxy.metric("rw_proxy_writer_suspect").await, 1.0);
    let refused = proxy
        .metric(r#"rw_proxy_upstream_errors_total{kind="connect_refused",target="writer"}"#)
        .await;
    assert!((1.0..=5.0).contains(&refused), "{refused}");

    election.resume();
    let t = election
        .wait_for("node-2 is the writer", WAIT, |t| {
            writer_name(t) == Some("node-2")
        })
        .await;
    assert_eq!(t.epoch, epoch + 1);
    for (i, w) in writes.into_iter().enumerate() {
        let r = w.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "node-2");
        // Exactly once, with the new epoch.
        assert_eq!(
            epochs_seen(&nodes[1], &format!("/kv/after-{i}")),
            vec![(epoch + 1).to_string()]
        );
    }
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 0.0);
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="released"}"#)
            .await,
        5.0
    );
    assert_eq!(proxy.metric("rw_proxy_write_hold_seconds_count").await, 5.0);
    assert_eq!(proxy.metric("rw_proxy_writer_suspect").await, 0.0);
    assert_eq!(
        proxy.metric("rw_proxy_writer_epoch").await,
        (epoch + 1) as f64
    );
    assert!(nodes[2].seen().iter().all(|s| s.method != "PUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_writer_for_longer_than_hold_writes_a_write_gets_503_with_retry_after() {
    let mut node = Backend::start("node-1").await;
    let election = static_election(&[("node-1", node.addr)]);
    election
        .wait_for("node-1 is the writer", WAIT, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    let proxy = Proxy::start(&election_cfg(
        &election.url,
        "failover: { hold_writes: 500ms }\n",
    ))
    .await;
    assert_eq!(
        send(proxy.addr, "PUT", "/kv/a", &[], b"v")
            .await
            .unwrap()
            .status,
        200
    );

    node.kill().await;
    let started = Instant::now();
    let r = send(proxy.addr, "PUT", "/kv/b", &[], b"v").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "held first"
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "no_writer");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("hold_writes"));

    // The election notices: no writer at all. Writes are held, then refused, all the same.
    election
        .wait_for("no writer", WAIT, |t| t.writer.is_none())
        .await;
    eventually("the proxy knows there is no writer", || async {
        get(proxy.admin, "/health/ready").await.json()["writer"].is_null()
    })
    .await;
    let r = send(proxy.addr, "PUT", "/kv/c", &[], b"v").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_writer");
    assert!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="timeout"}"#)
            .await
            >= 2.0
    );
    let puts = node.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1, "only the first write reached the node");
    // Still ready: a topology without a writer is a topology.
    assert_eq!(get(proxy.admin, "/health/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_held_writes_a_write_gets_503_at_once_and_held_ones_still_land() {
    let mut node = Backend::start("node-1").await;
    let election = static_election(&[("node-1", node.addr)]);
    let t = election
        .wait_for("node-1 is the writer", WAIT, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    let proxy = Proxy::start(&election_cfg(
        &election.url,
        "failover: { hold_writes: 60s, max_held_writes: 2 }\n",
    ))
    .await;
    node.kill().await;
    election
        .wait_for("no writer", WAIT, |t| t.writer.is_none())
        .await;
    eventually("the proxy knows there is no writer", || async {
        get(proxy.admin, "/health/ready").await.json()["writer"].is_null()
    })
    .await;

    let held = [put(&proxy, "/kv/held-0"), put(&proxy, "/kv/held-1")];
    wait_metric(&proxy, "rw_proxy_held_writes", "2 writes held", |v| {
        v == 2.0
    })
    .await;
    let r = send(proxy.addr, "PUT", "/kv/one-too-many", &[], b"v")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "no_writer");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("max_held_writes"));
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 2.0);
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="overflow"}"#)
            .await,
        1.0
    );

    // The node comes back; the election makes it the writer again and the held writes go
    // through, with the epoch of that topology.
    node.restart().await;
    let back = election
        .wait_for("node-1 is the writer again", WAIT, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    assert!(back.epoch >= t.epoch);
    for (i, w) in held.into_iter().enumerate() {
        let r = w.await.unwrap().unwrap();
        assert_eq!((r.status.as_u16(), r.text()), (200, "node-1".to_string()));
        assert_eq!(
            epochs_seen(&node, &format!("/kv/held-{i}")),
            vec![back.epoch.to_string()]
        );
    }
    assert!(epochs_seen(&node, "/kv/one-too-many").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_writer_election_gone_the_proxy_keeps_routing_and_stays_ready() {
    let nodes = [
        Backend::start("node-1").await,
        Backend::start("node-2").await,
    ];
    let list: Vec<(&str, _)> = nodes.iter().map(|n| (n.name.as_str(), n.addr)).collect();
    let mut election = static_election(&list);
    let t = election
        .wait_for("node-1 writer, node-2 reader", WAIT, |t| {
            writer_name(t) == Some("node-1") && t.readers.len() == 1
        })
        .await;
    let proxy = Proxy::start(&election_cfg(&election.url, "")).await;
    eventually("the proxy has the reader", || async {
        get(proxy.admin, "/health/ready").await.json()["readers"] == serde_json::json!(["node-2"])
    })
    .await;
    assert_eq!(proxy.metric("rw_proxy_election_reachable").await, 1.0);
    assert_eq!(proxy.metric("rw_proxy_topology_age_seconds").await, 0.0);

    election.kill();
    wait_metric(
        &proxy,
        "rw_proxy_election_errors_total",
        "failures counted",
        |v| v >= 2.0,
    )
    .await;
    assert_eq!(proxy.metric("rw_proxy_election_reachable").await, 0.0);
    assert_eq!(get(proxy.admin, "/health/ready").await.status, 200);
    let r = send(proxy.addr, "PUT", "/kv/w", &[], b"v").await.unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "node-1".to_string()));
    assert_eq!(epochs_seen(&nodes[0], "/kv/w"), vec![t.epoch.to_string()]);
    assert_eq!(get(proxy.addr, "/kv/r").await.text(), "node-2");

    // The age grows while the election is away.
    let first = proxy.metric("rw_proxy_topology_age_seconds").await;
    wait_metric(
        &proxy,
        "rw_proxy_topology_age_seconds",
        "the age grows",
        |v| v > first && v >= 1.0,
    )
    .await;
    let outage_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("writer-election is unreachable"))
            .count()
    };
    proxy.wait_log("writer-election is unreachable").await;
    assert_eq!(outage_lines(&proxy.log()), 1, "logged once per outage");

    // Back: the follower reconnects, the age drops to 0.
    election.respawn();
    wait_metric(
        &proxy,
        "rw_proxy_election_reachable",
        "reachable again",
        |v| v == 1.0,
    )
    .await;
    assert_eq!(proxy.metric("rw_proxy_topology_age_seconds").await, 0.0);
    proxy.wait_log("writer-election is reachable again").await;
    assert_eq!(outage_lines(&proxy.log()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_with_an_older_epoch_is_ignored_and_counted() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let fake = FakeElection::start(doc(5, 1, Some(("a", a.addr)), &[("b", b.addr)], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "")).await;
    send(proxy.addr, "PUT", "/kv/1", &[], b"v").await.unwrap();
    assert_eq!(epochs_seen(&a, "/kv/1"), vec!["5"]);

    // An older epoch naming another writer: ignored, counted, nothing changes.
    fake.publish(doc(4, 2, Some(("b", b.addr)), &[("a", a.addr)], None));
    wait_metric(
        &proxy,
        r#"rw_proxy_topology_rejected_total{reason="stale_epoch"}"#,
        "the stale topology is counted",
        |v| v == 1.0,
    )
    .await;
    send(proxy.addr, "PUT", "/kv/2", &[], b"v").await.unwrap();
    assert_eq!(epochs_seen(&a, "/kv/2"), vec!["5"]);
    assert!(epochs_seen(&b, "/kv/2").is_empty());
    assert_eq!(proxy.metric("rw_proxy_writer_epoch").await, 5.0);

    // The next epoch is taken.
    fake.publish(doc(6, 3, Some(("b", b.addr)), &[("a", a.addr)], None));
    wait_metric(&proxy, "rw_proxy_writer_epoch", "epoch 6", |v| v == 6.0).await;
    send(proxy.addr, "PUT", "/kv/3", &[], b"v").await.unwrap();
    assert_eq!(epochs_seen(&b, "/kv/3"), vec!["6"]);

    // Every query carried this process's client id: <hostname>-<pid>-<8 hex>.
    let clients = fake.clients();
    assert!(!clients.is_empty());
    let id = &clients[0];
    assert!(clients.iter().all(|c| c == id), "{clients:?}");
    let mut parts = id.rsplitn(3, '-');
    let hex = parts.next().unwrap();
    assert_eq!(hex.len(), 8, "{id}");
    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(parts.next(), Some(proxy.pid().to_string().as_str()), "{id}");
    assert!(!parts.next().unwrap_or("").is_empty(), "{id}");
}

fn switchover(id: u64, from: &str, to: &str) -> Option<Switchover> {
    Some(Switchover {
        id,
        state: "draining".into(),
        from: from.into(),
        to: to.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_holds_new_writes_acks_once_drained_and_releases_them_to_the_new_writer() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let fake = FakeElection::start(doc(1, 1, Some(("a", a.addr)), &[("b", b.addr)], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 30s }\n")).await;

    // A slow write is in flight on the old writer when the switchover starts.
    let slow = put(&proxy, "/slow/1500");
    eventually("the slow write reached a", || async { a.count() == 1 }).await;
    // The first acknowledgement is refused: the proxy must retry.
    fake.answer_drained_with(&[503]);
    fake.publish(doc(
        1,
        2,
        Some(("a", a.addr)),
        &[("b", b.addr)],
        switchover(7, "a", "b"),
    ));
    eventually("the proxy sees the switchover", || async {
        get(proxy.admin, "/health/ready").await.json()["switchover"]["id"] == 7
    })
    .await;
    let held = put(&proxy, "/kv/during");
    wait_metric(
        &proxy,
        "rw_proxy_held_writes",
        "the new write is held",
        |v| v == 1.0,
    )
    .await;
    // Reads go on meanwhile.
    assert_eq!(get(proxy.addr, "/kv/r").await.text(), "b");

    eventually("the drain is acknowledged (twice: one refusal)", || async {
        fake.drained().len() >= 2
    })
    .await;
    let acks = fake.drained();
    let slow_done = a
        .answered_at("/slow/1500")
        .expect("the slow write was answered");
    assert!(
        acks[0].1 > slow_done,
        "acknowledged only after the write in flight finished"
    );
    let client = fake.clients()[0].clone();
    for (body, _) in &acks {
        assert_eq!(
            body,
            &serde_json::json!({"client": client, "switchover": 7})
        );
    }
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "a".to_string()));
    assert_eq!(a.count(), 1, "nothing else reached the old writer");
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 1.0);
    assert_eq!(proxy.metric("rw_proxy_switchover_drained_total").await, 1.0);

    // The election promotes b with the next epoch: the held write goes there.
    fake.publish(doc(2, 3, Some(("b", b.addr)), &[("a", a.addr)], None));
    let r = held.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "b".to_string()));
    assert_eq!(epochs_seen(&b, "/kv/during"), vec!["2"]);
    assert!(epochs_seen(&a, "/kv/during").is_empty());
    assert_eq!(fake.drained().len(), 2, "no acknowledgement after the 2xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_switchover_releases_held_writes_to_the_old_writer() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let fake = FakeElection::start(doc(3, 1, Some(("a", a.addr)), &[("b", b.addr)], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 30s }\n")).await;
    // Acknowledgements keep failing: the election will give up (drain_timeout) and abort.
    fake.answer_drained_with(&[503; 1000]);
    fake.publish(doc(
        3,
        2,
        Some(("a", a.addr)),
        &[("b", b.addr)],
        switchover(9, "a", "b"),
    ));
    eventually("the proxy sees the switchover", || async {
        get(proxy.admin, "/health/ready").await.json()["switchover"]["id"] == 9
    })
    .await;
    let held = put(&proxy, "/kv/x");
    wait_metric(&proxy, "rw_proxy_held_writes", "held", |v| v == 1.0).await;
    eventually("the proxy keeps retrying its acknowledgement", || async {
        fake.drained().len() >= 2
    })
    .await;

    fake.publish(doc(3, 3, Some(("a", a.addr)), &[("b", b.addr)], None));
    let r = held.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "a".to_string()));
    assert_eq!(epochs_seen(&a, "/kv/x"), vec!["3"]);
    // The switchover is gone: the proxy stops acknowledging.
    let n = fake.drained().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fake.drained().len() <= n + 1, "acknowledgements stopped");
    assert_eq!(proxy.metric("rw_proxy_switchover_drained_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_writer_broke_is_not_replayed_and_the_next_one_waits_for_a_recheck() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader").await;
    let cfg = format!(
        "{}failover: {{ hold_writes: 30s }}\n",
        support::static_topology(Some(writer.addr), &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    let r = send(proxy.addr, "PUT", "/drop/1", &[], b"v").await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    assert_eq!(
        writer.seen().iter().filter(|s| s.path == "/drop/1").count(),
        1,
        "sent once, never replayed"
    );
    proxy.wait_log("the writer looks gone").await;
    // The writer still accepts connections: the recheck lets the next write through.
    let r = send(proxy.addr, "PUT", "/kv/next", &[], b"v")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "writer".to_string()));
    assert_eq!(epochs_seen(&writer, "/kv/next"), vec!["1"]);
    assert_eq!(proxy.metric("rw_proxy_writer_suspect").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_whose_client_left_is_never_sent() {
    use tokio::io::AsyncWriteExt;
    let writer = Backend::start("writer").await;
    let no_writer = format!(
        "{}failover: {{ hold_writes: 60s }}\n",
        support::static_topology(None, &[])
    );
    let mut proxy = Proxy::start(&no_writer).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"PUT /kv/gone HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv")
        .await
        .unwrap();
    wait_metric(&proxy, "rw_proxy_held_writes", "held", |v| v == 1.0).await;
    // The client gives up (and might retry elsewhere): its write must not be applied later.
    drop(client);
    wait_metric(
        &proxy,
        r#"rw_proxy_write_holds_total{outcome="client_gone"}"#,
        "the hold is abandoned",
        |v| v == 1.0,
    )
    .await;
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 0.0);

    // A writer appears: only new writes reach it.
    proxy.write_config(&format!(
        "{}failover: {{ hold_writes: 60s }}\n",
        support::static_topology(Some(writer.addr), &[])
    ));
    eventually("the writer is known", || async {
        get(proxy.admin, "/health/ready").await.json()["writer"] == "writer"
    })
    .await;
    let r = send(proxy.addr, "PUT", "/kv/after", &[], b"v")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(epochs_seen(&writer, "/kv/gone").is_empty());
    assert_eq!(writer.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_list_of_election_urls_a_dead_one_is_skipped() {
    let a = Backend::start("a").await;
    let fake = FakeElection::start(doc(2, 1, Some(("a", a.addr)), &[], None)).await;
    let dead = support::refusing_addr();
    let proxy = Proxy::start(&format!(
        "topology:\n  election_url:\n    - \"http://{dead}\"\n    - \"{}\"\nfailover: {{ hold_writes: 30s }}\n",
        fake.url
    ))
    .await;
    let r = send(proxy.addr, "PUT", "/kv/1", &[], b"v").await.unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "a".to_string()));
    assert_eq!(epochs_seen(&a, "/kv/1"), vec!["2"]);
    // The drain acknowledgement finds the live replica too.
    fake.publish(doc(
        2,
        2,
        Some(("a", a.addr)),
        &[],
        switchover(1, "a", "a2"),
    ));
    eventually("acknowledged through the second URL", || async {
        !fake.drained().is_empty()
    })
    .await;
    assert_eq!(proxy.metric("rw_proxy_switchover_drained_total").await, 1.0);
}
