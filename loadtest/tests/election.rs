//! Demo nodes of each storage node API behind the real writer-election binary, configured as
//! `loadtest demo` configures it for that API (its `promotion.preset`, and the preset's
//! readiness path as the probe): the elected node is promoted through the API's own paths and
//! takes writes, every other node refuses them as a non-distributor does, and a backup node
//! ranked first is never elected.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::cluster::{election_config, ClusterOptions, NodeInfo};
use loadtest::node::api::Api;
use loadtest::node::log::{read_all, Line};
use loadtest::procs::{free_port, wait_for, Group};
use support::*;
use topology_client::topology::Topology;

struct Setup {
    dir: tempfile::TempDir,
    group: Group,
    log: std::path::PathBuf,
    nodes: Vec<NodeInfo>,
    election_url: String,
}

/// Nodes named node-1.. (the election's `name` order ranks them so), `extra[i]` added to node i.
async fn start(api: Api, extra: &[&[&str]]) -> Setup {
    let bin_dir = ensure_service_binaries();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stream.log");
    let mut group = Group::new();
    let mut nodes = Vec::new();
    for (i, more) in extra.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let mut args = vec!["--api", api.as_str(), "--promotion-delay", "50ms"];
        args.extend_from_slice(more);
        let url = start_node(&mut group, &name, &log, &args).await;
        let address = url.trim_start_matches("http://").to_owned();
        nodes.push(NodeInfo { name, address, url });
    }
    let opts = ClusterOptions {
        api,
        candidate_order: "name".into(),
        ..ClusterOptions::default()
    };
    let port = free_port().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token").unwrap();
    let listen = format!("127.0.0.1:{port}");
    let cfg = election_config(
        &opts,
        &listen,
        &nodes,
        &dir.path().join("state.json"),
        &token,
    );
    let cfg_path = dir.path().join("election.yaml");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let election = bin_dir.join("writer-election");
    assert_config_accepted(&election, &cfg_path);
    let out = std::fs::File::create(dir.path().join("writer-election.log")).unwrap();
    let mut cmd = Command::new(&election);
    cmd.arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    group.spawn("writer-election", cmd).unwrap();
    Setup {
        dir,
        group,
        log,
        nodes,
        election_url: format!("http://{listen}"),
    }
}

