//! HTTP/1 message semantics through the proxy, against a scripted backend on a real socket:
//! bodies framed by length, by chunks and by close; HEAD, 204, 304 and 1xx answers;
//! `Expect: 100-continue`; `Connection: close` from either side; answers that end early or
//! overrun their length (never reused). Whatever forwards requests — Pingora's proxy loop or
//! one of ours — must keep passing these.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{static_topology, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests as the scripted backend saw them: head, body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What the scripted backend answers to a request for `path`: the raw response bytes, and
/// whether to close the connection after writing them.
type Script = fn(path: &str) -> (Vec<u8>, bool);

/// A backend that answers each request with the bytes its script gives, reading requests
/// framed by Content-Length or chunked; counts connections and records request heads.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Seen,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, script, r.clone()));
            }
        });
        Scripted {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn request(&self, path: &str) -> Option<(String, Vec<u8>)> {
        let r = self.requests.lock().unwrap();
        r.iter().find(|(head, _)| head.contains(path)).cloned()
    }
}

async fn serve(mut s: TcpStream, script: Script, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if lower.contains("expect: 100-continue") && path.contains("continue") {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        let body = if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if path.contains("early") {
                // Answers before the body arrived, then stops reading.
                Vec::new()
            } else {
                let Some(_) = read_until(&mut s, &mut buf, |b| (b.len() >= n).then_some(n)).await
                else {
                    return;
                };
                buf.drain(..n).collect()
            }
        } else if lower.contains("transfer-encoding: chunked") {
            let Some(end) =
                read_until(&mut s, &mut buf, |b| find(b, b"0\r\n\r\n").map(|i| i + 5)).await
            else {
                return;
            };
            buf.drain(..end).collect()
        } else {
            Vec::new()
        };
        seen.lock().unwrap().push((head, body));
        let (answer, close) = script(&path);
        if s.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(n) = done(buf) {
            return Some(n);
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn script(path: &str) -> (Vec<u8>, bool) {
    let ok = |body: &str| {
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            false,
        )
    };
    match path {
        "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(), false),
        "/204" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
        "/304" => (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(), false),
        "/103" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                .to_vec(),
            false,
        ),
        "/chunked" => {
            let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..64 {
                r.extend(format!("{:x}\r\n", 16384).as_bytes());
                r.extend(std::iter::repeat_n(b'c', 16384));
                r.extend(b"\r\n");
            }
            r.extend(b"0\r\n\r\n");
            (r, false)
        }
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nall of it".to_vec(), true),
        "/backend-closes" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
            true,
        ),
        "/short" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(), true),
        "/overrun" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_vec(), false),
        "/early" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly".to_vec(), false),
        _ => ok("ok"),
    }
}

async fn setup() -> (Scripted, Proxy) {
    let backend = Scripted::start(script).await;
    // One worker: every client connection of a test meets the same upstream pool.
    let cfg = format!(
        "{}timeouts: {{ read: 3s }}\nthreads: 1\n",
        static_topology(Some(backend.addr), &[])
    );
    let proxy = Proxy::start(&cfg).await;
    (backend, proxy)
}

/// A client connection that reads whole responses (by Content-Length, chunked, or to close).
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads one response; `head_only` for the answer to a HEAD. `None` if the connection
    /// closed (or nothing came within the wait) before a whole response arrived.
    async fn answer(&mut self, head_only: bool) -> Option<Answer> {
        tokio::time::timeout(Duration::from_secs(10), self.read_answer(head_only))
            .await
            .ok()?
    }

    async fn read_answer(&mut self, head_only: bool) -> Option<Answer> {
        let end = read_until(&mut self.s, &mut self.buf, |b| {
            find(b, b"\r\n\r\n").map(|i| i + 4)
        })
        .await?;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let body = if head_only || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            read_until(&mut self.s, &mut self.buf, |b| (b.len() >= n).then_some(n)).await?;
            self.buf.drain(..n).collect()
        } else if lower.contains("transfer-encoding: chunked") {
            let mut body = Vec::new();
            loop {
                let line = read_until(&mut self.s, &mut self.buf, |b| {
                    find(b, b"\r\n").map(|i| i + 2)
                })
                .await?;
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line - 2]).ok()?, 16)
                        .ok()?;
                self.buf.drain(..line);
                read_until(&mut self.s, &mut self.buf, |b| {
                    (b.len() >= size + 2).then_some(0)
                })
                .await?;
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let _ = self.s.read_to_end(&mut self.buf).await;
            std::mem::take(&mut self.buf)
        };
        Some(Answer { status, head, body })
    }

    /// Whether the proxy closed this connection (within a short wait).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

