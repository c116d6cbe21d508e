//! The service as a library (what tests of other crates and HA replicas use), dns discovery, and
//! the topology follower of the client module against a real service.

mod support;

use std::time::Duration;

use support::cluster::*;
use tokio::sync::mpsc;
use writer_election::client::{FollowEvent, FollowOptions, TopologyFollower};
use writer_election::config::ElectionConfig;
use writer_election::{start, ServiceOptions};

const LONG: Duration = Duration::from_secs(60);

async fn wait_writer(url: &str, want: Option<&str>) -> writer_election::topology::Topology {
    test_kit::election::wait_for_topology(url, &format!("writer {want:?}"), LONG, |t| {
        writer_name(t) == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_the_a_records() {
    let node = TestNode::start("unused").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\ndiscovery: {{ dns: {{ name: localhost, port: {}, interval: 200ms }} }}\n\
         probe: {{ interval: 200ms, timeout: 300ms }}\nstate: {{ file: \"{}\" }}\npromotion: {{ preset: none }}\n",
        node.addr.port(),
        dir.path().join("s.json").display()
    );
    let cfg = ElectionConfig::from_yaml_str(&yaml).expect("config");
    let svc = start(cfg, ServiceOptions::default()).await.expect("start");
    let t = wait_writer(&svc.url(), Some("127.0.0.1")).await;
    assert_eq!(t.writer.as_ref().unwrap().address, node.address());
    assert_eq!(t.epoch, 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_moves_past_a_dead_url_and_sees_every_change() {
    let nodes = nodes(2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ElectionConfig::from_yaml_str(&static_config(&nodes, &dir.path().join("s.json"), ""))
        .expect("config");
    let svc = start(cfg, ServiceOptions::default()).await.expect("start");
    wait_writer(&svc.url(), Some("node-0")).await;

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let u = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        u
    };
    let follower = TopologyFollower::new(
        vec![dead.clone(), svc.url()],
        FollowOptions {
            wait: Duration::from_secs(30),
            client_id: Some("test-proxy".into()),
            ..Default::default()
        },
    )
    .expect("follower");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(follower.run(move |ev| {
        let _ = tx.send(ev);
    }));

    let mut saw_unreachable = false;
    let first = loop {
        match tokio::time::timeout(LONG, rx.recv()).await {
            Ok(Some(FollowEvent::Unreachable { url, .. })) => {
                assert_eq!(url, dead);
                saw_unreachable = true;
            }
            Ok(Some(FollowEvent::Updated(t))) => break t,
            other => panic!("no topology: {other:?}"),
        }
    };
    assert!(saw_unreachable);
    assert!(first.writer.is_some());

    // A change reaches the follower through its open blocking query.
    nodes[1].set_ready(false);
    let changed = loop {
        match tokio::time::timeout(LONG, rx.recv()).await {
            Ok(Some(FollowEvent::Updated(t)))
                if t.nodes.iter().any(|n| n.name == "node-1" && !n.ready) =>
            {
                break t
            }
            Ok(Some(_)) => continue,
            other => panic!("change not seen: {other:?}"),
        }
    };
    assert!(changed.revision > first.revision);

    // The service goes away: the follower reports it and keeps trying.
    svc.stop().await;
    loop {
        match tokio::time::timeout(LONG, rx.recv()).await {
            Ok(Some(FollowEvent::Unreachable { .. })) => break,
            Ok(Some(_)) => continue,
            other => panic!("outage not reported: {other:?}"),
        }
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes_are_probed_and_published() {
    // Scale check (functional, not timed): 500 real HTTP nodes on a 1 s interval.
    let nodes = nodes(500).await;
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("listen: \"127.0.0.1:0\"\ndiscovery:\n  static:\n    nodes:\n");
    for n in &nodes {
        yaml.push_str(&format!(
            "      - {{ name: {}, address: \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    yaml.push_str(&format!(
        "probe: {{ interval: 1s, timeout: 2s }}\nstate: {{ file: \"{}\" }}\npromotion: {{ preset: none }}\n",
        dir.path().join("s.json").display()
    ));
    let cfg = ElectionConfig::from_yaml_str(&yaml).expect("config");
    let svc = start(cfg, ServiceOptions::default()).await.expect("start");
    let t = test_kit::election::wait_for_topology(&svc.url(), "500 nodes all ready", LONG, |t| {
        all_ready(t, 500) && t.writer.is_some()
    })
    .await;
    assert_eq!(writer_name(&t), Some("node-0"));
    assert_eq!(t.readers.len(), 499);
    // node-10 after node-9: natural order.
    let pos = |n: &str| t.nodes.iter().position(|x| x.name == n).unwrap();
    assert!(pos("node-9") < pos("node-10"));
    // Every node is probed about once per interval: after a few more seconds each has been
    // probed again (no node is starved).
    let before: Vec<u64> = nodes
        .iter()
        .map(|n| n.state.probes.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    support::wait_until(LONG, "every node is probed again", || {
        nodes
            .iter()
            .zip(&before)
            .all(|(n, b)| n.state.probes.load(std::sync::atomic::Ordering::SeqCst) > *b)
    })
    .await;
    svc.stop().await;
}
