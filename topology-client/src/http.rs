//! The one outbound HTTP client shape used for probes, promotion calls and the topology client
//! (hyper 1 + hyper-util's pooled legacy client, plain http).

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Bodies we read are small (health, offsets, topology documents).
const MAX_BODY: usize = 4 << 20;

pub fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_nodelay(true);
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build(conn)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Nothing listens: the node is gone, not slow.
    Refused,
    Timeout,
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused => f.write_str("connection refused"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Other(s) => f.write_str(s),
        }
    }
}

/// Walks the source chain: hyper-util wraps the io::Error of the connect.
pub fn is_refused(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// One request with an overall timeout (connect + headers + body).
pub async fn call(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), CallError> {
    call_with(client, method, url, &[], body, timeout).await
}

/// [`call`] with extra request headers.
pub async fn call_with(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), CallError> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::USER_AGENT, "writer-election");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(body))
        .map_err(|e| CallError::Other(format!("bad request {url}: {e}")))?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            if is_refused(&e) {
                CallError::Refused
            } else {
                CallError::Other(describe(&e))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| CallError::Other(format!("reading body: {e}")))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout),
    }
}

pub fn node_url(address: &str, path: &str) -> String {
    format!("http://{address}{path}")
}
