//! Test support: real HTTP backends and a real rw-proxy process, all on 127.0.0.1.
//!
//! Backends answer with their own name (body and `X-Backend` header) and record every
//! complete request they receive. The proxy is the built binary with a config file in a
//! temp dir, so reload and SIGTERM are exercised for real. Everything started here is
//! stopped on drop, also when a test panics.

// Every test file includes this module and uses a part of it.
#![allow(dead_code, unused_imports)]

pub mod election;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use test_kit::stand_in::{BoxError, StandIn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Generous: the machine is small and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A request as a backend saw it (only complete requests are recorded).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a backend records.
#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    /// While set, writes are refused like a storage node that is not the distributor.
    refuse_writes: std::sync::atomic::AtomicBool,
    /// The header of that refusal (the node library's older name when set).
    refuse_as_microstream: std::sync::atomic::AtomicBool,
    /// Writes refused that way (not applied: not in `seen`).
    refused: Mutex<Vec<Seen>>,
    /// (path, when the answer was ready), for requests answered in full.
    answered: Mutex<Vec<(String, Instant)>>,
    /// Fields added to every answer to a write (`Backend::answer_writes_with`).
    write_answer_fields: Mutex<Vec<(String, String)>>,
}

/// An HTTP/1.1 backend that answers with its name. `/slow/<ms>` answers after `ms`;
/// `/drop/...` is received in full and then the connection is dropped without an answer;
/// `/bad/...` answers a plain `400`. With [`Backend::refuse_writes`], every request other than
/// GET/HEAD is answered `400` + `StorageNode-NAD: true` and not recorded in `seen`, as a storage
/// node that is not the distributor does.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    record: Arc<Record>,
    node: StandIn,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let record = Arc::new(Record::default());
        let (n, r) = (name.to_string(), record.clone());
        let node = StandIn::start(move |req| handle(n.clone(), r.clone(), req)).await;
        Backend {
            name: name.to_string(),
            addr: node.addr,
            record,
            node,
        }
    }

    /// Like `kill -9`: the port refuses from now on and open connections are reset.
    pub async fn kill(&mut self) {
        self.node.kill().await;
    }

    /// Back on the same address (after [`Backend::kill`]), keeping what it recorded.
    pub async fn restart(&mut self) {
        self.node.restart().await;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.record
            .seen
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Refuse writes as not the distributor (`true`), or take them again (`false`).
    pub fn refuse_writes(&self, on: bool) {
        self.record
            .refuse_writes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuse writes as not the distributor with the older header name, `Microstream-NAD`.
    pub fn refuse_writes_as_microstream(&self) {
        self.record
            .refuse_as_microstream
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.refuse_writes(true);
    }

    /// The writes refused as not the distributor.
    pub fn refused(&self) -> Vec<Seen> {
        self.record
            .refused
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Every answer to a write (not GET/HEAD) from now on carries these fields (replacing
    /// those set before), as a storage node reports the replication offset a write reached.
    pub fn answer_writes_with(&self, fields: &[(&str, &str)]) {
        if let Ok(mut f) = self.record.write_answer_fields.lock() {
            *f = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
    }

    /// How many requests for `path` were taken (not refused).
    pub fn count_path(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    pub fn count(&self) -> usize {
        self.record.seen.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// When the answer to the first request for `path` was ready, if it was.
    pub fn answered_at(&self, path: &str) -> Option<Instant> {
        let answered = self.record.answered.lock().ok()?;
        answered.iter().find(|(p, _)| p == path).map(|(_, t)| *t)
    }
}

async fn handle(
    name: String,
    record: Arc<Record>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        // An incomplete request (the proxy gave up on it) is not a request the backend saw.
        Err(_) => {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default())
        }
    };
    let path = parts.uri.path().to_string();
    let seen = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body,
    };
    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    if !is_read
        && record
            .refuse_writes
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        if let Ok(mut v) = record.refused.lock() {
            v.push(seen);
        }
        let header = if record
            .refuse_as_microstream
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            "Microstream-NAD"
        } else {
            "StorageNode-NAD"
        };
        return Ok(Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("x-backend", name.as_str())
            .header(header, "true")
            .body(Full::new(Bytes::from_static(b"not a distributor")))
            .unwrap_or_default());
    }
    if let Ok(mut v) = record.seen.lock() {
        v.push(seen);
    }
    let mut builder = Response::builder().header("x-backend", name.as_str());
    if !is_read {
        if let Ok(fields) = record.write_answer_fields.lock() {
            for (k, v) in fields.iter() {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
    }
    if path.starts_with("/bad/") {
        return Ok(builder
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(b"bad input")))
            .unwrap_or_default());
    }
    if path.starts_with("/drop/") {
        // An error from the service makes hyper close the connection without a response.
        return Err("dropping the connection on purpose".into());
    }
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Ok(mut v) = record.answered.lock() {
        v.push((path.clone(), Instant::now()));
    }
    let resp = builder
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(name)))
        .unwrap_or_default();
    Ok(resp)
}

