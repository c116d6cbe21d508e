//! Shared by writer-election's end-to-end tests: fake storage nodes (real HTTP servers on
//! 127.0.0.1 that can be stopped, hung, turned unready), their configs, and the writer-election
//! child process (test-kit's, killed when the test ends, also on panic).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use test_kit::stand_in::StandIn;

use super::fake_k8s::{shipped_role, FakeApiServer, StoragePod};
use writer_election::topology::Topology;

pub const START: &str = "/eclipse-datagrid/activate-distributor/start";
pub const FINISH: &str = "/eclipse-datagrid/activate-distributor/finish";
pub const CHECK: &str = "/eclipse-datagrid/distributor";

/// Which calls a fake node serves. `Plain` is the generic stand-in (`/health/ready` and the
/// paths above, configured explicitly by the tests); the others serve exactly the paths of the
/// node library release a `promotion.preset` names, and nothing else, so a wrong path fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    #[default]
    Plain,
    Microstream,
    MicrostreamLegacy,
    EclipseDatagrid,
    EclipseDatagridUnprefixed,
}

pub struct ApiPaths {
    pub ready: &'static str,
    pub start: &'static str,
    /// None: activation is the one `start` call.
    pub finish: Option<&'static str>,
    pub check: &'static str,
}

impl Api {
    pub fn paths(self) -> ApiPaths {
        match self {
            Api::Plain => ApiPaths {
                ready: "/health/ready",
                start: START,
                finish: Some(FINISH),
                check: CHECK,
            },
            Api::Microstream => ApiPaths {
                ready: "/microstream-cluster-controller/microstream-health/ready",
                start: "/microstream-cluster-controller/microstream-activate-distributor/start",
                finish: Some(
                    "/microstream-cluster-controller/microstream-activate-distributor/finish",
                ),
                check: "/microstream-cluster-controller/microstream-distributor",
            },
            Api::MicrostreamLegacy => ApiPaths {
                ready: "/microstream-cluster-controller/microstream-health/ready",
                start: "/microstream-cluster-controller/microstream-activate-distributor",
                finish: None,
                check: "/microstream-cluster-controller/microstream-distributor",
            },
            Api::EclipseDatagrid => ApiPaths {
                ready: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-health/ready",
                start: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/start",
                finish: Some(
                    "/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/finish",
                ),
                check: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-distributor",
            },
            Api::EclipseDatagridUnprefixed => ApiPaths {
                ready: "/eclipse-datagrid/health/ready",
                start: "/eclipse-datagrid/activate-distributor/start",
                finish: Some("/eclipse-datagrid/activate-distributor/finish"),
                check: "/eclipse-datagrid/distributor",
            },
        }
    }

    /// The `promotion.preset` for these calls.
    pub fn preset(self) -> &'static str {
        match self {
            Api::Plain => "none",
            Api::Microstream => "microstream",
            Api::MicrostreamLegacy => "microstream-legacy",
            Api::EclipseDatagrid => "eclipse-datagrid",
            Api::EclipseDatagridUnprefixed => "eclipse-datagrid-unprefixed",
        }
    }
}

#[derive(Default)]
pub struct NodeState {
    pub api: Mutex<Api>,
    /// Answers 400 to every distributor call, like the library's backup and dev nodes.
    pub backup: AtomicBool,
    /// A `start` was accepted and `finish` has not answered true since.
    pub switching: AtomicBool,
    /// Every `start` request, accepted or not.
    pub start_attempts: AtomicU32,
    pub check_calls: AtomicU32,
    /// The distributor check answers 503 (no usable answer; readiness is unaffected).
    pub check_fails: AtomicBool,
    pub ready: AtomicBool,
    /// Accept connections, never answer the probe (a hung process).
    pub hang: AtomicBool,
    /// What `GET /replication/offset` answers (`{"offset": n}`).
    pub offset: AtomicU64,
    /// `GET /replication/offset` answers 503 (the offset cannot be read; readiness unaffected).
    pub offset_fails: AtomicBool,
    pub offset_calls: AtomicU64,
    pub start_calls: AtomicU32,
    pub finish_calls: AtomicU32,
    /// `finish` answers "true" from this call on (after a `start`).
    pub finish_true_after: AtomicU32,
    pub promoted: AtomicBool,
    pub fail_start: AtomicBool,
    pub probes: AtomicU64,
}