const GET: fn(&str) -> Vec<u8> =
    |path| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodyless_answers_keep_the_connection_usable() {
    let (backend, proxy) = setup().await;
    let mut c = Client::open(proxy.addr).await;
    c.send(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let a = c.answer(true).await.expect("HEAD answered");
    assert_eq!(a.status, 200);
    assert!(
        a.head.to_ascii_lowercase().contains("content-length: 5"),
        "{}",
        a.head
    );
    for path in ["/204", "/304", "/after"] {
        c.send(&GET(path)).await;
        let a = c
            .answer(false)
            .await
            .unwrap_or_else(|| panic!("{path} answered"));
        assert_eq!(a.status, path[1..].parse().unwrap_or(200), "{path}");
        assert!(a.body.is_empty() || path == "/after", "{path}");
    }
    // A 1xx before the final answer: the client gets the final answer whole.
    c.send(&GET("/103")).await;
    let mut a = c.answer(false).await.expect("answered");
    if a.status == 103 {
        a = c.answer(false).await.expect("final answer after the 103");
    }
    assert_eq!((a.status, a.body.as_slice()), (200, &b"final"[..]));
    c.send(&GET("/after")).await;
    assert_eq!(c.answer(false).await.expect("still usable").body, b"ok");
    assert_eq!(
        backend.connections(),
        1,
        "one upstream connection served all of it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_whole_both_ways() {
    let (backend, proxy) = setup().await;
    let mut c = Client::open(proxy.addr).await;
    // 1 MiB chunked answer.
    c.send(&GET("/chunked")).await;
    let a = c.answer(false).await.expect("answered");
    assert_eq!(a.body.len(), 64 * 16384);
    assert!(a.body.iter().all(|b| *b == b'c'));
    // 4 MiB PUT by length, and a chunked one.
    let big = vec![b'p'; 4 << 20];
    let mut req = format!(
        "PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend(&big);
    c.send(&req).await;
    assert_eq!(c.answer(false).await.expect("answered").status, 200);
    let (_, body) = backend.request("/big").expect("arrived");
    assert_eq!(body, big);
    let mut req =
        b"POST /chunked-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..16 {
        req.extend(b"8000\r\n");
        req.extend(std::iter::repeat_n(b'q', 0x8000));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    c.send(&req).await;
    assert_eq!(c.answer(false).await.expect("answered").status, 200);
    let (_, body) = backend.request("/chunked-up").expect("arrived");
    assert_eq!(body.iter().filter(|b| **b == b'q').count(), 16 * 0x8000);
    // A body framed by the backend's close reaches the client whole.
    c.send(&GET("/until-close")).await;
    let a = c.answer(false).await.expect("answered");
    assert!(
        a.body.ends_with(b"all of it"),
        "{:?}",
        String::from_utf8_lossy(&a.body)
    );
    // That connection ended with the answer: the next request does not meet it in the pool.
    let mut fresh = Client::open(proxy.addr).await;
    fresh.send(&GET("/after")).await;
    assert_eq!(fresh.answer(false).await.expect("answered").body, b"ok");
    let m = proxy.metrics().await;
    assert!(
        !m.contains("rw_proxy_upstream_errors_total{"),
        "a closed upstream connection was reused: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_body_through() {
    let (backend, proxy) = setup().await;
    let mut c = Client::open(proxy.addr).await;
    c.send(
        b"PUT /continue HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // A client waits a moment for the 100, then sends the body anyway (as curl does).
    // Cancelling the read loses nothing: what arrived stays in the client's buffer.
    let early = tokio::time::timeout(Duration::from_millis(500), c.answer(false)).await;
    let status = match early {
        Ok(Some(a)) => a.status,
        _ => 0,
    };
    assert!(
        status == 100 || status == 0,
        "unexpected {status} before the body"
    );
    c.send(b"data").await;
    let a = c.answer(false).await.expect("answered");
    let a = if a.status == 100 {
        c.answer(false).await.expect("final")
    } else {
        a
    };
    assert_eq!(a.status, 200);
    let (_, body) = backend.request("/continue").expect("arrived");
    assert_eq!(body, b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_either_side() {
    let (backend, proxy) = setup().await;
    // The backend closes: the client's connection goes on, over a new upstream connection.
    let mut c = Client::open(proxy.addr).await;
    c.send(&GET("/backend-closes")).await;
    assert_eq!(c.answer(false).await.expect("answered").body, b"ok");
    let before = backend.connections();
    c.send(&GET("/next")).await;
    assert_eq!(
        c.answer(false)
            .await
            .expect("the client connection is kept")
            .body,
        b"ok"
    );
    assert_eq!(
        backend.connections(),
        before + 1,
        "the closed upstream connection was not reused"
    );
    // The client closes: answered, then the proxy closes.
    c.send(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let a = c.answer(false).await.expect("answered");
    assert!(
        a.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        a.head
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_early_or_overruns_is_never_reused() {
    let (backend, proxy) = setup().await;
    // Ends early: the client must see the connection end, not wait for a body that never comes
    // nor get the next answer spliced into this one.
    let mut c = Client::open(proxy.addr).await;
    c.send(&GET("/short")).await;
    let a = c.answer(false).await;
    assert!(a.is_none(), "a truncated answer passed as whole");
    assert!(c.closed().await);

    // Overruns: the extra bytes never become another request's answer.
    let mut c = Client::open(proxy.addr).await;
    c.send(&GET("/overrun")).await;
    let a = c.answer(false).await.expect("answered");
    assert_eq!(a.body, b"ok");
    let before = backend.connections();
    c.send(&GET("/next")).await;
    if let Some(next) = c.answer(false).await {
        assert_eq!(next.body, b"ok", "the overrun leaked into the next answer");
    }
    let mut fresh = Client::open(proxy.addr).await;
    fresh.send(&GET("/fresh")).await;
    assert_eq!(fresh.answer(false).await.expect("answered").body, b"ok");
    assert!(
        backend.connections() > before,
        "an upstream connection with stray bytes was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_before_the_body_is_passed_on_and_not_reused() {
    let (backend, proxy) = setup().await;
    let c = Client::open(proxy.addr).await;
    // Half the body, then the client stalls: the backend answers after the header anyway.
    let mut req = b"PUT /early HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'e', 100_000));
    let (mut rd, mut wr) = c.s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        wr
    });
    let mut buf = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.ends_with(b"early") {
                break;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no answer: {}", String::from_utf8_lossy(&buf));
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // The client leaves with its request unfinished: that upstream connection is mid-request.
    drop(writer.await);
    drop(rd);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = backend.connections();
    let mut fresh = Client::open(proxy.addr).await;
    fresh.send(&GET("/fresh")).await;
    assert_eq!(fresh.answer(false).await.expect("answered").body, b"ok");
    assert_eq!(
        backend.connections(),
        before + 1,
        "the connection with a request body still owed was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_refused_and_an_h2c_offer_is_not_passed_on() {
    let (backend, proxy) = setup().await;
    let mut c = Client::open(proxy.addr).await;
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await;
    let a = c.answer(false).await.expect("answered");
    assert_eq!(a.status, 400, "{}", a.head);
    assert!(
        String::from_utf8_lossy(&a.body).contains("upgrade_refused"),
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(
        backend.request("/ws").is_none(),
        "the handshake reached the node"
    );
    // The connection goes on, and an h2c offer is served as plain HTTP/1.1.
    c.send(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await;
    let a = c.answer(false).await.expect("answered");
    assert_eq!(
        (a.status, a.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        a.head
    );
    let (head, _) = backend.request("/after").expect("arrived");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("upgrade"), "{head}");
    assert!(!head.contains("http2-settings"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_streamed_chunked_body_is_never_spliced() {
    let (backend, proxy) = setup().await;
    let mut c = Client::open(proxy.addr).await;
    // Larger than what is read whole first, so the body is streamed; the next request rides in
    // the same writes right behind its last chunk.
    let mut req =
        b"POST /chunked-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend(b"8000\r\n");
        req.extend(std::iter::repeat_n(b'q', 0x8000));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req.extend(GET("/pipelined"));
    c.send(&req).await;
    assert_eq!(c.answer(false).await.expect("answered").status, 200);
    let (_, body) = backend.request("/chunked-up").expect("arrived");
    assert_eq!(body.iter().filter(|b| **b == b'q').count(), 4 * 0x8000);
    // Either the pipelined request is answered as itself, or the connection ends (the client
    // sends it again); never a request made of the wrong bytes.
    match c.answer(false).await {
        Some(a) => assert_eq!(a.body, b"ok"),
        None => assert!(c.closed().await),
    }
    let heads: Vec<String> = backend
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h.lines().next().unwrap_or("").to_string())
        .collect();
    for h in &heads {
        assert!(
            h == "POST /chunked-up HTTP/1.1" || h == "GET /pipelined HTTP/1.1",
            "a spliced request reached the node: {heads:?}"
        );
    }
}