/// An address where nothing listens: connections are refused. From test-kit's ports, so that no
/// child process of a test beside this one binds it meanwhile.
pub fn refusing_addr() -> SocketAddr {
    test_kit::ports::free_addr().expect("a free port on 127.0.0.1")
}

/// A response as the test client got it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(path)
        .header("host", format!("{addr}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Writes raw bytes and reads until the peer closes (or `WAIT`): for requests a normal
/// client would not send.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it read everything; that is fine.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it holds; panics naming `what` after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    test_kit::wait::until(what, WAIT, cond).await
}

/// A running rw-proxy process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    body: String,
}

impl Proxy {
    /// Starts rw-proxy with `body` (a config without `listen`/`admin_listen`, which are
    /// added) and waits until it is ready.
    pub async fn start(body: &str) -> Proxy {
        let mut last = String::new();
        // Ports are picked free, below the ephemeral range, but a process that binds ports of its
        // own choosing may take one before rw-proxy binds it: retry.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let addr = test_kit::ports::free_addr().expect("a free port for listen");
            let admin = test_kit::ports::free_addr().expect("a free port for admin_listen");
            let mut p = Proxy {
                addr,
                admin,
                child: None,
                dir,
                body: body.to_string(),
            };
            p.write_config(body);
            let log = std::fs::File::create(p.log_path()).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_rw-proxy"))
                .arg("--config")
                .arg(p.config_path())
                .env(
                    "RUST_LOG",
                    std::env::var("RW_PROXY_TEST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start rw-proxy");
            p.child = Some(child);
            match p.wait_ready().await {
                Ok(()) => return p,
                Err(e) => {
                    last = format!("{e}\n{}", p.log());
                    if !last.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("rw-proxy did not become ready: {last}");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log holds `needle`: rw-proxy writes its log from its own thread, so a
    /// line can land a moment after the event it reports is visible elsewhere.
    pub async fn wait_log(&self, needle: &str) {
        eventually(&format!("the log says {needle:?}"), || async {
            self.log().contains(needle)
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// The full config for `body`, with this proxy's ports.
    pub fn full_config(&self, body: &str) -> String {
        format!(
            "listen: \"{}\"\nadmin_listen: \"{}\"\n{body}\n",
            self.addr, self.admin
        )
    }

    /// Rewrites the config file in place (atomically: write and rename).
    pub fn write_config(&mut self, body: &str) {
        let tmp = self.dir.path().join(".proxy.yaml.tmp");
        std::fs::write(&tmp, self.full_config(body)).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
        self.body = body.to_string();
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("rw-proxy exited early: {status}"));
                }
            }
            if let Ok(r) = send(self.admin, "GET", "/health/ready", &[], b"").await {
                if r.status == StatusCode::OK {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("not ready in time".to_string())
    }

    pub fn signal(&self, sig: &str) {
        test_kit::process::signal(self.pid(), sig);
    }

    /// Waits for the process to exit (the log follows if it does not, as the proxy is dropped).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("rw-proxy is running");
        let status = test_kit::wait::for_some("rw-proxy to exit", WAIT, || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await;
        self.child = None;
        status
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.text()
    }

    /// The value of one sample line of /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        test_kit::metrics::value_or_zero(&self.metrics().await, series)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- rw-proxy log ----\n{}", self.log());
        }
    }
}

/// `topology.static` for a writer and readers.
pub fn static_topology(writer: Option<SocketAddr>, readers: &[SocketAddr]) -> String {
    let mut s = String::from("topology:\n  static:\n");
    if let Some(w) = writer {
        s.push_str(&format!(
            "    writer: {{ name: writer, address: \"{w}\" }}\n"
        ));
    }
    s.push_str("    readers:\n");
    if readers.is_empty() {
        s.truncate(s.len() - "    readers:\n".len());
        s.push_str("    readers: []\n");
    }
    for (i, r) in readers.iter().enumerate() {
        s.push_str(&format!(
            "      - {{ name: reader-{i}, address: \"{r}\" }}\n"
        ));
    }
    s
}

/// A client connection kept open between requests (HTTP/1.1 keep-alive).
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
    addr: SocketAddr,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive { sender, conn, addr }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let req = Request::builder()
            .uri(path)
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        // The connection takes the next request only once the last exchange is wound up.
        tokio::time::timeout(WAIT, self.sender.ready())
            .await
            .expect("in time")
            .expect("the connection is still open");
        let resp = tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The server closed the connection.
    pub fn closed(&self) -> bool {
        self.conn.is_finished()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
