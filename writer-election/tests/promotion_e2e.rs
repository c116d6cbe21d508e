//! Promotion presets end to end: the writer-election binary against fake nodes on 127.0.0.1 that
//! serve exactly one node library release's calls (tests/support/cluster.rs `Api`), configured with nothing
//! but `promotion.preset`.

mod support;

use std::time::{Duration, Instant};

use support::cluster::*;
use support::wait_until;

const LONG: Duration = Duration::from_secs(60);

struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(nodes: &[TestNode], api: Api, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("election-state.json");
    let config = dir.path().join("election.yaml");
    std::fs::write(&config, preset_config(nodes, api, &state, extra)).expect("write config");
    Setup { _dir: dir, config }
}

async fn metric(e: &Election, key: &str) -> f64 {
    e.metric(key).await.unwrap_or(0.0)
}

const CHECK_OK: &str = r#"writer_election_writer_checks_total{result="ok"}"#;
const CHECK_NOT: &str = r#"writer_election_writer_checks_total{result="not_distributor"}"#;
const CHECK_ERR: &str = r#"writer_election_writer_checks_total{result="error"}"#;
const REPROMOTED_OK: &str = r#"writer_election_repromotions_total{result="ok"}"#;
const REPROMOTED_FAILED: &str = r#"writer_election_repromotions_total{result="failed"}"#;
const EXCLUDED: &str = r#"writer_election_candidates_excluded_total{reason="promotion_refused"}"#;

