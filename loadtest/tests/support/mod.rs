//! Shared by the integration tests: real processes on 127.0.0.1, stopped by a Drop guard.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use loadtest::httpc::{HttpClient, Reply};
use loadtest::procs::{free_port, wait_for, Group};

/// Generous: the machine is small and shared.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn loadtest_bin() -> &'static str {
    env!("CARGO_BIN_EXE_loadtest")
}

pub fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(20))
}

/// Starts `loadtest node` and waits until it answers /health. Returns its base URL.
pub async fn start_node(group: &mut Group, name: &str, log: &Path, extra: &[&str]) -> String {
    let port = free_port().unwrap();
    let mut cmd = Command::new(loadtest_bin());
    cmd.args([
        "node",
        "--name",
        name,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--log")
    .arg(log)
    .args(extra)
    .stdin(Stdio::null());
    group.spawn(name, cmd).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let c = client();
    let health = format!("{url}/health");
    wait_for(&format!("{name} /health"), WAIT, || {
        let c = c.clone();
        let health = health.clone();
        async move { c.get(&health).await.ok().filter(|r| r.status == 200) }
    })
    .await
    .unwrap();
    url
}

/// Demo nodes sharing one log in a temporary directory of their own; the group's Drop stops
/// them.
pub struct SharedLog {
    pub group: Group,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl SharedLog {
    pub fn new() -> SharedLog {
        let dir = tempfile::tempdir().unwrap();
        SharedLog {
            group: Group::new(),
            log: dir.path().join("stream.log"),
            dir,
        }
    }

    /// Starts `loadtest node --name name` on the log; its base URL.
    pub async fn node(&mut self, name: &str, extra: &[&str]) -> String {
        start_node(&mut self.group, name, &self.log, extra).await
    }

    /// A node of `api` that finishes a promotion `promotion_delay` after it began.
    pub async fn api_node(
        &mut self,
        name: &str,
        api: loadtest::node::api::Api,
        promotion_delay: &str,
    ) -> String {
        self.node(
            name,
            &["--api", api.as_str(), "--promotion-delay", promotion_delay],
        )
        .await
    }

    /// node-a and node-b, both taking writes without a promotion.
    pub async fn writers(&mut self) -> (String, String) {
        (
            self.node("node-a", &["--no-promotion-needed"]).await,
            self.node("node-b", &["--no-promotion-needed"]).await,
        )
    }
}

/// GETs `url` until it answers 200 (`what` names the wait when it times out); that answer.
pub async fn get_ok(what: &str, url: &str) -> Reply {
    let c = client();
    wait_for(what, WAIT, || {
        let c = c.clone();
        async move { c.get(url).await.ok().filter(|r| r.status == 200) }
    })
    .await
    .unwrap()
}

/// `loadtest failover ARGS --json` with the service binaries: its exit code and its report.
pub fn failover_json(args: &[&str]) -> (i32, serde_json::Value) {
    let bin_dir = ensure_service_binaries();
    let out = Command::new(loadtest_bin())
        .arg("failover")
        .args(args)
        .arg("--json")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// `loadtest failover` with `fault` (and `extra` flags) over CI's short run: 4 s of load at
/// `rate`/s, the fault 1.5 s in.
pub fn short_failover(fault: &[&str], rate: u32, extra: &[&str]) -> (i32, serde_json::Value) {
    let rate = rate.to_string();
    let mut args = fault.to_vec();
    args.extend([
        "--duration",
        "4s",
        "--fault-after",
        "1500ms",
        "--rate",
        &rate,
    ]);
    args.extend(extra);
    failover_json(&args)
}

/// The offset the node at `url` has applied (`GET /replication/offset`).
pub async fn offset_of(url: &str) -> u64 {
    let r = client()
        .get(&format!("{url}/replication/offset"))
        .await
        .unwrap();
    r.json().unwrap()["offset"].as_u64().unwrap()
}

/// Sets the simulated replication lag of the node at `url` (`POST /admin/lag`); its answer.
pub async fn set_lag(url: &str, lag: &str) -> serde_json::Value {
    let r = client()
        .post(&format!("{url}/admin/lag"), lag.to_owned())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()
}

/// What the node at `url` says of itself (`GET /whoami`).
pub async fn whoami(url: &str) -> serde_json::Value {
    client()
        .get(&format!("{url}/whoami"))
        .await
        .unwrap()
        .json()
        .unwrap()
}

/// Promotes the node at `url` through `api`'s activation calls, as writer-election does.
pub async fn promote(url: &str, api: loadtest::node::api::Api) {
    let c = client();
    if !api.two_step_activation() {
        let r = c
            .post(&format!("{url}{}", api.activate_path()), "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{api} activate: {}", r.text());
        return;
    }
    let r = c
        .post(&format!("{url}{}", api.start_path()), "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{api} start: {}", r.text());
    let finish = format!("{url}{}", api.finish_path());
    wait_for(&format!("{api} finish to answer true"), WAIT, || {
        let c = c.clone();
        let u = finish.clone();
        async move { c.post(&u, "").await.ok().filter(|r| r.text() == "true") }
    })
    .await
    .unwrap();
}

pub async fn put(url: &str, key: &str, value: &str, epoch: Option<u64>) -> Reply {
    let e = epoch.map(|e| e.to_string());
    let mut headers = vec![];
    if let Some(e) = &e {
        headers.push(("X-Writer-Epoch", e.as_str()));
    }
    client()
        .send(
            http::Method::PUT,
            &format!("{url}/kv/{key}"),
            &headers,
            value.to_owned(),
        )
        .await
        .unwrap()
}

/// rw-proxy and writer-election live next to the loadtest binary (target/debug). Builds them
/// when missing: concurrent test processes serialise on cargo's own lock, and the second build
/// finds nothing to do.
pub fn ensure_service_binaries() -> std::path::PathBuf {
    let dir = Path::new(loadtest_bin())
        .parent()
        .expect("the loadtest binary is in a directory")
        .to_path_buf();
    let missing = ["rw-proxy", "writer-election"]
        .iter()
        .any(|b| !dir.join(b).is_file());
    if missing {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&workspace)
            .args(["build", "--bins", "-p", "rw-proxy", "-p", "writer-election"])
            .status()
            .expect("running cargo build");
        assert!(
            st.success(),
            "cargo build --bins -p rw-proxy -p writer-election failed"
        );
    }
    dir
}

/// True when something accepts connections on 127.0.0.1:port.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}
