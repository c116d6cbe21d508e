//! Replication-aware reads end to end (docs/consistency.md): demo nodes that apply the log late
//! (`--lag`, or `POST /admin/lag` at runtime), writer-election measuring their offsets
//! (`election.progress`), rw-proxy routing by what it publishes. A read carrying the
//! read-your-writes token returns the write before it, and still goes to readers that have
//! caught up; the same reads without the token do not; a reader past `max_reader_lag` gets no
//! reads until it is back; a token of an older epoch goes to the writer.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use loadtest::cluster::{Cluster, ClusterOptions, MaxReaderLag};
use loadtest::procs::wait_for;
use loadtest::run::pairs::{PairConfig, PairReport, ReadDelay, TokenUse};
use loadtest::run::{self, LoadConfig, Mode};
use support::*;

const LAG: &str = "400ms";

async fn cluster(opts: ClusterOptions) -> Cluster {
    let bin_dir = ensure_service_binaries();
    Cluster::start(&ClusterOptions {
        bin_dir: Some(bin_dir),
        read_your_writes: true,
        // Rounds often enough that a reader is seen caught up soon after it is.
        progress_interval: Some(Duration::from_millis(100)),
        ..opts
    })
    .await
    .unwrap()
}

async fn writer_name(c: &Cluster) -> String {
    c.topology().await.unwrap().writer.unwrap().name
}

/// `pairs` PUT->GET pairs through the proxy on `connections` clients, each read
/// `read_delay` after its write's answer.
async fn pairs(
    c: &Cluster,
    token: TokenUse,
    pairs: u64,
    connections: usize,
    read_delay: ReadDelay,
) -> PairReport {
    let cfg = LoadConfig {
        target: run::parse_target(&c.proxy_url).await.unwrap(),
        mode: Mode::Closed { connections },
        // Only a bound: the pair count ends the run.
        duration: Duration::from_secs(120),
        read_ratio: 0.5,
        keys: 1,
        value_size: 32,
        timeout: Duration::from_secs(10),
        headers: vec![],
        unique_write_keys: true,
        record_history: false,
        progress: false,
    };
    let mut pc = PairConfig::new(token);
    pc.pairs = Some(pairs);
    pc.read_delay = read_delay;
    let out = run::execute_with(
        cfg,
        Some(pc),
        c.proxy_url.clone(),
        tokio::time::Instant::now(),
    )
    .await;
    out.report.read_your_writes.unwrap()
}

fn delay(min_ms: u64, max_ms: u64) -> ReadDelay {
    ReadDelay {
        min: Duration::from_millis(min_ms),
        max: Duration::from_millis(max_ms),
    }
}