/// A storage node stand-in: `/health/ready`, the Eclipse DataGrid promotion endpoints,
/// `/replication/offset`.
pub struct TestNode {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<NodeState>,
    node: StandIn,
}

async fn handle(
    state: Arc<NodeState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let _ = req.into_body().collect().await;
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    let api = *state.api.lock().unwrap();
    if api != Api::Plain {
        return library_node(&state, api, method.as_str(), &path).await;
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/health/ready") => {
            state.probes.fetch_add(1, Ordering::SeqCst);
            if state.hang.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ok".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready".into())
            }
        }
        ("POST", START) => {
            if state.fail_start.load(Ordering::SeqCst) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot".into());
            }
            state.start_calls.fetch_add(1, Ordering::SeqCst);
            state.finish_calls.store(0, Ordering::SeqCst);
            text(StatusCode::OK, "started".into())
        }
        ("POST", FINISH) => {
            let n = state.finish_calls.fetch_add(1, Ordering::SeqCst) + 1;
            let done = state.start_calls.load(Ordering::SeqCst) > 0
                && n >= state.finish_true_after.load(Ordering::SeqCst);
            if done {
                state.promoted.store(true, Ordering::SeqCst);
            }
            text(StatusCode::OK, done.to_string())
        }
        ("GET", CHECK) => text(
            StatusCode::OK,
            state.promoted.load(Ordering::SeqCst).to_string(),
        ),
        ("GET", "/replication/offset") => {
            state.offset_calls.fetch_add(1, Ordering::SeqCst);
            if state.offset_fails.load(Ordering::SeqCst) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "not now".into());
            }
            text(
                StatusCode::OK,
                format!("{{\"offset\": {}}}", state.offset.load(Ordering::SeqCst)),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "no".into()),
    }
}

/// The node library's controller as the presets see it: readiness, and the distributor calls.
async fn library_node(
    state: &NodeState,
    api: Api,
    method: &str,
    path: &str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let p = api.paths();
    let answer = |status: StatusCode, body: &str, json: bool| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        let ct = if json {
            "application/json"
        } else {
            "text/plain"
        };
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, ct.parse().unwrap());
        Ok(r)
    };
    // The MicroStream-era controllers answer booleans as text, the Eclipse DataGrid ones as JSON.
    let json = matches!(api, Api::EclipseDatagrid | Api::EclipseDatagridUnprefixed);
    let backup = state.backup.load(Ordering::SeqCst);
    if method == "GET" && path == p.ready {
        state.probes.fetch_add(1, Ordering::SeqCst);
        if state.hang.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        return if state.ready.load(Ordering::SeqCst) {
            answer(StatusCode::OK, "", false)
        } else {
            answer(StatusCode::INTERNAL_SERVER_ERROR, "", false)
        };
    }
    if method == "GET" && path == p.check {
        state.check_calls.fetch_add(1, Ordering::SeqCst);
        if state.check_fails.load(Ordering::SeqCst) {
            return answer(StatusCode::SERVICE_UNAVAILABLE, "busy", false);
        }
        if backup {
            return answer(StatusCode::BAD_REQUEST, "", false);
        }
        let v = state.promoted.load(Ordering::SeqCst).to_string();
        return answer(StatusCode::OK, &v, json);
    }
    if method == "POST" && path == p.start {
        state.start_attempts.fetch_add(1, Ordering::SeqCst);
        if backup {
            return answer(StatusCode::BAD_REQUEST, "", false);
        }
        if state.fail_start.load(Ordering::SeqCst) {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "cannot", false);
        }
        // The library refuses a second activation of a distributor: promoting an active writer
        // again is a bug of the caller.
        if state.promoted.load(Ordering::SeqCst) {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "already a distributor",
                false,
            );
        }
        state.start_calls.fetch_add(1, Ordering::SeqCst);
        state.finish_calls.store(0, Ordering::SeqCst);
        if p.finish.is_none() {
            state.promoted.store(true, Ordering::SeqCst);
        } else {
            state.switching.store(true, Ordering::SeqCst);
        }
        return answer(StatusCode::OK, "", false);
    }
    if method == "POST" && Some(path) == p.finish {
        if backup || !state.switching.load(Ordering::SeqCst) {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut()
                .insert("StorageNode-NAD", "true".parse().unwrap());
            return Ok(r);
        }
        let n = state.finish_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let done = n >= state.finish_true_after.load(Ordering::SeqCst);
        if done {
            state.promoted.store(true, Ordering::SeqCst);
            state.switching.store(false, Ordering::SeqCst);
        }
        return answer(StatusCode::OK, &done.to_string(), json);
    }
    answer(StatusCode::NOT_FOUND, "", false)
}

