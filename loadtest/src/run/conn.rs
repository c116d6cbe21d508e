//! One keep-alive HTTP/1.1 connection per worker (hyper 1 client connection API): no pool, no
//! hidden retries, so every request the generator counts went out exactly once.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Why a request did not get a response the generator counts as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ErrorKind {
    /// TCP connect refused or failed.
    Connect,
    /// TCP connect did not finish within the request timeout.
    ConnectTimeout,
    /// No complete response within the request timeout (the outcome of a write is unknown).
    Timeout,
    /// The connection broke while the request was out (reset, closed early).
    Io,
    /// A response with a status the generator counts as failed.
    Status(u16),
}

impl ErrorKind {
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::ConnectTimeout => "connect_timeout".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Io => "io".into(),
            ErrorKind::Status(s) => format!("http_{s}"),
        }
    }

    /// True when the request never reached the server, so a write certainly did not happen.
    pub fn not_sent(&self) -> bool {
        matches!(self, ErrorKind::Connect | ErrorKind::ConnectTimeout)
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ErrorKind> {
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Err(_) => return Err(ErrorKind::ConnectTimeout),
            Ok(Err(_)) => return Err(ErrorKind::Connect),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes or the sender is dropped; errors show up on send.
            let _ = connection.await;
        });
        Ok(Conn { sender })
    }

    /// False once the server has closed the connection (keep-alive timeout, `Connection:
    /// close`): the caller reconnects before sending, which is not an error.
    pub fn usable(&self) -> bool {
        !self.sender.is_closed()
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response, ErrorKind> {
        self.sender.ready().await.map_err(|_| ErrorKind::Io)?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|_| ErrorKind::Io)?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|_| ErrorKind::Io)?.to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
