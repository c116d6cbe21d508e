//! writer-election for the failover tests: the real binary (static mode, state file in a temp
//! dir), and a tiny fake that serves scripted topologies (for what the real one never does on
//! purpose, like publishing an older epoch) and records drain acknowledgements.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use topology_client::client::fetch_topology;
use topology_client::topology::{NodeRef, Switchover, Topology};

use super::{free_port, WAIT};

/// The writer-election binary next to rw-proxy's, built once if it is missing (`cargo nextest
/// run -p rw-proxy` builds only this package's binaries).
pub fn election_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = Path::new(env!("CARGO_BIN_EXE_rw-proxy"))
        .parent()
        .expect("the rw-proxy binary is in a directory")
        .to_path_buf();
    let bin = dir.join("writer-election");
    BUILD.call_once(|| {
        if bin.is_file() {
            return;
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&workspace)
            .args(["build", "--bins", "-p", "writer-election"])
            .status()
            .expect("running cargo build");
        assert!(st.success(), "cargo build --bins -p writer-election failed");
    });
    assert!(
        bin.is_file(),
        "no writer-election binary at {}",
        bin.display()
    );
    bin
}

/// A writer-election process in static mode. Killed on drop (also when a test panics).
pub struct Election {
    pub url: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    paused: bool,
}

impl Election {
    /// Probes every 100 ms and gives a node up after 2 failures, so failovers are quick. No
    /// promotion calls: the test backends are plain HTTP servers, not storage nodes.
    pub async fn start(nodes: &[(&str, SocketAddr)]) -> Election {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut cfg = format!("listen: \"127.0.0.1:{port}\"\ndiscovery:\n  static:\n    nodes:\n");
        for (name, addr) in nodes {
            cfg.push_str(&format!(
                "      - {{ name: {name}, address: \"{addr}\" }}\n"
            ));
        }
        cfg.push_str(&format!(
            "probe: {{ path: /health/ready, interval: 100ms, timeout: 300ms, failure_threshold: 2, success_threshold: 1 }}\n\
             election: {{ candidate_order: name }}\n\
             promotion: {{ preset: none }}\n\
             state: {{ file: \"{}\" }}\n",
            dir.path().join("election-state.json").display()
        ));
        std::fs::write(dir.path().join("election.yaml"), cfg).expect("write election config");
        let mut e = Election {
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            dir,
            paused: false,
        };
        e.spawn().await;
        e
    }

    /// (Re)starts the process with the same config, port and state file; waits until it answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("election log file");
        let child = Command::new(election_binary())
            .arg("--config")
            .arg(self.dir.path().join("election.yaml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start writer-election");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while fetch_topology(&self.url, None, None).await.is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("writer-election exited: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "writer-election does not answer\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("election.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL; waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("running");
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid}");
    }

    /// SIGSTOP: it decides nothing and answers nothing until [`Election::resume`].
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    pub async fn topology(&self) -> Option<Topology> {
        fetch_topology(&self.url, None, None).await.ok()
    }

    /// Polls `/v1/topology` until `cond` holds.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Topology) -> bool) -> Topology {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(t) = self.topology().await {
                if cond(&t) {
                    return t;
                }
                last = Some(t);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}; last topology {last:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- writer-election log ----\n{}", self.log());
        }
    }
}

pub fn writer_name(t: &Topology) -> Option<&str> {
    t.writer.as_ref().map(|w| w.name.as_str())
}

/// A topology document for the fake.
pub fn doc(
    epoch: u64,
    revision: u64,
    writer: Option<(&str, SocketAddr)>,
    readers: &[(&str, SocketAddr)],
    switchover: Option<Switchover>,
) -> Topology {
    let node = |(name, addr): (&str, SocketAddr)| NodeRef {
        name: name.to_string(),
        address: addr.to_string(),
    };
    let mut t = Topology::empty();
    t.epoch = epoch;
    t.revision = revision;
    t.writer = writer.map(node);
    t.readers = readers.iter().map(|r| node(*r)).collect();
    t.switchover = switchover;
    t
}

#[derive(Default)]
struct FakeState {
    /// `client=` of every topology query.
    clients: Mutex<Vec<String>>,
    /// Bodies of `POST /v1/switchover/drained`, with when they arrived.
    drained: Mutex<Vec<(serde_json::Value, Instant)>>,
    /// Statuses for the next drain acknowledgements (then 200).
    drained_answers: Mutex<VecDeque<u16>>,
}

/// A fake writer-election: serves whatever [`FakeElection::publish`] set, with blocking queries
/// (`after`, `wait`) like the real one.
pub struct FakeElection {
    pub url: String,
    doc: watch::Sender<Topology>,
    state: Arc<FakeState>,
    accept: JoinHandle<()>,
}

impl FakeElection {
    pub async fn start(first: Topology) -> FakeElection {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake election");
        let addr = listener.local_addr().expect("address");
        let (doc, _) = watch::channel(first);
        let state = Arc::new(FakeState::default());
        let (d, s) = (doc.clone(), state.clone());
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (d, s) = (d.clone(), s.clone());
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                fake_handle(d.clone(), s.clone(), req)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FakeElection {
            url: format!("http://{addr}"),
            doc,
            state,
            accept,
        }
    }

    pub fn publish(&self, t: Topology) {
        self.doc.send_replace(t);
    }

    pub fn clients(&self) -> Vec<String> {
        self.state
            .clients
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn drained(&self) -> Vec<(serde_json::Value, Instant)> {
        self.state
            .drained
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The next drain acknowledgements get these statuses (then 200).
    pub fn answer_drained_with(&self, statuses: &[u16]) {
        if let Ok(mut q) = self.state.drained_answers.lock() {
            q.extend(statuses.iter().copied());
        }
    }
}

impl Drop for FakeElection {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn fake_handle(
    doc: watch::Sender<Topology>,
    state: Arc<FakeState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default())
    };
    let (parts, body) = req.into_parts();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/topology") => {
            let query = parts.uri.query().unwrap_or("");
            if let (Some(c), Ok(mut v)) = (query_param(query, "client"), state.clients.lock()) {
                v.push(c.to_string());
            }
            let after: Option<u64> = query_param(query, "after").and_then(|a| a.parse().ok());
            let wait = query_param(query, "wait")
                .and_then(|w| w.strip_suffix("ms")?.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(30));
            let mut rx = doc.subscribe();
            if after.is_some_and(|a| rx.borrow_and_update().revision <= a) {
                let _ = tokio::time::timeout(wait, rx.changed()).await;
            }
            let t = rx.borrow().clone();
            reply(200, serde_json::to_string(&t).unwrap_or_default())
        }
        ("POST", "/v1/switchover/drained") => {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if let Ok(mut d) = state.drained.lock() {
                d.push((v, Instant::now()));
            }
            let status = state
                .drained_answers
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front())
                .unwrap_or(200);
            reply(status, "{}".to_string())
        }
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()),
    }
}