impl TestNode {
    pub async fn start(name: &str) -> TestNode {
        Self::start_api(name, Api::Plain).await
    }

    /// A node serving the calls of `api`.
    pub async fn start_api(name: &str, api: Api) -> TestNode {
        let state = Arc::new(NodeState::default());
        *state.api.lock().unwrap() = api;
        state.ready.store(true, Ordering::SeqCst);
        state.finish_true_after.store(2, Ordering::SeqCst);
        let s = state.clone();
        let node = StandIn::start(move |req| handle(s.clone(), req)).await;
        TestNode {
            name: name.to_string(),
            addr: node.addr,
            state,
            node,
        }
    }

    /// Like `kill -9`: the port refuses, open connections are reset.
    pub async fn stop(&mut self) {
        self.node.kill().await;
    }

    /// Back on the same address, as a fresh process (not promoted).
    pub async fn restart(&mut self) {
        self.node.kill().await;
        self.state.promoted.store(false, Ordering::SeqCst);
        self.state.switching.store(false, Ordering::SeqCst);
        self.node.restart().await;
    }

    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// The replication offset `GET /replication/offset` answers from now on.
    pub fn set_offset(&self, offset: u64) {
        self.state.offset.store(offset, Ordering::SeqCst);
    }

    pub fn offset(&self) -> u64 {
        self.state.offset.load(Ordering::SeqCst)
    }

    /// `GET /replication/offset` answers 503 while on.
    pub fn set_offset_fails(&self, fail: bool) {
        self.state.offset_fails.store(fail, Ordering::SeqCst);
    }

    /// `GET /replication/offset` requests answered so far.
    pub fn offset_calls(&self) -> u64 {
        self.state.offset_calls.load(Ordering::SeqCst)
    }

