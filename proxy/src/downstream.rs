//! The client side: accepting connections, and the HTTP/1 connection loop around Pingora's
//! request handling.
//!
//! Pingora's own listening service keeps, for every client connection, a task sized for a TLS
//! handshake, a stream with a permanent 1.5 KiB write buffer, and between two requests the
//! whole per-request proxy future with its 4 KiB header buffer: ~25 KiB per idle keep-alive
//! connection, against nginx's ~0.5 KiB. Here an idle connection is a small task (a ~350 byte
//! future, see [`serve`]) holding a socket: ~650 bytes of RSS in all. Pingora's request
//! handling (`HttpServerApp::process_new_http`, the same entry point its own service uses)
//! starts once the first bytes of a request have arrived, and gets them as the session's
//! pre-read prefix, so no read is added.
//!
//! Idle connections are closed after [`IDLE_TIMEOUT`] without a request, and at once when
//! shutdown starts (as nginx does): the client reconnects to a proxy that is not leaving.
//!
//! The request header is read here to its end before Pingora sees it, under one deadline for
//! the whole header (`timeouts.client_header`, nginx's `client_header_timeout`): Pingora's own
//! header read restarts its timer on every read, so a client sending one header line every few
//! seconds would keep its connection, and a file descriptor, for as long as it liked.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::errors::{self, ProxyError};
use crate::request_rules::{self, RawBody};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a client connection may sit without sending a request (nginx's keepalive_timeout
/// default is 75 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Bytes read in one go when a request starts: Pingora's own first header read size, so a
/// request header that fits in one read needs no second one.
const FIRST_READ: usize = 4096;

/// Writes smaller than this are gathered until a flush: a response header and a short body
/// leave in one send (Pingora's default client write buffer is the same size).
const WRITE_GATHER: usize = 1460;

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

/// What the connection loop enforces on a client before Pingora sees its request; read for
/// every request, so a reloaded config applies to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRules {
    /// The whole request header must have arrived within this, from its first byte.
    pub header_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub body_timeout: Duration,
    /// A header still without its end past this many bytes is refused (431).
    pub max_header_bytes: u64,
}

