//! The client side: accepting connections, and the HTTP/1 connection loop around the request
//! path (`forward.rs`).
//!
//! An idle keep-alive connection is a small task (see [`serve`]) holding a socket: ~650 bytes
//! of RSS in all, against nginx's ~0.5 KiB. The request's own state (its future, buffers and
//! parsed head) exists only while a request is served.
//!
//! Idle connections are closed after [`IDLE_TIMEOUT`] without a request, and at once when
//! shutdown starts (as nginx does): the client reconnects to a proxy that is not leaving.
//!
//! The request header is read here to its end under one deadline for the whole header
//! (`timeouts.client_header`, nginx's `client_header_timeout`), so a client sending one header
//! line every few seconds cannot keep its connection, and a file descriptor, for as long as it
//! likes. Its raw bytes are checked here too (`request_rules::check_raw`).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::errors::{self, ProxyError};
use crate::forward::{Forwarder, Served};
use crate::h1::head_end;
use crate::request_rules::{self, RawBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a client connection may sit without sending a request (nginx's keepalive_timeout
/// default is 75 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Bytes read in one go when a request starts: Pingora's own first header read size, so a
/// request header that fits in one read needs no second one.
const FIRST_READ: usize = 4096;

/// How long a refusal made by the connection loop may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a refusal, how long (and how many bytes) the client's further bytes are read and
/// dropped before the socket closes (nginx's `lingering_time` is 30 s; a refused client gets
/// less).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Same as Pingora's listeners: bursts of new connections wait in the kernel, not refused.
const LISTEN_BACKLOG: i32 = 65535;

/// Binds the client listeners, one per worker, before the server starts, so a taken address is
/// a clear error at startup (Pingora would retry for 30 s, then panic inside its service).
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    crate::workers::bind(addr, workers, LISTEN_BACKLOG)
}

/// What the connection loop enforces on a client before the request path sees its request;
/// read for every request, so a reloaded config applies to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRules {
    /// The whole request header must have arrived within this, from its first byte.
    pub header_timeout: Duration,
    /// A header still without its end past this many bytes is refused (431).
    pub max_header_bytes: u64,
}

/// What the connection loop needs from the rest of the proxy: the current [`ClientRules`], and
/// somewhere to count what it refused.
pub trait ClientEdge: Send + Sync {
    fn rules(&self) -> ClientRules;
    /// A request refused by the connection loop (`reason` as in
    /// `request_rules::Refusal::as_str`, or `header_timeout`, `headers_too_large`).
    fn refused(&self, reason: &'static str);
}

/// Where [`serve`] gets its [`ClientEdge`].
pub type RulesSource = Arc<dyn ClientEdge>;

/// What serves a request once its head is read: the request path ([`Forwarder`]), or a test's
/// stand-in. Its future is boxed so that it lives only while the request does: an idle
/// connection does not carry its size.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        client: &'a mut TcpStream,
        peer: SocketAddr,
        request: BytesMut,
        head_len: usize,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Served> + Send + 'a>>;
}

impl Handler for Forwarder {
    fn handle<'a>(
        &'a self,
        client: &'a mut TcpStream,
        peer: SocketAddr,
        request: BytesMut,
        head_len: usize,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Served> + Send + 'a>> {
        Box::pin(self.serve(client, peer, request, head_len, shutdown))
    }
}