fn assert_config_accepted(election: &Path, cfg: &Path) {
    let out = Command::new(election)
        .arg("--check")
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "writer-election --check refuses {}: {}{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Setup {
    async fn topology(&self) -> Option<Topology> {
        let r = client()
            .get(&format!("{}/v1/topology", self.election_url))
            .await
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    fn election_log(&self) -> String {
        loadtest::cluster::log_tail(&self.dir.path().join("writer-election.log"), 30)
    }

    async fn elected(&self) -> Topology {
        wait_for("writer-election to publish a writer", WAIT, || async {
            self.topology().await.filter(|t| t.writer.is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; writer-election's log:\n{}", self.election_log()))
    }

    async fn distributor(&self, node: &NodeInfo, api: Api) -> (u16, String) {
        let r = client()
            .get(&format!("{}{}", node.url, api.distributor_path()))
            .await
            .unwrap();
        (r.status, r.text())
    }
}

async fn elected_node_takes_writes_the_others_refuse(api: Api) {
    let mut s = start(api, &[&[], &[], &[]]).await;
    let t = s.elected().await;
    let writer = t.writer.clone().unwrap();
    let epoch = t.epoch.to_string();
    for n in &s.nodes {
        let is_writer = n.name == writer.name;
        let (status, body) = s.distributor(n, api).await;
        assert_eq!(status, 200, "{api} {}", n.name);
        assert_eq!(body, is_writer.to_string(), "{api} {}", n.name);
        let r = client()
            .send(
                http::Method::PUT,
                &format!("{}/kv/from-{}", n.url, n.name),
                &[("X-Writer-Epoch", epoch.as_str())],
                "v",
            )
            .await
            .unwrap();
        if is_writer {
            assert_eq!(r.status, 200, "{api} writer {}: {}", n.name, r.text());
        } else {
            assert_eq!(r.status, 400, "{api} reader {}: {}", n.name, r.text());
            assert_eq!(r.header(api.nad_header()), Some("true"), "{api}");
        }
    }
    let lines = read_all(&s.log).unwrap();
    assert_eq!(
        lines.len(),
        1,
        "{api}: only the writer's write is in the log"
    );
    match &lines[0] {
        Line::Record(r) => assert_eq!(r.node, writer.name),
        Line::Corrupt { reason, .. } => panic!("{reason}"),
    }
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn microstream_elected_node_takes_writes_the_others_refuse() {
    elected_node_takes_writes_the_others_refuse(Api::Microstream).await;
}

#[tokio::test]
async fn microstream_legacy_elected_node_takes_writes_the_others_refuse() {
    elected_node_takes_writes_the_others_refuse(Api::MicrostreamLegacy).await;
}

#[tokio::test]
async fn eclipse_datagrid_elected_node_takes_writes_the_others_refuse() {
    elected_node_takes_writes_the_others_refuse(Api::EclipseDatagrid).await;
}

#[tokio::test]
async fn eclipse_datagrid_unprefixed_elected_node_takes_writes_the_others_refuse() {
    elected_node_takes_writes_the_others_refuse(Api::EclipseDatagridUnprefixed).await;
}

#[tokio::test]
async fn a_backup_node_ranked_first_is_never_elected() {
    let api = Api::Microstream;
    let mut s = start(api, &[&["--backup"], &[], &[]]).await;
    let backup = s.nodes[0].clone();
    let t = s.elected().await;
    let writer = t.writer.unwrap();
    assert_ne!(writer.name, backup.name);
    // The backup is ready and first by name the whole time: the election keeps passing it by.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = s.topology().await.unwrap();
        assert_eq!(t.writer.map(|w| w.name), Some(writer.name.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = s.distributor(&backup, api).await;
    assert_eq!(status, 400, "a backup is never a distributor");
    let w = s.nodes.iter().find(|n| n.name == writer.name).unwrap();
    assert_eq!(s.distributor(w, api).await, (200, "true".to_owned()));
    let r = client()
        .send(
            http::Method::PUT,
            &format!("{}/kv/k", backup.url),
            &[("X-Writer-Epoch", "99")],
            "v",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header(api.nad_header()), Some("true"));
    s.group.shutdown(WAIT);
}

#[tokio::test]
async fn a_writer_that_lost_its_role_is_promoted_again() {
    let api = Api::Microstream;
    let mut s = start(api, &[&[], &[], &[]]).await;
    let t = s.elected().await;
    let writer = t.writer.clone().unwrap();
    let w = s
        .nodes
        .iter()
        .find(|n| n.name == writer.name)
        .unwrap()
        .clone();
    let c = client();
    // What a writer pod that restarted looks like: up, ready, and not the distributor.
    let r = c
        .post(&format!("{}/admin/demote", w.url), "")
        .await
        .unwrap();
    assert_eq!(r.json().unwrap()["was_distributor"], true);
    wait_for(
        "writer-election to promote the writer again",
        WAIT,
        || async {
            let (_, body) = s.distributor(&w, api).await;
            (body == "true").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; writer-election's log:\n{}", s.election_log()));
    let after = s.topology().await.unwrap();
    assert_eq!(after.writer.map(|n| n.name), Some(writer.name.clone()));
    assert_eq!(after.epoch, t.epoch, "the same writer keeps its epoch");
    let epoch = t.epoch.to_string();
    let r = c
        .send(
            http::Method::PUT,
            &format!("{}/kv/k", w.url),
            &[("X-Writer-Epoch", epoch.as_str())],
            "v",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    s.group.shutdown(WAIT);
}