/// What the connection loop needs from the rest of the proxy: the current [`ClientRules`], and
/// somewhere to count what it refused.
pub trait ClientEdge: Send + Sync {
    fn rules(&self) -> ClientRules;
    /// A request refused before Pingora saw it (`reason` as in `request_rules::Refusal::as_str`,
    /// or `header_timeout`, `headers_too_large`).
    fn refused(&self, reason: &'static str);
}

/// Where [`serve`] gets its [`ClientEdge`].
pub type RulesSource = Arc<dyn ClientEdge>;

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
impl<A> BackgroundService for Downstream<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
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
                        let conn = ClientStream::new(tcp, peer);
                        // This worker's runtime has one thread: the connection stays on it.
                        tokio::spawn(serve(
                            self.app.clone(),
                            self.rules.clone(),
                            conn,
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
        self.app.http_cleanup().await;
    }
}

fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One client connection: wait for a request, let Pingora handle it, repeat while the
/// connection may be reused.
///
/// This future is most of what an idle connection costs, so it holds little: the socket, the
/// idle timer, the shutdown wait and a request count. Pingora's request future is boxed and
/// lives only while a request is served.
// A plain function returning an `async move` block, not an `async fn`: the latter keeps a
// second copy of its arguments, measured at ~140 bytes more per connection.
#[allow(clippy::manual_async_fn)]
pub fn serve<A>(
    app: Arc<A>,
    rules: RulesSource,
    mut conn: ClientStream,
    mut shutdown: ShutdownWatch,
) -> impl Future<Output = ()> + Send
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async move {
        let mut served: u32 = 0;
        // Bytes of the next request read together with the previous one (pipelining).
        let mut next: Option<BytesMut> = None;
        loop {
            let mut first = match next.take() {
                Some(bytes) => bytes,
                None => match wait_for_request(&mut conn, IDLE_TIMEOUT, &mut shutdown).await {
                    Wait::Request(first) => first,
                    Wait::Closed | Wait::IdleTimeout | Wait::ShuttingDown => return,
                },
            };
            let limits = rules.rules();
            match read_header_end(&mut conn.tcp, &mut first, &limits).await {
                HeaderRead::Complete(end) => match request_rules::check_raw(&first[..end]) {
                    Err(refusal) => {
                        tracing::debug!(reason = refusal.as_str(), "request refused as sent");
                        rules.refused(refusal.as_str());
                        refuse(&mut conn.tcp, &errors::ERR_BAD_REQUEST).await;
                        return;
                    }
                    // A pipelined request behind this one is kept for the next turn, so
                    // Pingora sees this request's bytes only (with more it would answer
                    // this one and close the connection, dropping the next).
                    Ok(RawBody::Length(body)) => {
                        let request_end = usize::try_from(body)
                            .ok()
                            .and_then(|b| b.checked_add(end))
                            .unwrap_or(usize::MAX);
                        if first.len() > request_end {
                            next = Some(first.split_off(request_end));
                        }
                    }
                    Ok(RawBody::Chunked) => match request_rules::chunked_end(&first[end..]) {
                        Err(refusal) => {
                            tracing::debug!(reason = refusal.as_str(), "request refused as sent");
                            rules.refused(refusal.as_str());
                            refuse(&mut conn.tcp, &errors::ERR_BAD_REQUEST).await;
                            return;
                        }
                        Ok(Some(body_end)) if first.len() > end + body_end => {
                            next = Some(first.split_off(end + body_end));
                        }
                        // The rest of the body is still to come: Pingora's parser frames it.
                        Ok(_) => {}
                    },
                    Ok(RawBody::Unknown) => {}
                },
                HeaderRead::Closed => return,
                HeaderRead::Refused(err) => {
                    rules.refused(if err.status == 408 {
                        "header_timeout"
                    } else {
                        "headers_too_large"
                    });
                    refuse(&mut conn.tcp, err).await;
                    return;
                }
            }
            conn.begin_request();
            let mut session = new_session(&*app, conn, first, served);
            session.set_read_timeout(Some(limits.body_timeout));
            let Some(reused) = app.process_new_http(session, &shutdown).await else {
                return;
            };
            // The returned settings are the keep-alive ones set in `new_session` (Pingora's
            // pipelining is off: pipelined bytes were kept out of the session above, and a
            // connection with bytes past a request's end is not reused), so the count is all
            // that needs carrying: 4 bytes where the settings take 80.
            let (stream, _settings) = reused.consume();
            conn = match stream.into_any().downcast::<ClientStream>() {
                Ok(conn) => *conn,
                // Not ours (cannot happen: Pingora hands back the stream it was given).
                Err(_) => return,
            };
            conn.end_request();
            served = served.saturating_add(1);
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

/// Where the header in `buf` ends (just past its empty line), if it is all there. A bare LF
/// ends a line here as it does for httparse, which Pingora's parser is built on, so a header
/// that parser would accept is never waited on.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    memchr::memchr_iter(b'\n', &buf[start..])
        .map(|pos| start + pos)
        // An LF ends the header when the line it ends is empty: LF LF or LF CR LF.
        .find(|&lf| {
            (lf >= 1 && buf[lf - 1] == b'\n')
                || (lf >= 2 && buf[lf - 1] == b'\r' && buf[lf - 2] == b'\n')
        })
        .map(|lf| lf + 1)
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
        if let Some(end) = header_end(buf, searched) {
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

/// Answers a request the connection loop refused before Pingora saw it, then closes.
async fn refuse(tcp: &mut TcpStream, err: &ProxyError) {
    let body = err.body();
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        err.status,
        http::StatusCode::from_u16(err.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    // Bounded: a client that does not read its 408 must not hold the socket either.
    let sent = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        tcp.write_all(&response).await?;
        tcp.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Lingering close, as nginx does: closing with unread bytes from the client (the rest of
    // an oversized header, a body) sends a reset, which can destroy the answer before the
    // client has read it. Read and drop what still comes, within bounds, then close.
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

/// The Pingora session for a connection's request number `served` (from 0), whose first bytes
/// are `first`.
fn new_session<A: HttpServerApp>(
    app: &A,
    conn: ClientStream,
    first: BytesMut,
    served: u32,
) -> ServerSession {
    let mut session = ServerSession::new_http1(Box::new(conn));
    session.set_keepalive(Some(IDLE_TIMEOUT.as_secs()));
    // As Pingora counts: the first request may be followed by `limit` more; zero means the
    // connection closes after this one.
    let limit = app.server_options().and_then(|o| o.keepalive_request_limit);
    session.set_keepalive_reuses_remaining(limit.map(|l| l.saturating_sub(served)));
    session.set_pipelined_prefix(first);
    session
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
    conn: &'a mut ClientStream,
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
        conn: &'a mut ClientStream,
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
        // A request that is already there is served even if shutdown has begun (Pingora's own
        // order; it answers with `Connection: close`).
        if let Poll::Ready(wait) = poll_first_bytes(&mut this.conn.tcp, cx) {
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

/// A client connection as Pingora sees it (its `IO` trait): the socket and the peer address
/// from accept(); the write buffer and Pingora's socket digest (~400 bytes) exist only while a
/// request is served.
#[derive(Debug)]
pub struct ClientStream {
    tcp: TcpStream,
    peer: SocketAddr,
    request: Option<Box<RequestState>>,
}

/// What a connection needs only while it serves a request.
#[derive(Debug, Default)]
struct RequestState {
    pending: Vec<u8>,
    digest: OnceLock<Arc<SocketDigest>>,
}

impl ClientStream {
    pub fn new(tcp: TcpStream, peer: SocketAddr) -> Self {
        ClientStream {
            tcp,
            peer,
            request: None,
        }
    }

    fn begin_request(&mut self) {
        self.request.get_or_insert_with(Box::default);
    }

    /// Frees what only a request needs, unless a write is still gathered (cannot happen after
    /// Pingora's final flush, but a lost write is worse than a kept buffer).
    fn end_request(&mut self) {
        if self.request.as_ref().is_some_and(|r| r.pending.is_empty()) {
            self.request = None;
        }
    }

    fn new_digest(&self) -> Arc<SocketDigest> {
        let digest = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(self.peer)));
        Arc::new(digest)
    }

    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(request) = self.request.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !request.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &request.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            request.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pending = this.request.as_ref().map_or(0, |r| r.pending.len());
        if pending + buf.len() > WRITE_GATHER {
            ready!(this.poll_send_pending(cx))?;
        }
        if buf.len() >= WRITE_GATHER {
            return Pin::new(&mut this.tcp).poll_write(cx, buf);
        }
        let request = this.request.get_or_insert_with(Box::default);
        if request.pending.capacity() == 0 {
            request.pending.reserve_exact(WRITE_GATHER);
        }
        request.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl AsRawFd for ClientStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for ClientStream {}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        // Asked for on every request; nothing here reads it, and an empty Vec costs nothing.
        Vec::new()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(match &self.request {
            Some(request) => request.digest.get_or_init(|| self.new_digest()).clone(),
            None => self.new_digest(),
        })
    }
}

#[async_trait]
impl Peek for ClientStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair: the proxy's side as a [`ClientStream`], and the client's socket.
    async fn pair() -> (ClientStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (ClientStream::new(server, peer), client)
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
            body_timeout: Duration::from_secs(60),
            max_header_bytes,
        }))
    }

    fn test_rules() -> RulesSource {
        rules(Duration::from_secs(60), 65536)
    }

    fn watch() -> (tokio::sync::watch::Sender<bool>, ShutdownWatch) {
        tokio::sync::watch::channel(false)
    }

    /// A Pingora app that answers every request with an empty 200 and hands the connection
    /// back for reuse when Pingora allows it, as `RwProxy` does.
    struct Answer {
        options: pingora_core::apps::HttpServerOptions,
    }

    #[async_trait]
    impl HttpServerApp for Answer {
        async fn process_new_http(
            self: &Arc<Self>,
            mut session: ServerSession,
            _shutdown: &ShutdownWatch,
        ) -> Option<pingora_core::apps::ReusedHttpStream> {
            if !session.read_request().await.ok()? {
                return None;
            }
            let mut response = pingora_http::ResponseHeader::build(200, None).ok()?;
            response.insert_header("Content-Length", "0").ok()?;
            session
                .write_response_header(Box::new(response))
                .await
                .ok()?;
            let reusable = session.finish().await.ok()??;
            let (stream, _) = reusable.into_parts();
            Some(pingora_core::apps::ReusedHttpStream::new(stream, None))
        }

        fn server_options(&self) -> Option<&pingora_core::apps::HttpServerOptions> {
            Some(&self.options)
        }
    }

    /// Sends `requests` GETs one after the other on one connection served by [`serve`]; returns
    /// how many were answered before the proxy closed the connection.
    async fn answered_on_one_connection(limit: Option<u32>, requests: usize) -> usize {
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.keepalive_request_limit = limit;
        let app = Arc::new(Answer { options });
        let (server, mut client) = pair().await;
        let (_tx, rx) = watch();
        let served = tokio::spawn(serve(app, test_rules(), server, rx));
        let mut answered = 0;
        for _ in 0..requests {
            if client
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
    async fn a_connection_serves_requests_until_its_request_limit() {
        assert_eq!(answered_on_one_connection(None, 5).await, 5);
        // A limit of 1 is one reuse, as in Pingora: two requests, then the connection closes.
        assert_eq!(answered_on_one_connection(Some(1), 5).await, 2);
        assert_eq!(answered_on_one_connection(Some(0), 5).await, 1);
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

    #[tokio::test]
    async fn small_writes_leave_together_on_flush_and_large_ones_pass_through() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.write_all(b"hello").await.unwrap();
        // Nothing is sent before the flush.
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut byte)).await;
        assert!(early.is_err(), "bytes left before the flush");
        server.flush().await.unwrap();
        let mut got = vec![0u8; 24];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nhello");

        // A large body goes out in order after what was gathered, whole.
        let big = vec![b'x'; 100_000];
        server.write_all(b"head").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 4 + 100_000];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        server.write_all(&big).await.unwrap();
        server.flush().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|b| *b == b'x'));