/// One worker's client listener: a Pingora background service, run on a single-threaded
/// runtime of its own (see `workers.rs`), that accepts connections on the worker's socket and
/// serves each with [`serve`] on the same thread.
pub struct Downstream<A> {
    worker: usize,
    app: Arc<A>,
    rules: RulesSource,
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl<A> Downstream<A> {
    pub fn new(worker: usize, app: A, rules: RulesSource, listener: std::net::TcpListener) -> Self {
        Downstream {
            worker,
            app: Arc::new(app),
            rules,
            listener: Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl<A: Handler> BackgroundService for Downstream<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        crate::workers::enter(self.worker);
        let std_listener = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(std_listener) = std_listener else {
            return;
        };
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the client listener; exiting");
                crate::logging::exit(1);
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Responses leave as soon as they are flushed.
                        let _ = tcp.set_nodelay(true);
                        // This worker's runtime has one thread: the connection stays on it.
                        tokio::spawn(serve(
                            self.app.clone(),
                            self.rules.clone(),
                            tcp,
                            peer,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        if is_out_of_resources(&e) {
                            // accept() keeps failing at once until something is released.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        // New connections are refused from here on; requests in flight finish.
        drop(listener);
    }
}

fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One client connection: wait for a request, read its head, hand it to the request path,
/// repeat while the connection may be reused.
///
/// This future is most of what an idle connection costs, so it holds little: the socket, the
/// idle timer, the shutdown wait and the bytes of a pipelined next request.
// A plain function returning an `async move` block, not an `async fn`: the latter keeps a
// second copy of its arguments, measured at ~140 bytes more per connection.
#[allow(clippy::manual_async_fn)]
pub fn serve<A: Handler>(
    app: Arc<A>,
    rules: RulesSource,
    mut tcp: TcpStream,
    peer: SocketAddr,
    mut shutdown: ShutdownWatch,
) -> impl Future<Output = ()> + Send {
    async move {
        // Bytes of the next request read together with the previous one (pipelining).
        let mut next: Option<BytesMut> = None;
        loop {
            let mut first = match next.take() {
                Some(bytes) => bytes,
                None => match wait_for_request(&mut tcp, IDLE_TIMEOUT, &mut shutdown).await {
                    Wait::Request(first) => first,
                    Wait::Closed | Wait::IdleTimeout | Wait::ShuttingDown => return,
                },
            };
            let limits = rules.rules();
            let end = match read_header_end(&mut tcp, &mut first, &limits).await {
                HeaderRead::Complete(end) => end,
                HeaderRead::Closed => return,
                HeaderRead::Refused(err) => {
                    rules.refused(if err.status == 408 {
                        "header_timeout"
                    } else {
                        "headers_too_large"
                    });
                    // Boxed, here and below: the refusal's buffers must not be part of
                    // what every idle connection holds.
                    Box::pin(refuse(&mut tcp, err)).await;
                    return;
                }
            };
            match request_rules::check_raw(&first[..end]) {
                Err(refusal) => {
                    tracing::debug!(reason = refusal.as_str(), "request refused as sent");
                    rules.refused(refusal.as_str());
                    Box::pin(refuse(&mut tcp, &errors::ERR_BAD_REQUEST)).await;
                    return;
                }
                // A pipelined request behind this one is kept for the next turn, so the
                // request path sees this request's bytes only.
                Ok(RawBody::Length(body)) => {
                    let request_end = usize::try_from(body)
                        .ok()
                        .and_then(|b| b.checked_add(end))
                        .unwrap_or(usize::MAX);
                    if first.len() > request_end {
                        next = Some(first.split_off(request_end));
                    }
                }
                // Whether a malformed one is refused, and where it ends, is the request
                // path's to find as its body arrives.
                Ok(RawBody::Chunked) | Ok(RawBody::Unknown) => {}
            }
            let served = app.handle(&mut tcp, peer, first, end, &shutdown).await;
            if !served.keep {
                if served.linger {
                    Box::pin(linger_close(&mut tcp)).await;
                }
                return;
            }
            if let Some(bytes) = served.next {
                next = Some(bytes);
            }
        }
    }
}

/// How reading a request header to its end went.
#[derive(Debug, PartialEq, Eq)]
enum HeaderRead {
    /// The buffer holds the whole header, this long (and maybe the first body bytes).
    Complete(usize),
    /// The client left before its header was complete.
    Closed,
    /// Not waited for any longer: answer this and close.
    Refused(&'static ProxyError),
}

/// Reads until the request header in `buf` is complete, within `rules.header_timeout` from now
/// (the first bytes have just arrived) and `rules.max_header_bytes`.
async fn read_header_end(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    rules: &ClientRules,
) -> HeaderRead {
    let deadline = tokio::time::Instant::now() + rules.header_timeout;
    let limit = usize::try_from(rules.max_header_bytes).unwrap_or(usize::MAX);
    let mut searched = 0;
    loop {
        if let Some(end) = head_end(buf, searched) {
            return HeaderRead::Complete(end);
        }
        searched = buf.len();
        // The end may still come, but not within the limit: refused without reading the rest.
        if buf.len() > limit.saturating_add(4) {
            return HeaderRead::Refused(&errors::ERR_HEADERS_TOO_LARGE);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(FIRST_READ);
        }
        match tokio::time::timeout_at(deadline, tcp.read_buf(buf)).await {
            Err(_) => return HeaderRead::Refused(&errors::ERR_REQUEST_TIMEOUT),
            Ok(Ok(0)) | Ok(Err(_)) => return HeaderRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// Answers a request the connection loop refused, then closes.
async fn refuse(tcp: &mut TcpStream, err: &ProxyError) {
    let mut response = Vec::with_capacity(256);
    crate::h1::write_proxy_answer(&mut response, err.status, &err.body(), None, None, false);
    // Bounded: a client that does not read its 408 must not hold the socket either.
    let sent = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, tcp.write_all(&response)).await;
    if matches!(sent, Ok(Ok(()))) {
        linger_close(tcp).await;
    }
}

/// Lingering close, as nginx does: closing with unread bytes from the client (the rest of an
/// oversized header, a body) sends a reset, which can destroy the answer before the client
/// has read it. Ends our side, reads and drops what still comes, within bounds, then closes.
async fn linger_close(tcp: &mut TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// What ended the wait for a request.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// The first bytes of a request.
    Request(BytesMut),
    /// The client closed the connection, or it broke.
    Closed,
    IdleTimeout,
    ShuttingDown,
}

/// Waits until the client sends something, reading it: the start of its next request.
fn wait_for_request<'a>(
    conn: &'a mut TcpStream,
    idle_timeout: Duration,
    shutdown: &'a mut ShutdownWatch,
) -> WaitForRequest<'a, impl Future + Send + 'a> {
    WaitForRequest {
        conn,
        idle: tokio::time::sleep(idle_timeout),
        // Each connection's receiver has not seen shutdown until this resolves once, and then
        // the connection ends: `changed` is enough (and smaller than `wait_for`).
        shutdown: shutdown.changed(),
    }
}

pin_project_lite::pin_project! {
    /// [`wait_for_request`]'s future. By hand rather than `select!`, which keeps a second copy
    /// of the timers: this is what every idle connection holds.
    struct WaitForRequest<'a, D> {
        conn: &'a mut TcpStream,
        #[pin]
        idle: tokio::time::Sleep,
        #[pin]
        shutdown: D,
    }
}

impl<D: Future> Future for WaitForRequest<'_, D> {
    type Output = Wait;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wait> {
        let this = self.project();
        // A request that is already there is served even if shutdown has begun (it is
        // answered with `Connection: close`).
        if let Poll::Ready(wait) = poll_first_bytes(this.conn, cx) {
            return Poll::Ready(wait);
        }
        // A closed shutdown channel (the server is gone) ends the wait too.
        if this.shutdown.poll(cx).is_ready() {
            return Poll::Ready(Wait::ShuttingDown);
        }
        if this.idle.poll(cx).is_ready() {
            return Poll::Ready(Wait::IdleTimeout);
        }
        Poll::Pending
    }
}

/// The read buffer lives on the stack of each poll and is copied out only when bytes came, so
/// a waiting connection holds no buffer.
fn poll_first_bytes(tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Wait> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut buf = ReadBuf::uninit(&mut chunk);
    match Pin::new(tcp).poll_read(cx, &mut buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(_)) => Poll::Ready(Wait::Closed),
        Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Wait::Closed),
        Poll::Ready(Ok(())) => {
            let mut first = BytesMut::with_capacity(FIRST_READ);
            first.extend_from_slice(buf.filled());
            Poll::Ready(Wait::Request(first))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the proxy's side, and the client's socket.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _peer) = listener.accept().await.unwrap();
        (server, client)
    }

    struct Fixed(ClientRules);

    impl ClientEdge for Fixed {
        fn rules(&self) -> ClientRules {
            self.0
        }
        fn refused(&self, _reason: &'static str) {}
    }

    fn rules(header_timeout: Duration, max_header_bytes: u64) -> RulesSource {
        Arc::new(Fixed(ClientRules {
            header_timeout,
            max_header_bytes,
        }))
    }

    fn test_rules() -> RulesSource {
        rules(Duration::from_secs(60), 65536)
    }

    fn watch() -> (tokio::sync::watch::Sender<bool>, ShutdownWatch) {
        tokio::sync::watch::channel(false)
    }

    /// Answers every request with an empty 200, keeping the connection for `keep` requests.
    struct Answer {
        keep: usize,
        served: std::sync::atomic::AtomicUsize,
    }

    impl Handler for Answer {
        fn handle<'a>(
            &'a self,
            client: &'a mut TcpStream,
            _peer: SocketAddr,
            request: BytesMut,
            head_len: usize,
            _shutdown: &'a ShutdownWatch,
        ) -> Pin<Box<dyn Future<Output = Served> + Send + 'a>> {
            Box::pin(async move {
                assert_eq!(&request[..head_len], b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                let n = self
                    .served
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = client
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                Served {
                    keep: n + 1 < self.keep,
                    next: None,
                    linger: false,
                }
            })
        }
    }

    /// Sends `requests` GETs one after the other on one connection served by [`serve`]; returns
    /// how many were answered before the connection closed.
    async fn answered_on_one_connection(keep: usize, requests: usize, pipelined: bool) -> usize {
        let app = Arc::new(Answer {
            keep,
            served: Default::default(),
        });
        let (server, mut client) = pair().await;
        let peer = server.peer_addr().unwrap();
        let (_tx, rx) = watch();
        let served = tokio::spawn(serve(app, test_rules(), server, peer, rx));
        let mut answered = 0;
        if pipelined {
            let all = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests);
            client.write_all(&all).await.unwrap();
        }
        for _ in 0..requests {
            if !pipelined
                && client
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .is_err()
            {
                break;
            }
            let mut response = Vec::new();
            let mut byte = [0u8; 1];
            while !response.ends_with(b"\r\n\r\n") {
                match client.read(&mut byte).await {
                    Ok(1) => response.push(byte[0]),
                    _ => break,
                }
            }
            if !response.starts_with(b"HTTP/1.1 200") {
                break;
            }
            answered += 1;
        }
        // The connection is closed once no more requests may use it.
        let mut rest = Vec::new();
        let _ = client.shutdown().await;
        let _ = client.read_to_end(&mut rest).await;
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection task ends once the connection is closed")
            .unwrap();
        answered
    }

    #[tokio::test]
    async fn a_connection_serves_requests_while_the_request_path_keeps_it() {
        assert_eq!(answered_on_one_connection(usize::MAX, 5, false).await, 5);
        assert_eq!(answered_on_one_connection(2, 5, false).await, 2);
        assert_eq!(answered_on_one_connection(1, 5, false).await, 1);
        // Requests sent together are served one by one, in order.
        assert_eq!(answered_on_one_connection(usize::MAX, 4, true).await, 4);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_less_than_a_kilobyte() {
        // What every idle keep-alive connection costs besides its socket is this future (and
        // tokio's task header): a buffer or a request's state inlined into it by accident is
        // paid ten thousand times over.
        let (server, _client) = pair().await;
        let peer = server.peer_addr().unwrap();
        let (_tx, rx) = watch();
        let app = Arc::new(Answer {
            keep: 1,
            served: Default::default(),
        });
        let conn = serve(app, test_rules(), server, peer, rx);
        let size = std::mem::size_of_val(&conn);
        assert!(size < 1024, "an idle connection's future is {size} bytes");
    }

    #[tokio::test]
    async fn hands_over_the_first_bytes_of_a_request() {
        let (mut server, mut client) = pair().await;
        let (_tx, mut rx) = watch();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let wait = wait_for_request(&mut server, Duration::from_secs(5), &mut rx).await;
        assert_eq!(
            wait,
            Wait::Request(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]))
        );
    }

    #[tokio::test]
    async fn a_closed_connection_ends_the_wait() {
        let (mut server, client) = pair().await;
        let (_tx, mut rx) = watch();
        drop(client);
        let wait = wait_for_request(&mut server, Duration::from_secs(5), &mut rx).await;
        assert_eq!(wait, Wait::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_let_go_after_the_idle_timeout() {
        let (mut server, _client) = pair().await;
        let (_tx, mut rx) = watch();
        let wait = wait_for_request(&mut server, Duration::from_secs(75), &mut rx).await;
        assert_eq!(wait, Wait::IdleTimeout);
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_but_serves_a_request_already_sent() {
        let (mut server, _client) = pair().await;
        let (tx, mut rx) = watch();
        let waiting = tokio::spawn(async move {
            wait_for_request(&mut server, Duration::from_secs(60), &mut rx).await
        });
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        assert_eq!(waiting.await.unwrap(), Wait::ShuttingDown);

        let (mut server, mut client) = pair().await;
        let (tx, mut rx) = watch();
        client.write_all(b"GET /").await.unwrap();
        // Let the bytes arrive before shutdown starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        assert_eq!(
            wait_for_request(&mut server, Duration::from_secs(60), &mut rx).await,
            Wait::Request(BytesMut::from(&b"GET /"[..]))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_trickled_line_by_line_is_refused_at_the_header_deadline() {
        let (mut server, mut client) = pair().await;
        let trickle = tokio::spawn(async move {
            let _ = client.write_all(b"GET / HTTP/1.1\r\n").await;
            for i in 0..100 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if client
                    .write_all(format!("X-{i}: a\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
            rest
        });
        let (_tx, mut rx) = watch();
        let Wait::Request(mut first) =
            wait_for_request(&mut server, Duration::from_secs(75), &mut rx).await
        else {
            panic!("no request");
        };
        let started = tokio::time::Instant::now();
        let rules = rules(Duration::from_secs(60), 65536).rules();
        let got = read_header_end(&mut server, &mut first, &rules).await;
        assert_eq!(got, HeaderRead::Refused(&errors::ERR_REQUEST_TIMEOUT));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        refuse(&mut server, &errors::ERR_REQUEST_TIMEOUT).await;
        drop(server);
        let answer = String::from_utf8(trickle.await.unwrap()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(
            answer.ends_with(
                r#""error":"request_timeout","message":"the request was not received in time"}"#
            ),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_header_arriving_in_pieces_is_read_to_its_end_and_kept_whole() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"PUT /a HTTP/1.1\r\n").await.unwrap();
        let (_tx, mut rx) = watch();
        let Wait::Request(mut first) =
            wait_for_request(&mut server, Duration::from_secs(5), &mut rx).await
        else {
            panic!("no request");
        };
        let writer = tokio::spawn(async move {
            for part in [&b"Host: a\r"[..], b"\nContent-Length: 2\r\n", b"\r\nab"] {
                tokio::time::sleep(Duration::from_millis(20)).await;
                client.write_all(part).await.unwrap();
            }
            client
        });
        let rules = test_rules().rules();
        assert_eq!(
            read_header_end(&mut server, &mut first, &rules).await,
            HeaderRead::Complete(47)
        );
        let _client = writer.await.unwrap();
        assert!(first.starts_with(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_header_past_the_size_limit_is_refused_without_waiting_for_its_end() {
        let (mut server, mut client) = pair().await;
        let (_tx, mut rx) = watch();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let Wait::Request(mut first) =
            wait_for_request(&mut server, Duration::from_secs(5), &mut rx).await
        else {
            panic!("no request");
        };
        client
            .write_all(format!("X-Big: {}\r\n", "x".repeat(3000)).as_bytes())
            .await
            .unwrap();
        let rules = rules(Duration::from_secs(60), 2048).rules();
        assert_eq!(
            read_header_end(&mut server, &mut first, &rules).await,
            HeaderRead::Refused(&errors::ERR_HEADERS_TOO_LARGE)
        );
        // A client that leaves mid-header is simply gone.
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let Wait::Request(mut first) =
            wait_for_request(&mut server, Duration::from_secs(5), &mut rx).await
        else {
            panic!("no request");
        };
        drop(client);
        assert_eq!(
            read_header_end(&mut server, &mut first, &rules).await,
            HeaderRead::Closed
        );
    }
}
