//! loadtest's control traffic (health polls, topology, read-back, fault calls, tests) goes
//! through the workspace's one outbound client, [`topology_client::http`], as rw-proxy's and
//! writer-election's does; this module only adds what loadtest's callers want on top: one
//! timeout per client, `anyhow` errors that name the request, and a [`Reply`] with text and JSON
//! helpers. The load generator does not use it: it drives its own keep-alive connections.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{HeaderMap, Method};
use topology_client::http::{build_client, call_with, CallError};

#[derive(Clone)]
pub struct HttpClient {
    inner: topology_client::http::HttpClient,
    timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl HttpClient {
    /// `timeout` bounds each whole request (connect, head and body).
    pub fn new(timeout: Duration) -> Self {
        HttpClient {
            inner: build_client(timeout),
            timeout,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        // A node's or the election's logs name loadtest as the caller, not writer-election
        // (the shared client's default).
        let mut named: Vec<(&str, &str)> = headers.to_vec();
        if !named
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        {
            named.push(("user-agent", "loadtest"));
        }
        let (status, headers, body) = call_with(
            &self.inner,
            method.clone(),
            url,
            &named,
            body.into(),
            self.timeout,
        )
        .await
        .map_err(|e| match e {
            CallError::Timeout => anyhow!("{method} {url}: no answer within {:?}", self.timeout),
            e => anyhow!("{method} {url}: {e}"),
        })?;
        Ok(Reply {
            status: status.as_u16(),
            headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.send(Method::POST, url, &[], body).await
    }

    pub async fn put(&self, url: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
        self.send(Method::PUT, url, &[], body).await
    }
}
