//! An HTTP/1.1 stand-in for a node on 127.0.0.1: serves requests with a handler of the test's,
//! can be killed like `kill -9` (the port refuses, open connections are reset) and restarted on
//! the same address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// An error from a handler: hyper closes the connection without an answer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// What a handler answers.
pub type Answer = Result<Response<Full<Bytes>>, BoxError>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Answer> + Send + 'static>>
        + Send
        + Sync
        + 'static,
>;

/// How long a restart may wait for the old address to be free again.
const REBIND: Duration = Duration::from_secs(30);

pub struct StandIn {
    pub addr: SocketAddr,
    handler: Handler,
    accept: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Serves every request with `handler`, on a port from [`crate::ports::free_port`] (so that
    /// no outgoing connection holds it when a restart binds it again).
    pub async fn start<H, F, E>(handler: H) -> StandIn
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let handler: Handler = Arc::new(move |req| {
            let f = handler(req);
            Box::pin(async move { f.await.map_err(Into::into) })
        });
        let listener = loop {
            let addr = crate::ports::free_addr().expect("a free port on 127.0.0.1");
            // Another process may bind it first; then take the next one.
            if let Ok(l) = TcpListener::bind(addr).await {
                break l;
            }
        };
        let addr = listener.local_addr().expect("the stand-in's address");
        let accept = Some(tokio::spawn(serve(listener, handler.clone())));
        StandIn {
            addr,
            handler,
            accept,
        }
    }

    /// Like `kill -9`: the port refuses from now on and open connections are reset.
    pub async fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
    }

    /// Back on the same address (killed first if it still runs).
    pub async fn restart(&mut self) {
        self.kill().await;
        let deadline = Instant::now() + REBIND;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.accept = Some(tokio::spawn(serve(listener, self.handler.clone())));
    }

    /// Not killed.
    pub fn is_running(&self) -> bool {
        self.accept.is_some()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
    }
}

/// A handler's error as hyper's service error: a type of its own, not a boxed trait object,
/// which the compiler cannot prove `'static` through the spawned connection task.
#[derive(Debug)]
struct Dropped(BoxError);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Dropped {}

/// Accepts until aborted. Connection tasks live in the set: aborting this task drops it and with
/// it every open connection, so a killed stand-in refuses and resets like a dead process.
async fn serve(listener: TcpListener, handler: Handler) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let h = handler.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let answer = h(req);
                        async move { answer.await.map_err(Dropped) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn serves_refuses_when_killed_and_comes_back_on_the_same_address() {
        let mut s = StandIn::start(hello).await;
        assert!(crate::ports::PORTS.contains(&s.addr.port()), "{}", s.addr);
        assert!(get(s.addr).await.unwrap().ends_with("hello"));

        s.kill().await;
        assert!(!s.is_running());
        let e = TcpStream::connect(s.addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

        let addr = s.addr;
        s.restart().await;
        assert_eq!(s.addr, addr);
        assert!(get(s.addr).await.unwrap().ends_with("hello"));
    }

    #[tokio::test]
    async fn a_kill_resets_open_connections() {
        let mut s = StandIn::start(hello).await;
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "answered while alive");
        s.kill().await;
        // The kept-alive connection is gone: end of stream or a reset, never another answer.
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let r = conn.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }

    #[tokio::test]
    async fn a_handler_error_drops_the_connection_without_an_answer() {
        let s = StandIn::start(|_req| async { Err::<Response<Full<Bytes>>, _>("no") }).await;
        assert_eq!(get(s.addr).await.unwrap_or_default(), "");
    }
}
