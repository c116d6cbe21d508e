//! Replication-aware reads over real sockets: rw-proxy following a fake writer-election that
//! publishes replication rounds, in front of stand-in nodes that say which of them answered.
//! `routing.read_your_writes` (the token on a write's answer, the reads that carry it back) and
//! `routing.max_reader_lag` (lagging readers out of the read pool, back under half the limit).

mod support;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use support::election::{doc, FakeElection};
use support::{eventually, get, send, Backend, Proxy, Reply};
use test_kit::metrics::{value, value_or_zero};
use topology_client::topology::{NodeProgress, Replication, Topology};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A writer `w` and readers `r0`, `r1`, `r2`.
struct Nodes {
    writer: Backend,
    readers: Vec<Backend>,
}

impl Nodes {
    async fn start(readers: usize) -> Nodes {
        let mut rs = Vec::new();
        for i in 0..readers {
            rs.push(Backend::start(&format!("r{i}")).await);
        }
        Nodes {
            writer: Backend::start("w").await,
            readers: rs,
        }
    }

    /// The document at `epoch`/`revision`, with `round` (if any).
    fn document(&self, epoch: u64, revision: u64, round: Option<Replication>) -> Topology {
        let readers: Vec<(&str, _)> = self
            .readers
            .iter()
            .map(|r| (r.name.as_str(), r.addr))
            .collect();
        let mut t = doc(
            epoch,
            revision,
            Some((self.writer.name.as_str(), self.writer.addr)),
            &readers,
            None,
        );
        t.replication = round;
        t
    }
}

/// A round of `epoch` measured at `measured_at_ms`, the writer at 100; `readers`: (name,
/// offset, lag_ms) of each reader it could read.
fn round(epoch: u64, measured_at_ms: u64, readers: &[(&str, u64, u64)]) -> Replication {
    let writer_offset = 100;
    let mut nodes = vec![NodeProgress {
        name: "w".into(),
        offset: writer_offset,
        lag_offsets: 0,
        lag_ms: 0,
        lag_at_least: false,
    }];
    nodes.extend(readers.iter().map(|(name, offset, lag_ms)| NodeProgress {
        name: name.to_string(),
        offset: *offset,
        lag_offsets: writer_offset.saturating_sub(*offset),
        lag_ms: *lag_ms,
        lag_at_least: false,
    }));
    Replication {
        epoch,
        writer_offset,
        measured_at_ms,
        nodes,
    }
}

fn following(fake: &FakeElection, extra: &str) -> String {
    format!(
        "topology: {{ election_url: \"{}\" }}\nfailover: {{ hold_writes: 1s }}\n{extra}",
        fake.url
    )
}

/// Publishes `t` and waits until the proxy routes by it.
async fn publish(fake: &FakeElection, proxy: &Proxy, t: Topology) {
    let revision = t.revision;
    fake.publish(t);
    eventually(&format!("the proxy has revision {revision}"), || async {
        get(proxy.admin, "/health/ready").await.json()["revision"] == revision
    })
    .await;
}