/// The preset alone: nodes that serve only that release's paths become ready (the probe path
/// follows the preset), node-0 is activated (start, finish polled until true, or the single
/// legacy call), and the published writer is then checked every probe interval.
async fn preset_promotes_and_checks(api: Api) {
    let nodes = api_nodes(3, api).await;
    let s = setup(&nodes, api, "");
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("node-0 is the writer, all ready", LONG, |t| {
            writer_name(t) == Some("node-0") && t.epoch == 1 && all_ready(t, 3)
        })
        .await;
    assert_eq!(t.epoch, 1);
    assert!(nodes[0].promoted(), "{api:?}: node-0 activated");
    assert_eq!(nodes[0].start_calls(), 1, "{api:?}: one start");
    if api.paths().finish.is_some() {
        // The fake answers false to the first finish, true to the second.
        assert!(
            nodes[0].finish_calls() >= 2,
            "{api:?}: finish polled until true"
        );
    }
    for n in &nodes[1..] {
        assert_eq!(n.start_attempts(), 0, "{api:?}: {} left alone", n.name);
        assert!(!n.promoted());
    }
    // The check loop: the writer is asked again and again, and answers true.
    let before = nodes[0].check_calls();
    wait_until(LONG, "the writer is checked again", || {
        nodes[0].check_calls() >= before + 3
    })
    .await;
    assert!(metric(&e, CHECK_OK).await >= 1.0);
    assert_eq!(metric(&e, CHECK_NOT).await, 0.0);
    assert_eq!(metric(&e, REPROMOTED_OK).await, 0.0);
    // Only the writer is checked; and true means nothing is done to it.
    assert_eq!(nodes[1].check_calls(), 0);
    assert_eq!(nodes[0].start_calls(), 1, "{api:?}: no second activation");
    let t = e.topology().await.expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (Some("node-0"), 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preset_microstream() {
    preset_promotes_and_checks(Api::Microstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preset_microstream_legacy() {
    preset_promotes_and_checks(Api::MicrostreamLegacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preset_eclipse_datagrid() {
    preset_promotes_and_checks(Api::EclipseDatagrid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preset_eclipse_datagrid_unprefixed() {
    preset_promotes_and_checks(Api::EclipseDatagridUnprefixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_another_release_never_become_ready_or_writer() {
    // A preset that does not match the image: its readiness path is not served, so nothing is
    // elected (rather than a writer that was never activated).
    let nodes = api_nodes(2, Api::EclipseDatagrid).await;
    let s = setup(&nodes, Api::Microstream, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("both nodes probed unready", LONG, |t| {
        t.nodes.len() == 2 && t.nodes.iter().all(|n| !n.ready)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = e.topology().await.expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (None, 0));
    assert!(nodes.iter().all(|n| n.start_attempts() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_promotion_elects_the_next_candidate() {
    let nodes = api_nodes(3, Api::Microstream).await;
    nodes[0].set_fail_start(true);
    let s = setup(&nodes, Api::Microstream, "");
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("node-1 is the writer", LONG, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    // node-0 was never recorded: node-1 gets epoch 1.
    assert_eq!(t.epoch, 1);
    assert!(nodes[0].start_attempts() >= 1, "node-0 was tried first");
    assert!(!nodes[0].promoted());
    assert!(nodes[1].promoted());
    // An error status is a failed attempt, not a backup node.
    assert_eq!(metric(&e, EXCLUDED).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_node_is_never_elected_even_when_it_ranks_first() {
    let mut nodes = api_nodes(3, Api::EclipseDatagrid).await;
    nodes[0].set_backup(true);
    let s = setup(&nodes, Api::EclipseDatagrid, "");
    let e = Election::start(&s.config, &[]);
    let t = e
        .wait_for("node-1 is the writer", LONG, |t| {
            writer_name(t) == Some("node-1") && all_ready(t, 3)
        })
        .await;
    assert_eq!(t.epoch, 1);
    let refused_at = Instant::now();
    assert_eq!(nodes[0].start_attempts(), 1, "asked once");
    assert_eq!(metric(&e, EXCLUDED).await, 1.0);
    // Longer than the promotion-failure penalty (10 s at this probe interval): a backup node is
    // out for good, not for a while.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(refused_at.elapsed())).await;
    nodes[1].stop().await;
    let t = e
        .wait_for("node-2 is the writer", LONG, |t| {
            writer_name(t) == Some("node-2")
        })
        .await;
    assert_eq!(t.epoch, 2);
    assert_eq!(
        nodes[0].start_attempts(),
        1,
        "the backup node was not asked again"
    );
    assert!(!nodes[0].promoted());
    assert_eq!(metric(&e, EXCLUDED).await, 1.0);
    let refusals = e
        .log_text()
        .lines()
        .filter(|l| l.contains("refused promotion"))
        .count();
    assert_eq!(refusals, 1, "logged once:\n{}", e.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_role_is_promoted_again_at_its_epoch() {
    let nodes = api_nodes(3, Api::Microstream).await;
    let s = setup(&nodes, Api::Microstream, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 is the writer", LONG, |t| {
        writer_name(t) == Some("node-0") && t.epoch == 1
    })
    .await;
    assert_eq!(nodes[0].start_calls(), 1);
    let revision = e.topology().await.expect("topology").revision;

    // Like a restarted writer process: up and ready, but no longer the distributor.
    nodes[0].lose_role();
    wait_until(LONG, "node-0 is activated again", || {
        nodes[0].promoted() && nodes[0].start_calls() == 2
    })
    .await;
    let t = e.topology().await.expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (Some("node-0"), 1));
    assert_eq!(
        t.revision, revision,
        "nothing to publish: same writer, same epoch"
    );
    assert_eq!(metric(&e, REPROMOTED_OK).await, 1.0);
    assert!(metric(&e, CHECK_NOT).await >= 1.0);
    assert!(nodes[1..].iter().all(|n| n.start_attempts() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_be_promoted_again_is_failed_over() {
    let nodes = api_nodes(3, Api::Microstream).await;
    let s = setup(&nodes, Api::Microstream, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 is the writer", LONG, |t| {
        writer_name(t) == Some("node-0") && t.epoch == 1
    })
    .await;
    nodes[0].set_fail_start(true);
    nodes[0].lose_role();
    let t = e
        .wait_for("node-1 is the writer at epoch 2", LONG, |t| {
            writer_name(t) == Some("node-1")
        })
        .await;
    assert_eq!(t.epoch, 2);
    assert!(nodes[1].promoted());
    assert!(!nodes[0].promoted());
    assert_eq!(metric(&e, REPROMOTED_FAILED).await, 1.0);
    assert_eq!(
        metric(
            &e,
            r#"writer_election_failovers_total{reason="writer-lost-role"}"#
        )
        .await,
        1.0
    );
    // node-0 still runs and is ready: it stays in the topology as a reader.
    let t = e
        .wait_for("node-0 a ready reader", LONG, |t| {
            t.nodes.iter().any(|n| n.name == "node-0" && n.ready)
        })
        .await;
    assert_eq!(writer_name(&t), Some("node-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_an_answer_changes_nothing() {
    let nodes = api_nodes(2, Api::Microstream).await;
    let s = setup(&nodes, Api::Microstream, "");
    let e = Election::start(&s.config, &[]);
    e.wait_for("node-0 is the writer", LONG, |t| {
        writer_name(t) == Some("node-0") && all_ready(t, 2)
    })
    .await;
    nodes[0].set_check_fails(true);
    let before = nodes[0].check_calls();
    wait_until(LONG, "several failed checks", || {
        nodes[0].check_calls() >= before + 5
    })
    .await;
    assert!(metric(&e, CHECK_ERR).await >= 4.0);
    assert_eq!(nodes[0].start_calls(), 1, "no re-promotion");
    assert_eq!(nodes[1].start_attempts(), 0, "no failover");
    let t = e.topology().await.expect("topology");
    assert_eq!((writer_name(&t), t.epoch), (Some("node-0"), 1));
    // Logged once per episode, not per check.
    let warned = e
        .log_text()
        .lines()
        .filter(|l| l.contains("writer check got no answer") && l.contains("WARN"))
        .count();
    assert_eq!(warned, 1, "{}", e.log_text());
}