    pub fn set_hang(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    /// The node forgets it is the distributor, as a restarted process does, without the port
    /// going away.
    pub fn lose_role(&self) {
        self.state.promoted.store(false, Ordering::SeqCst);
        self.state.switching.store(false, Ordering::SeqCst);
    }

    /// Answer 400 to the distributor calls, like a backup or dev node.
    pub fn set_backup(&self, backup: bool) {
        self.state.backup.store(backup, Ordering::SeqCst);
    }

    pub fn set_check_fails(&self, fail: bool) {
        self.state.check_fails.store(fail, Ordering::SeqCst);
    }

    pub fn finish_calls(&self) -> u32 {
        self.state.finish_calls.load(Ordering::SeqCst)
    }

    pub fn set_fail_start(&self, fail: bool) {
        self.state.fail_start.store(fail, Ordering::SeqCst);
    }

    pub fn start_attempts(&self) -> u32 {
        self.state.start_attempts.load(Ordering::SeqCst)
    }

    pub fn check_calls(&self) -> u32 {
        self.state.check_calls.load(Ordering::SeqCst)
    }

    pub fn start_calls(&self) -> u32 {
        self.state.start_calls.load(Ordering::SeqCst)
    }

    pub fn promoted(&self) -> bool {
        self.state.promoted.load(Ordering::SeqCst)
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// A fake API server that enforces the shipped Role and has a storage pod `storagenode-<i>` for
/// each of `nodes` (its `http` port the node's), older pods first, so `candidate_order: oldest`
/// and `name` agree unless a test says otherwise.
pub async fn storage_api(nodes: &[TestNode]) -> FakeApiServer {
    init_logs();
    let api = FakeApiServer::start()
        .await
        .expect("fake API server")
        .with_role(shipped_role());
    let now = std::time::SystemTime::now();
    for (i, n) in nodes.iter().enumerate() {
        let created = now - Duration::from_secs(600 - 100 * i as u64);
        api.add_pod(
            StoragePod::new(format!("storagenode-{i}"))
                .port("http", n.addr.port())
                .created_at(created),
        );
    }
    api
}

pub async fn nodes(n: usize) -> Vec<TestNode> {
    api_nodes(n, Api::Plain).await
}

pub async fn api_nodes(n: usize, api: Api) -> Vec<TestNode> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(TestNode::start_api(&format!("node-{i}"), api).await);
    }
    v
}

/// A static-mode config for nodes serving a node library's calls: only `promotion.preset` (no
/// probe path, no explicit calls), so the preset alone must get everything right. `extra` is
/// appended.
pub fn preset_config(nodes: &[TestNode], api: Api, state_file: &Path, extra: &str) -> String {
    let mut s = String::from("listen: \"127.0.0.1:0\"\ndiscovery:\n  static:\n    nodes:\n");
    for n in nodes {
        s.push_str(&format!(
            "      - {{ name: {}, address: \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    s.push_str(&format!(
        "probe: {{ interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}\n\
         state: {{ file: \"{}\" }}\npromotion: {{ preset: {} }}\n",
        state_file.display(),
        api.preset()
    ));
    s.push_str(extra);
    s
}

/// A static-mode config for `nodes`, fast probes, promotion calls on, listen on an ephemeral port.
/// The calls are the plain fake's, given explicitly (`preset: none`: no check).
pub fn static_config(nodes: &[TestNode], state_file: &Path, extra: &str) -> String {
    let mut s = String::from("listen: \"127.0.0.1:0\"\ndiscovery:\n  static:\n    nodes:\n");
    for n in nodes {
        s.push_str(&format!(
            "      - {{ name: {}, address: \"{}\" }}\n",
            n.name, n.addr
        ));
    }
    s.push_str(&format!(
        r#"probe: {{ path: /health/ready, interval: 200ms, timeout: 1s, failure_threshold: 3, success_threshold: 1 }}
state: {{ file: "{}" }}
promotion:
  preset: none
  start:  {{ method: POST, path: {START} }}
  finish: {{ method: POST, path: {FINISH}, until_body: "true", interval: 50ms, timeout: 10s }}
"#,
        state_file.display()
    ));
    s.push_str(extra);
    s
}

pub use test_kit::election::{binary, writer_name, Election};

pub fn all_ready(t: &Topology, n: usize) -> bool {
    t.nodes.len() == n && t.nodes.iter().all(|x| x.ready)
}

/// A plain HTTP/1.1 request; (status, body). Status 0 = transport error.
pub async fn http_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    test_kit::http::call(method, url, headers, body, Duration::from_secs(150)).await
}

/// The metric lines of a Prometheus text page, name{labels} -> value.
pub use test_kit::metrics::parse as parse_metrics;

/// In-process services log through the test writer (shown for failing tests).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,writer_election=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