        server.end_request();
        assert!(server.request.is_none());
    }

    #[tokio::test]
    async fn the_peer_address_comes_from_accept() {
        let (server, client) = pair().await;
        let digest = server.get_socket_digest().unwrap();
        assert_eq!(
            digest.peer_addr().and_then(|a| a.as_inet()).copied(),
            Some(client.local_addr().unwrap())
        );
    }

    #[test]
    fn the_header_ends_at_its_empty_line_with_crlf_or_bare_lf() {
        assert_eq!(
            header_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            Some(27)
        );
        assert_eq!(header_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Some(24));
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 0), Some(26));
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        // Searching on from where the last read ended still finds an end split across reads.
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for from in 0..whole.len() {
            assert_eq!(header_end(whole, from), Some(whole.len()), "from {from}");
        }
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
        let got = read_header_end(&mut server.tcp, &mut first, &rules).await;
        assert_eq!(got, HeaderRead::Refused(&errors::ERR_REQUEST_TIMEOUT));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        refuse(&mut server.tcp, &errors::ERR_REQUEST_TIMEOUT).await;
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
            read_header_end(&mut server.tcp, &mut first, &rules).await,
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
            read_header_end(&mut server.tcp, &mut first, &rules).await,
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
            read_header_end(&mut server.tcp, &mut first, &rules).await,
            HeaderRead::Closed
        );
    }
}
