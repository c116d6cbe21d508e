//! The client side: accepting connections, and the HTTP/1 connection loop around Pingora's
//! request handling.
//!
//! Pingora's own listening service keeps, for every client connection, a task sized for a TLS
//! handshake, a stream with a permanent 1.5 KiB write buffer, and between two requests the
//! whole per-request proxy future with its 4 KiB header buffer: ~25 KiB per idle keep-alive
//! connection, against nginx's ~0.5 KiB. Here an idle connection is a small task holding a
//! socket. Pingora's request handling (`HttpServerApp::process_new_http`, the same entry point
//! its own service uses) starts once the first bytes of a request have arrived, and gets them as
//! the session's pre-read prefix, so no read is added.
//!
//! Idle connections are closed after [`IDLE_TIMEOUT`] without a request, and at once when
//! shutdown starts (as nginx does): the client reconnects to a proxy that is not leaving.

use std::future::poll_fn;
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
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Same as Pingora's listeners: bursts of new connections wait in the kernel, not refused.
const LISTEN_BACKLOG: i32 = 65535;

/// Binds the client listener before the server starts, so a taken address is a clear error
/// at startup (Pingora would retry for 30 s, then panic inside its service).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The client listener: a Pingora background service that accepts connections and serves each
/// with [`serve`].
pub struct Downstream<A> {
    app: Arc<A>,
    listener: Mutex<Option<std::net::TcpListener>>,
    idle_timeout: Duration,
}

impl<A> Downstream<A> {
    pub fn new(app: A, listener: std::net::TcpListener, idle_timeout: Duration) -> Self {
        Downstream {
            app: Arc::new(app),
            listener: Mutex::new(Some(listener)),
            idle_timeout,
        }
    }
}

#[async_trait]
impl<A> BackgroundService for Downstream<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let std_listener = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(std_listener) = std_listener else {
            return;
        };
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the client listener; exiting");
                std::process::exit(1);
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Responses leave as soon as they are flushed.
                        let _ = tcp.set_nodelay(true);
                        let conn = ClientStream::new(tcp, peer);
                        // Pingora's handle: with work stealing off, it spreads connections over
                        // the service's threads instead of keeping them on the accepting one.
                        pingora_runtime::current_handle().spawn(serve(
                            self.app.clone(),
                            conn,
                            shutdown.clone(),
                            self.idle_timeout,
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
pub async fn serve<A>(
    app: Arc<A>,
    mut conn: ClientStream,
    mut shutdown: ShutdownWatch,
    idle_timeout: Duration,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let request_limit = app.server_options().and_then(|o| o.keepalive_request_limit);
    let mut carried: Option<HttpPersistentSettings> = None;
    loop {
        let first = match wait_for_request(&mut conn, idle_timeout, &mut shutdown).await {
            Wait::Request(first) => first,
            Wait::Closed | Wait::IdleTimeout | Wait::ShuttingDown => return,
        };
        let session = new_session(conn, first, carried.take(), idle_timeout, request_limit);
        let Some(reused) = app.process_new_http(session, &shutdown).await else {
            return;
        };
        let (stream, settings) = reused.consume();
        carried = settings;
        conn = match stream.into_any().downcast::<ClientStream>() {
            Ok(conn) => *conn,
            // Not ours (cannot happen: Pingora hands back the stream it was given).
            Err(_) => return,
        };
        conn.release_request_state();
    }
}

/// The Pingora session for a request whose first bytes are `first`. A plain function, not
/// part of [`serve`]'s state: the session moves straight into Pingora's (boxed) request
/// future, and the task of an idle connection stays small.
fn new_session(
    conn: ClientStream,
    first: BytesMut,
    carried: Option<HttpPersistentSettings>,
    idle_timeout: Duration,
    request_limit: Option<u32>,
) -> ServerSession {
    let mut session = ServerSession::new_http1(Box::new(conn));
    match carried {
        // Keep-alive settings and the reuse count of the previous request. They never carry
        // pre-read bytes: pipelining is off (Pingora's default), so a connection with bytes
        // past a request's end is not reused.
        Some(settings) => settings.apply_to_session(&mut session),
        None => {
            session.set_keepalive(Some(idle_timeout.as_secs()));
            session.set_keepalive_reuses_remaining(request_limit);
        }
    }
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
///
/// The read buffer lives on the stack of each poll and is copied out only when bytes came, so
/// a waiting connection holds no buffer.
async fn wait_for_request(
    conn: &mut ClientStream,
    idle_timeout: Duration,
    shutdown: &mut ShutdownWatch,
) -> Wait {
    let read = poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut conn.tcp).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Wait::Closed),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Wait::Closed),
            Poll::Ready(Ok(())) => {
                let mut first = BytesMut::with_capacity(FIRST_READ);
                first.extend_from_slice(buf.filled());
                Poll::Ready(Wait::Request(first))
            }
        }
    });
    tokio::select! {
        // A request that is already there is served even if shutdown has begun (Pingora's own
        // order; it answers with `Connection: close`).
        biased;
        wait = read => wait,
        _ = shutdown.wait_for(|down| *down) => Wait::ShuttingDown,
        _ = tokio::time::sleep(idle_timeout) => Wait::IdleTimeout,
    }
}

/// A client connection as Pingora sees it (its `IO` trait): the socket and the peer address
/// from accept(); the write buffer and Pingora's socket digest (~400 bytes) exist only while a
/// request is served.
#[derive(Debug)]
pub struct ClientStream {
    tcp: TcpStream,
    peer: SocketAddr,
    pending: Vec<u8>,
    digest: OnceLock<Arc<SocketDigest>>,
}

impl ClientStream {
    pub fn new(tcp: TcpStream, peer: SocketAddr) -> Self {
        ClientStream {
            tcp,
            peer,
            pending: Vec::new(),
            digest: OnceLock::new(),
        }
    }

    /// Frees what only a request needs (the write buffer is empty after a flush).
    fn release_request_state(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        self.digest = OnceLock::new();
    }

    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
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
        if this.pending.len() + buf.len() > WRITE_GATHER {
            ready!(this.poll_send_pending(cx))?;
        }
        if buf.len() >= WRITE_GATHER {
            return Pin::new(&mut this.tcp).poll_write(cx, buf);
        }
        if this.pending.capacity() == 0 {
            this.pending.reserve_exact(WRITE_GATHER);
        }
        this.pending.extend_from_slice(buf);
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
        let digest = self.digest.get_or_init(|| {
            let digest = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
            let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(self.peer)));
            Arc::new(digest)
        });
        Some(digest.clone())
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

    fn watch() -> (tokio::sync::watch::Sender<bool>, ShutdownWatch) {
        tokio::sync::watch::channel(false)
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

        server.release_request_state();
        assert_eq!(server.pending.capacity(), 0);
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
}