fn served_by_readers(p: &PairReport, writer: &str) -> u64 {
    p.stats
        .reads_by_node
        .iter()
        .filter(|(n, _)| *n != writer)
        .map(|(_, c)| c)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_reads_see_their_write_and_still_go_to_readers_that_caught_up() {
    let mut c = cluster(ClusterOptions {
        node_args: vec!["--lag".into(), LAG.into()],
        ..ClusterOptions::default()
    })
    .await;
    let writer = writer_name(&c).await;

    // Without the token the same pairs read from readers that do not have the write yet: this
    // is what the test below would see if the token did nothing.
    let off = pairs(&c, TokenUse::Off, 200, 20, delay(0, 1000)).await;
    assert_eq!(off.stats.checked, 200, "{off:#?}");
    assert!(
        off.stats.stale > 0,
        "no stale read without the token: {off:#?}"
    );

    // Half of the reads come before the readers can have the write (to the writer), the rest
    // after they caught up (to them): reads with a delay past the lag plus a round or two.
    let on = pairs(&c, TokenUse::On, 1000, 50, delay(0, 1000)).await;
    assert_eq!(on.stats.write_failed + on.stats.read_failed, 0, "{on:#?}");
    assert_eq!(on.stats.checked, 1000, "{on:#?}");
    assert_eq!(on.stats.tokens_issued, 1000, "{on:#?}");
    assert_eq!(on.stats.stale, 0, "stale reads with the token: {on:#?}");
    let by_readers = served_by_readers(&on, &writer);
    assert!(
        by_readers >= 100,
        "readers served {by_readers} of 1000 token reads (writer {writer}): {on:#?}"
    );
    assert!(
        on.stats.reads_by_node.get(&writer).copied().unwrap_or(0) > 0,
        "reads right after the write must have gone to the writer: {on:#?}"
    );
    tokio::task::block_in_place(|| c.stop(WAIT));
}

/// Plain reads through the proxy, counted by the node that answered.
async fn reads_by_node(c: &Cluster, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for i in 0..n {
        let r = c
            .client
            .send(
                http::Method::GET,
                &format!("{}/kv/gate-{}", c.proxy_url, i % 10),
                headers,
                "",
            )
            .await
            .unwrap();
        assert!(
            r.status == 200 || r.status == 404,
            "{}: {}",
            r.status,
            r.text()
        );
        let node = r.header("x-node").unwrap_or("?").to_owned();
        *by.entry(node).or_default() += 1;
    }
    by
}

/// `POST /admin/lag` on the node at `url`.
async fn write_through_proxy(c: &Cluster, n: usize) {
    for i in 0..n {
        let key = format!("gate-{}", i % 10);
        let r = c
            .client
            .put(&format!("{}/kv/{key}", c.proxy_url), format!("v{i}"))
            .await
            .unwrap_or_else(|e| panic!("PUT {key} through the proxy: {e:#}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_past_max_reader_lag_gets_no_reads_until_it_caught_up() {
    let mut c = cluster(ClusterOptions {
        max_reader_lag: Some(MaxReaderLag {
            offsets: Some(20),
            duration: None,
        }),
        ..ClusterOptions::default()
    })
    .await;
    let writer = writer_name(&c).await;
    let laggard = c.nodes.iter().find(|n| n.name != writer).unwrap().clone();

    set_lag(&laggard.url, "1h").await;
    write_through_proxy(&c, 60).await;
    let cr = &c;
    wait_for(
        "the proxy to take the lagging reader out",
        WAIT,
        || async move {
            (cr.proxy_metric("rw_proxy_lagging_readers").await == Some(1.0)).then_some(())
        },
    )
    .await
    .unwrap();
    let topo = c.topology().await.unwrap();
    let seen = topo
        .replication
        .as_ref()
        .and_then(|r| r.nodes.iter().find(|n| n.name == laggard.name))
        .map(|n| n.lag_offsets);
    assert!(seen.is_some_and(|l| l > 20), "{topo:#?}");
    let out = reads_by_node(&c, 200, &[]).await;
    assert_eq!(out.get(&laggard.name), None, "{out:?}");
    assert_eq!(out.get(&writer), None, "readers serve reads: {out:?}");
    assert_eq!(out.values().sum::<u64>(), 200);

    // Caught up: back in the pool once under half the limit.
    set_lag(&laggard.url, "0s").await;
    let cr = &c;
    wait_for("the proxy to take the reader back", WAIT, || async move {
        (cr.proxy_metric("rw_proxy_lagging_readers").await == Some(0.0)).then_some(())
    })
    .await
    .unwrap();
    let back = reads_by_node(&c, 200, &[]).await;
    assert!(
        back.get(&laggard.name).copied().unwrap_or(0) > 0,
        "the reader got no reads after catching up: {back:?}"
    );
    tokio::task::block_in_place(|| c.stop(WAIT));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_of_an_older_epoch_goes_to_the_writer() {
    let mut c = cluster(ClusterOptions::default()).await;
    let topo = c.topology().await.unwrap();
    let writer = topo.writer.clone().unwrap().name;
    // A switchover, so that the cluster's epoch has an older one before it.
    let r = c.switchover().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let cr = &c;
    let old_writer = &writer;
    let after = wait_for("the new writer to be published", WAIT, || async move {
        cr.topology()
            .await
            .ok()
            .filter(|t| t.writer.as_ref().is_some_and(|w| w.name != *old_writer))
    })
    .await
    .unwrap();
    let epoch = after.epoch;
    let new_writer = after.writer.unwrap().name;
    write_through_proxy(&c, 10).await;
    // The new epoch's replication reaches the proxy.
    wait_for(
        "a replication round of the new epoch",
        WAIT,
        || async move {
            cr.topology()
                .await
                .ok()
                .and_then(|t| t.replication)
                .filter(|r| r.epoch == epoch && r.nodes.iter().all(|n| n.lag_offsets == 0))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let now_ms = loadtest::node::log::now_ms();
    // Offset 0: every reader of the token's epoch has it, so only the epoch decides.
    let current = format!("rwp_read_after=v1-{epoch}-0-w-{now_ms}");
    let old = format!("rwp_read_after=v1-{}-0-w-{now_ms}", epoch - 1);
    let with_current = reads_by_node(&c, 60, &[("Cookie", &current)]).await;
    assert!(
        with_current
            .iter()
            .any(|(n, count)| *n != new_writer && *count > 0),
        "a token of this epoch that every reader covers goes to readers: {with_current:?}"
    );
    let with_old = reads_by_node(&c, 60, &[("Cookie", &old)]).await;
    assert_eq!(
        with_old,
        BTreeMap::from([(new_writer.clone(), 60)]),
        "a token of epoch {} (now {epoch}) reads from the writer",
        epoch - 1
    );
    tokio::task::block_in_place(|| c.stop(WAIT));
}

fn failover_with_lag(fault: &[&str]) -> serde_json::Value {
    short_failover(fault, 100, &["--lag", "300ms", "--token-pair-rate", "60"]).1
}

/// Across a change of writer, with readers that lag: a token of the old epoch reads from the
/// new writer (which applied the whole log before it took writes), a token of the new epoch is
/// compared with the new writer's offsets.
#[test]
fn token_reads_are_never_stale_across_a_switchover_and_a_kill() {
    for fault in [&["--switchover"][..], &["--kill", "writer"][..]] {
        let report = failover_with_lag(fault);
        let t = &report["token_reads"];
        assert_eq!(t["stale"], 0, "{fault:?}: {report:#}");
        assert!(
            t["checked"].as_u64().unwrap() > 100,
            "{fault:?}: {report:#}"
        );
        assert_eq!(report["analysis"]["lost_acked_writes"], 0, "{report:#}");
        let failures = report["failures"].as_array().unwrap();
        assert!(
            !failures
                .iter()
                .any(|f| f.as_str().unwrap().contains("read-your-writes")),
            "{fault:?}: {report:#}"
        );
    }
}
