//! Routing through a real rw-proxy to real backends.

mod support;

use std::collections::HashSet;

use support::{get, refusing_addr, send, static_topology, Backend, Proxy};

struct Cluster {
    writer: Backend,
    readers: Vec<Backend>,
}

impl Cluster {
    async fn start(readers: usize) -> Cluster {
        let writer = Backend::start("writer").await;
        let mut rs = Vec::new();
        for i in 0..readers {
            rs.push(Backend::start(&format!("reader-{i}")).await);
        }
        Cluster {
            writer,
            readers: rs,
        }
    }

    fn topology(&self) -> String {
        let readers: Vec<_> = self.readers.iter().map(|r| r.addr).collect();
        static_topology(Some(self.writer.addr), &readers)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_method_reaches_the_writer() {
    let c = Cluster::start(2).await;
    let proxy = Proxy::start(&c.topology()).await;
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let r = send(proxy.addr, method, "/kv/a", &[], b"value")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.text(), "writer", "{method}");
    }
    let seen = c.writer.seen();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["PUT", "POST", "PATCH", "DELETE"]);
    assert!(seen.iter().all(|s| &s.body[..] == b"value"));
    assert!(c.readers.iter().all(|r| r.count() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_the_readers_and_both_get_traffic() {
    let c = Cluster::start(2).await;
    let proxy = Proxy::start(&c.topology()).await;
    let mut answered = HashSet::new();
    for method in ["GET", "HEAD", "OPTIONS"] {
        for _ in 0..4 {
            let r = send(proxy.addr, method, "/kv/a", &[], b"").await.unwrap();
            assert_eq!(r.status, 200, "{method}");
            let backend = r.header("x-backend").unwrap_or("").to_string();
            assert!(backend.starts_with("reader-"), "{method} went to {backend}");
            answered.insert(backend);
        }
    }
    assert_eq!(answered.len(), 2, "both readers answer: {answered:?}");
    assert_eq!(c.writer.count(), 0);
    for r in &c.readers {
        let methods: HashSet<String> = r.seen().into_iter().map(|s| s.method).collect();
        assert_eq!(methods.len(), 3, "{} saw {methods:?}", r.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_overrides_the_method_map() {
    let c = Cluster::start(1).await;
    let cfg = format!(
        "{}routing:\n  rules:\n    - {{ path_prefix: \"/api/search\", methods: [POST], to: readers }}\n    - {{ path_prefix: \"/admin\", to: writer }}\n",
        c.topology()
    );
    let proxy = Proxy::start(&cfg).await;
    let r = send(proxy.addr, "POST", "/api/search", &[], b"{}")
        .await
        .unwrap();
    assert_eq!(r.text(), "reader-0");
    let r = send(proxy.addr, "POST", "/api/other", &[], b"{}")
        .await
        .unwrap();
    assert_eq!(r.text(), "writer");
    let r = get(proxy.addr, "/admin/stats").await;
    assert_eq!(r.text(), "writer");
    let r = get(proxy.addr, "/kv/x").await;
    assert_eq!(r.text(), "reader-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_strong_reaches_the_writer() {
    let c = Cluster::start(2).await;
    let proxy = Proxy::start(&c.topology()).await;
    for _ in 0..3 {
        let r = send(
            proxy.addr,
            "GET",
            "/kv/a",
            &[("X-Consistency", "strong")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.text(), "writer");
    }
    let r = send(
        proxy.addr,
        "GET",
        "/kv/a",
        &[("X-Consistency", "eventual")],
        b"",
    )
    .await
    .unwrap();
    assert!(r.text().starts_with("reader-"));
    // A read served by the writer carries the fencing token too.
    assert!(c
        .writer
        .seen()
        .iter()
        .all(|s| s.headers.get("x-writer-epoch").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_readers_reads_reach_the_writer() {
    let c = Cluster::start(0).await;
    let proxy = Proxy::start(&c.topology()).await;
    let r = get(proxy.addr, "/kv/a").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "writer");

    // And with the fallback off, the proxy says so in JSON.
    let cfg = format!(
        "{}routing: {{ reads_fall_back_to_writer: false }}\n",
        c.topology()
    );
    let proxy = Proxy::start(&cfg).await;
    let r = get(proxy.addr, "/kv/a").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_upstream");
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_epoch_is_set_on_writes_and_never_taken_from_the_client() {
    let c = Cluster::start(1).await;
    let proxy = Proxy::start(&c.topology()).await;
    let r = send(
        proxy.addr,
        "PUT",
        "/kv/a",
        &[("X-Writer-Epoch", "999")],
        b"v",
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "writer");
    let r = send(
        proxy.addr,
        "GET",
        "/kv/a",
        &[("x-writer-epoch", "999")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "reader-0");

    let w = c.writer.seen();
    let epochs: Vec<_> = w[0].headers.get_all("x-writer-epoch").iter().collect();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0], "1", "the static topology's epoch");
    let rd = c.readers[0].seen();
    assert!(
        rd[0].headers.get("x-writer-epoch").is_none(),
        "{:?}",
        rd[0].headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_id() {
    let c = Cluster::start(1).await;
    let proxy = Proxy::start(&c.topology()).await;
    let r = send(
        proxy.addr,
        "GET",
        "/a",
        &[
            ("X-Forwarded-For", "10.9.8.7"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
        ],
        b"",
    )
    .await
    .unwrap();
    let generated = r.header("x-request-id").expect("a request id").to_string();
    assert_eq!(generated.len(), 24);
    let r2 = send(proxy.addr, "GET", "/b", &[("X-Request-Id", "my-id-1")], b"")
        .await
        .unwrap();
    assert_eq!(r2.header("x-request-id"), Some("my-id-1"));

    let seen = c.readers[0].seen();
    let h = &seen[0].headers;
    assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string().as_str());
    assert_eq!(h["x-request-id"], generated.as_str());
    assert!(
        h.get("x-hop").is_none(),
        "a field nominated by Connection is hop-by-hop"
    );
    assert_eq!(seen[1].headers["x-request-id"], "my-id-1");
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_refuses_connections_is_skipped() {
    let live = Backend::start("reader-live").await;
    let dead = refusing_addr();
    let writer = Backend::start("writer").await;
    let proxy = Proxy::start(&static_topology(Some(writer.addr), &[dead, live.addr])).await;
    for _ in 0..6 {
        let r = get(proxy.addr, "/kv/a").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "reader-live");
    }
    assert_eq!(live.count(), 6);
    assert_eq!(writer.count(), 0);
    let refused = proxy
        .metric(r#"rw_proxy_upstream_errors_total{kind="connect_refused",target="readers"}"#)
        .await;
    assert!(refused >= 1.0, "refusals are counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_refusing_writer_are_held_then_get_503_and_are_never_sent_twice() {
    let dead = refusing_addr();
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}failover: {{ hold_writes: 300ms }}\n",
        static_topology(Some(dead), &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    let r = send(proxy.addr, "PUT", "/kv/a", &[], b"v").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_writer");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(reader.count(), 0, "a write never goes to a reader");
    let refused = r#"rw_proxy_upstream_errors_total{kind="connect_refused",target="writer"}"#;
    assert_eq!(proxy.metric(refused).await, 1.0);
    assert_eq!(proxy.metric("rw_proxy_writer_suspect").await, 1.0);
    // The writer is suspect now: the next write is held without dialling it again.
    let r = send(proxy.addr, "PUT", "/kv/b", &[], b"v").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        proxy.metric(refused).await,
        1.0,
        "no second connect attempt"
    );
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="timeout"}"#)
            .await,
        2.0
    );
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 0.0);
    // Reads are not held: the reader serves them.
    assert_eq!(get(proxy.addr, "/kv/a").await.text(), "reader-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_writer_writes_get_503_no_writer_after_the_hold() {
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}failover: {{ hold_writes: 200ms }}\n",
        static_topology(None, &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    let t0 = std::time::Instant::now();
    let r = send(proxy.addr, "POST", "/kv/a", &[], b"v").await.unwrap();
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(200),
        "held first"
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"], "no_writer");
    assert_eq!(get(proxy.addr, "/kv/a").await.text(), "reader-0");
    assert_eq!(reader.count(), 1);
}