/// Which nodes answered `n` GETs carrying `headers`.
async fn readers_of(proxy: &Proxy, n: usize, headers: &[(&str, &str)]) -> BTreeSet<String> {
    let mut who = BTreeSet::new();
    for i in 0..n {
        let r = send(proxy.addr, "GET", &format!("/kv/k{i}"), headers, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        who.insert(r.header("x-backend").unwrap_or("-").to_string());
    }
    who
}

fn names(ns: &[&str]) -> BTreeSet<String> {
    ns.iter().map(|n| n.to_string()).collect()
}

async fn put(proxy: &Proxy, path: &str) -> Reply {
    let r = send(proxy.addr, "PUT", path, &[], b"v").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// The token of a `Set-Cookie: rwp_read_after=...` answer field, checked for its attributes
/// (`Max-Age` 10: the default window).
fn cookie_token(r: &Reply) -> String {
    cookie_token_for(r, 10)
}

fn cookie_token_for(r: &Reply, max_age: u64) -> String {
    let v = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {:?}", r.headers));
    let rest = v
        .strip_prefix("rwp_read_after=")
        .expect("the cookie's name");
    let (token, attributes) = rest.split_once(';').expect("attributes");
    assert_eq!(
        attributes.trim(),
        format!("Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")
    );
    token.to_string()
}

/// `v1-<epoch>-<offset>-<source>-<unix_ms>` split, the time checked to be within
/// `[before, after]`.
fn token_parts(token: &str, before: u64, after: u64) -> (u64, u64, String) {
    let parts: Vec<&str> = token.split('-').collect();
    assert_eq!(parts.len(), 5, "{token}");
    assert_eq!(parts[0], "v1", "{token}");
    let at: u64 = parts[4].parse().unwrap();
    assert!(before <= at && at <= after, "{token}: {before}..{after}");
    (
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_carries_a_token_that_sends_its_reads_only_where_the_write_is() {
    let nodes = Nodes::start(3).await;
    let measured = now_ms();
    // r1 is behind the offsets the writer will report, r0 and r2 are level.
    let first = nodes.document(
        3,
        1,
        Some(round(
            3,
            measured,
            &[("r0", 100, 0), ("r1", 60, 5000), ("r2", 100, 0)],
        )),
    );
    let fake = FakeElection::start(first).await;
    let proxy = Proxy::start(&following(
        &fake,
        "routing: { read_your_writes: { enabled: true } }",
    ))
    .await;
    nodes
        .writer
        .answer_writes_with(&[("X-Replication-Offset", "80")]);

    let before = now_ms();
    let w = put(&proxy, "/kv/a").await;
    let token = cookie_token(&w);
    assert_eq!(
        token_parts(&token, before, now_ms()),
        (3, 80, "w".to_string())
    );
    assert_eq!(
        w.header("x-replication-offset"),
        Some("80"),
        "the node's own field goes on"
    );
    let cookie = format!("theme=dark; rwp_read_after={token}");
    assert_eq!(
        readers_of(&proxy, 12, &[("cookie", &cookie)]).await,
        names(&["r0", "r2"]),
        "only the readers at offset 80 or past it"
    );
    // Without the token: every reader.
    assert_eq!(readers_of(&proxy, 9, &[]).await, names(&["r0", "r1", "r2"]));

    // A write no reader has reached yet: its read goes to the writer, as its other reads do.
    nodes
        .writer
        .answer_writes_with(&[("X-Replication-Offset", "150")]);
    let token = cookie_token(&put(&proxy, "/kv/b").await);
    assert_eq!(token_parts(&token, before, now_ms()).1, 150);
    let cookie = format!("rwp_read_after={token}");
    assert_eq!(
        readers_of(&proxy, 3, &[("cookie", &cookie)]).await,
        names(&["w"])
    );
    let seen = nodes.writer.seen();
    let read = seen.iter().find(|s| s.method == "GET").expect("a read");
    assert_eq!(
        read.headers.get("x-writer-epoch").unwrap(),
        "3",
        "a read for the writer carries the epoch as every request to the writer does"
    );

    // Answers that are not 2xx, and reads, get no token.
    let bad = send(proxy.addr, "PUT", "/bad/x", &[], b"v").await.unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("set-cookie"), None);
    assert_eq!(get(proxy.addr, "/kv/a").await.header("set-cookie"), None);

    let m = proxy.metrics().await;
    for (series, want) in [
        (
            r#"rw_proxy_read_your_writes_total{reason="covered",target="readers"}"#,
            12.0,
        ),
        (
            r#"rw_proxy_read_your_writes_total{reason="not_caught_up",target="writer"}"#,
            3.0,
        ),
        (
            r#"rw_proxy_read_your_writes_tokens_total{source="writer"}"#,
            2.0,
        ),
        (
            r#"rw_proxy_read_your_writes_tokens_total{source="published"}"#,
            0.0,
        ),
    ] {
        assert_eq!(value_or_zero(&m, series), want, "{series}\n{m}");
    }
    assert!(
        m.contains(r#"rw_proxy_read_your_writes_total{reason="garbled",target="writer"} 0"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_writers_offset_the_time_decides_and_odd_tokens_read_from_the_writer() {
    let nodes = Nodes::start(3).await;
    let measured = now_ms() - 1000;
    // r1's point is 5 s before the round, r0's and r2's the round itself.
    let with_round = |revision| {
        nodes.document(
            3,
            revision,
            Some(round(
                3,
                measured,
                &[("r0", 100, 0), ("r1", 60, 5000), ("r2", 100, 0)],
            )),
        )
    };
    let fake = FakeElection::start(with_round(1)).await;
    // A window long enough that a token written before the round is young whatever this
    // machine's pace.
    let proxy = Proxy::start(&following(
        &fake,
        "routing: { read_your_writes: { enabled: true, window: 1h } }",
    ))
    .await;

    // No offset on the answer: the published writer offset, marked as such.
    let before = now_ms();
    let token = cookie_token_for(&put(&proxy, "/kv/a").await, 3600);
    assert_eq!(
        token_parts(&token, before, now_ms()),
        (3, 100, "p".to_string())
    );
    // Written after the round: nobody is known to have it, however far their offsets are.
    let cookie = format!("rwp_read_after={token}");
    assert_eq!(
        readers_of(&proxy, 3, &[("cookie", &cookie)]).await,
        names(&["w"])
    );
    // Written 3 s before the round: r0 and r2 have it, r1 (5 s behind) may not.
    let old = format!("rwp_read_after=v1-3-0-p-{}", measured - 3000);
    assert_eq!(
        readers_of(&proxy, 12, &[("cookie", &old)]).await,
        names(&["r0", "r2"])
    );

    // Another epoch's token, a garbled one: the writer. One past the window: an ordinary read.
    let other_epoch = format!("rwp_read_after=v1-2-1-w-{}", now_ms());
    assert_eq!(
        readers_of(&proxy, 2, &[("cookie", &other_epoch)]).await,
        names(&["w"])
    );
    assert_eq!(
        readers_of(&proxy, 2, &[("cookie", "rwp_read_after=v1-3-x")]).await,
        names(&["w"])
    );
    let expired = format!("rwp_read_after=v1-3-999999-w-{}", now_ms() - 3_601_000);
    assert_eq!(
        readers_of(&proxy, 9, &[("cookie", &expired)]).await,
        names(&["r0", "r1", "r2"])
    );

    // No round known: a token of this epoch reads from the writer, a write's token says 0.
    publish(&fake, &proxy, nodes.document(3, 2, None)).await;
    let young = format!("rwp_read_after=v1-3-0-w-{}", now_ms());
    assert_eq!(
        readers_of(&proxy, 2, &[("cookie", &young)]).await,
        names(&["w"])
    );
    let before = now_ms();
    let token = cookie_token_for(&put(&proxy, "/kv/c").await, 3600);
    assert_eq!(
        token_parts(&token, before, now_ms()),
        (3, 0, "p".to_string())
    );
    // A round of another epoch than the document's is no round.
    let mut stale_round = with_round(3);
    stale_round.epoch = 4;
    publish(&fake, &proxy, stale_round).await;
    let young = format!("rwp_read_after=v1-4-0-w-{}", now_ms());
    assert_eq!(
        readers_of(&proxy, 2, &[("cookie", &young)]).await,
        names(&["w"])
    );

    // No writer at all: such a read is refused, never answered by a reader that may be stale.
    let mut no_writer = nodes.document(5, 4, None);
    no_writer.writer = None;
    publish(&fake, &proxy, no_writer).await;
    let r = send(proxy.addr, "GET", "/kv/a", &[("cookie", &young)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_upstream");
    // An ordinary read still goes to a reader.
    assert_eq!(get(proxy.addr, "/kv/a").await.status, 200);

    let m = proxy.metrics().await;
    for (reason, want) in [
        ("not_caught_up", 3.0),
        ("other_epoch", 3.0),
        ("garbled", 2.0),
        ("no_replication", 4.0),
    ] {
        let series =
            format!(r#"rw_proxy_read_your_writes_total{{reason="{reason}",target="writer"}}"#);
        assert_eq!(value_or_zero(&m, &series), want, "{series}\n{m}");
    }
    assert_eq!(
        value_or_zero(
            &m,
            r#"rw_proxy_read_your_writes_total{reason="covered",target="readers"}"#
        ),
        12.0
    );
    assert_eq!(
        value_or_zero(
            &m,
            r#"rw_proxy_read_your_writes_tokens_total{source="published"}"#
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_header_mode_the_token_is_a_field_each_way() {
    let nodes = Nodes::start(2).await;
    let first = nodes.document(
        7,
        1,
        Some(round(7, now_ms(), &[("r0", 100, 0), ("r1", 10, 9000)])),
    );
    let fake = FakeElection::start(first).await;
    let proxy = Proxy::start(&following(
        &fake,
        "routing: { read_your_writes: { enabled: true, token: header, offset_header: X-Offset } }",
    ))
    .await;
    nodes.writer.answer_writes_with(&[("X-Offset", "50")]);
    let before = now_ms();
    let w = put(&proxy, "/kv/a").await;
    assert_eq!(w.header("set-cookie"), None);
    let token = w
        .header("x-read-after")
        .expect("the token field")
        .to_string();
    assert_eq!(
        token_parts(&token, before, now_ms()),
        (7, 50, "w".to_string())
    );
    assert_eq!(
        readers_of(&proxy, 6, &[("x-read-after", &token)]).await,
        names(&["r0"])
    );
    // The cookie means nothing in this mode.
    let cookie = format!("rwp_read_after=v1-7-999-w-{}", now_ms());
    assert_eq!(
        readers_of(&proxy, 6, &[("cookie", &cookie)]).await,
        names(&["r0", "r1"])
    );
    nodes.writer.answer_writes_with(&[("X-Offset", "101")]);
    let token = put(&proxy, "/kv/b")
        .await
        .header("x-read-after")
        .expect("the token field")
        .to_string();
    assert_eq!(
        readers_of(&proxy, 2, &[("x-read-after", &token)]).await,
        names(&["w"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_reader_gets_no_reads_until_it_is_under_half_the_limit() {
    let nodes = Nodes::start(2).await;
    let lags = |revision, lag_r0: u64, lag_r1: u64| {
        nodes.document(
            3,
            revision,
            Some(round(
                3,
                now_ms(),
                &[("r0", 100 - lag_r0, lag_r0), ("r1", 100 - lag_r1, lag_r1)],
            )),
        )
    };
    let fake = FakeElection::start(lags(1, 0, 0)).await;
    let proxy = Proxy::start(&following(
        &fake,
        "routing: { max_reader_lag: { offsets: 40 } }",
    ))
    .await;
    assert_eq!(readers_of(&proxy, 6, &[]).await, names(&["r0", "r1"]));

    publish(&fake, &proxy, lags(2, 0, 90)).await;
    assert_eq!(readers_of(&proxy, 6, &[]).await, names(&["r0"]));
    proxy
        .wait_log("reader lags past routing.max_reader_lag: out of the read pool")
        .await;
    let ready = get(proxy.admin, "/health/ready").await.json();
    assert_eq!(ready["lagging_readers"], serde_json::json!(["r1"]));
    assert_eq!(ready["readers"], serde_json::json!(["r0", "r1"]));
    let m = proxy.metrics().await;
    assert_eq!(value_or_zero(&m, "rw_proxy_lagging_readers"), 1.0);
    assert_eq!(
        value_or_zero(&m, r#"rw_proxy_reader_lag_offsets{reader="r1"}"#),
        90.0
    );
    assert_eq!(
        value_or_zero(&m, r#"rw_proxy_reader_lag_seconds{reader="r1"}"#),
        0.09
    );

    // Just under the limit: still out (it comes back under half of it).
    publish(&fake, &proxy, lags(3, 0, 39)).await;
    assert_eq!(readers_of(&proxy, 6, &[]).await, names(&["r0"]));
    // Caught up.
    publish(&fake, &proxy, lags(4, 0, 19)).await;
    assert_eq!(readers_of(&proxy, 6, &[]).await, names(&["r0", "r1"]));
    proxy.wait_log("reader back in the read pool").await;
    assert_eq!(proxy.metric("rw_proxy_lagging_readers").await, 0.0);

    // Both out: reads fall back to the writer, as with no readers at all.
    publish(&fake, &proxy, lags(5, 41, 41)).await;
    assert_eq!(readers_of(&proxy, 3, &[]).await, names(&["w"]));
    assert_eq!(proxy.metric("rw_proxy_lagging_readers").await, 2.0);

    // A reader that leaves the topology takes its series with it.
    let mut gone = lags(6, 0, 41);
    gone.readers.retain(|r| r.name == "r0");
    publish(&fake, &proxy, gone).await;
    assert_eq!(readers_of(&proxy, 3, &[]).await, names(&["r0"]));
    let m = proxy.metrics().await;
    assert!(!m.contains(r#"reader="r1""#), "{m}");
    assert!(
        m.contains(r#"rw_proxy_reader_lag_offsets{reader="r0"} 0"#),
        "{m}"
    );
    assert_eq!(value(&m, "rw_proxy_lagging_readers"), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_features_nothing_changes_until_a_reload_turns_them_on() {
    let nodes = Nodes::start(2).await;
    // r1 is far behind and no reader has the token's offset.
    let first = nodes.document(
        3,
        1,
        Some(round(3, now_ms(), &[("r0", 100, 0), ("r1", 0, 600_000)])),
    );
    let fake = FakeElection::start(first).await;
    let mut proxy = Proxy::start(&following(&fake, "")).await;
    nodes
        .writer
        .answer_writes_with(&[("X-Replication-Offset", "100")]);
    let w = put(&proxy, "/kv/a").await;
    assert_eq!(w.header("set-cookie"), None);
    assert_eq!(w.header("x-read-after"), None);
    let cookie = format!("rwp_read_after=v1-3-1000-w-{}", now_ms());
    assert_eq!(
        readers_of(
            &proxy,
            6,
            &[("cookie", &cookie), ("x-read-after", "garbled")]
        )
        .await,
        names(&["r0", "r1"])
    );
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"rw_proxy_read_your_writes_total{reason="not_caught_up",target="writer"} 0"#),
        "{m}"
    );
    assert_eq!(value(&m, "rw_proxy_lagging_readers"), Some(0.0), "{m}");

    // Turned on by a reload: the round in use is judged again at once.
    proxy.write_config(&following(
        &fake,
        "routing: { max_reader_lag: { duration: 5s }, read_your_writes: { enabled: true } }",
    ));
    eventually("the reload is applied", || async {
        proxy
            .metric(r#"rw_proxy_config_reloads_total{result="success"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(put(&proxy, "/kv/b").await.header("set-cookie").is_some());
    assert_eq!(readers_of(&proxy, 4, &[]).await, names(&["r0"]));
    assert_eq!(
        readers_of(&proxy, 2, &[("cookie", &cookie)]).await,
        names(&["w"])
    );

    // A bad reload keeps what runs.
    proxy.write_config(&following(
        &fake,
        "routing: { max_reader_lag: { duration: 5s }, read_your_writes: { enabled: true, window: 0s } }",
    ));
    eventually("the reload is rejected", || async {
        proxy
            .metric(r#"rw_proxy_config_reloads_total{result="error"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(put(&proxy, "/kv/c").await.header("set-cookie").is_some());
    assert_eq!(readers_of(&proxy, 4, &[]).await, names(&["r0"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_without_replication_progress_is_logged_once_and_its_return_too() {
    const MISSING: &str = "the topology carries no replication progress (election.progress not \
                           configured, a static topology, or no progress round of this epoch \
                           yet): reads with a read-your-writes token go to the writer, and \
                           routing.max_reader_lag keeps no reader out";
    const BACK: &str = "replication progress published again";
    let nodes = Nodes::start(2).await;
    // As from a writer-election without election.progress: no replication at all.
    let fake = FakeElection::start(nodes.document(4, 1, None)).await;
    let proxy = Proxy::start(&following(
        &fake,
        "routing: { read_your_writes: { enabled: true } }",
    ))
    .await;
    eventually("the warning about missing progress", || async {
        proxy.log().contains(MISSING)
    })
    .await;
    // Another document without it (a reader fewer: the proxy only takes a changed one): no
    // second warning.
    let mut fewer = nodes.document(4, 2, None);
    fewer.readers.pop();
    publish(&fake, &proxy, fewer).await;
    publish(
        &fake,
        &proxy,
        nodes.document(4, 3, Some(round(4, now_ms(), &[("r0", 100, 0)]))),
    )
    .await;
    eventually("the line saying progress is back", || async {
        proxy.log().contains(BACK)
    })
    .await;
    let log = proxy.log();
    assert_eq!(log.matches(MISSING).count(), 1, "{log}");
    assert_eq!(log.matches(BACK).count(), 1, "{log}");
}
