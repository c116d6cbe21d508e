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

/// [`call`] with extra request headers (a `User-Agent` among them replaces the default one).
pub async fn call_with(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), CallError> {
    let mut b = http::Request::builder().method(method).uri(url);
    // The callers are writer-election's probes, promotion calls and forwarding; another caller
    // (loadtest) names itself with a `User-Agent` of its own.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        b = b.header(http::header::USER_AGENT, "writer-election");
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// The head of the one request `send` makes to a server that answers 204.
    async fn head_sent(headers: &[(&str, &str)]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before the head ended");
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf).to_lowercase()
        });
        let client = build_client(Duration::from_secs(2));
        let (status, _, _) = call_with(
            &client,
            http::Method::GET,
            &url,
            headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(status, http::StatusCode::NO_CONTENT);
        server.await.unwrap()
    }

    #[tokio::test]
    async fn the_default_user_agent_gives_way_to_the_callers() {
        let head = head_sent(&[]).await;
        assert!(head.contains("user-agent: writer-election\r\n"), "{head}");
        let head = head_sent(&[("User-Agent", "loadtest")]).await;
        assert!(head.contains("user-agent: loadtest\r\n"), "{head}");
        assert_eq!(head.matches("user-agent:").count(), 1, "{head}");
    }
}
