//! Follows `/v1/topology` with blocking queries: what rw-proxy (and the loadtest) use to learn of
//! a new writer at once instead of at the next poll.
//!
//! [`TopologyFollower::run`] keeps one request `GET /v1/topology?after=<rev>&wait=<wait>` open on
//! one of the configured URLs (HA replicas, or one Service). The server answers when the revision
//! moves past `after`, or after `wait` with the same document. A failed attempt moves on to the
//! next URL at once; when every URL failed in a row, it backs off ([`backoff::doubling_jittered`]).
//! Revisions are per replica, so after moving to another URL the first request asks without
//! `after` and gets the current document immediately.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use bytes::Bytes;

use crate::backoff;
use crate::http::{build_client, call, CallError, HttpClient};
use crate::topology::Topology;

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// How long the server may hold a blocking query (30s).
    pub wait: Duration,
    /// First pause after every URL failed (100ms); doubles up to `backoff_max` (5s), each pause
    /// drawn from the upper half of that ([`backoff::doubling_jittered`]).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Sent as `client=<id>` so the service can tell its followers apart.
    pub client_id: Option<String>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            wait: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            client_id: None,
        }
    }
}

// One event per document change, handed straight to the callback: boxing the document would
// cost an allocation per change to save stack space nobody keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// A document that differs from the last one delivered, or the first one after a failed
    /// attempt (even if unchanged), so a follower learns that contact is back.
    Updated(Topology),
    /// One attempt failed; the follower moves on to the next URL.
    Unreachable { url: String, error: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid election URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{url}: connection refused")]
    Refused { url: String },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: {error}")]
    Http { url: String, error: String },
    #[error("{url}: answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: not a topology document: {error}")]
    Decode { url: String, error: String },
}

/// Margin on top of `wait` before the client gives up on a blocking query.
const WAIT_MARGIN: Duration = Duration::from_secs(10);
/// Timeout of a non-blocking fetch.
const PLAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `http://host:port[/prefix]` -> `http://host:port[/prefix]/v1/topology` (a URL that already ends
/// in `/v1/topology` is kept).
fn topology_url(base: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = base.trim();
    let uri: http::Uri = trimmed.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(bad(&format!("scheme {other} is not supported (http only)"))),
        None => return Err(bad("needs http://host:port")),
    }
    if uri.authority().is_none() {
        return Err(bad("needs a host"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    let no_slash = trimmed.trim_end_matches('/');
    if no_slash.ends_with("/v1/topology") {
        Ok(no_slash.to_string())
    } else {
        Ok(format!("{no_slash}/v1/topology"))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_url(
    url: &str,
    after: Option<u64>,
    wait: Option<Duration>,
    client_id: Option<&str>,
) -> String {
    let mut params = Vec::new();
    if let Some(a) = after {
        params.push(format!("after={a}"));
    }
    if let Some(w) = wait {
        params.push(format!("wait={}ms", w.as_millis()));
    }
    if let Some(id) = client_id {
        params.push(format!("client={}", percent_encode(id)));
    }
    if params.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", params.join("&"))
    }
}

async fn fetch_with(
    client: &HttpClient,
    topology_url: &str,
    after: Option<u64>,
    wait: Option<Duration>,
    client_id: Option<&str>,
) -> Result<Topology, ClientError> {
    let url = query_url(topology_url, after, wait, client_id);
    let timeout = match (after, wait) {
        (Some(_), Some(w)) => w + WAIT_MARGIN,
        (Some(_), None) => Duration::from_secs(30) + WAIT_MARGIN,
        _ => PLAIN_TIMEOUT,
    };
    let (status, _, body) = call(client, http::Method::GET, &url, Bytes::new(), timeout)
        .await
        .map_err(|e| match e {
            CallError::Refused => ClientError::Refused {
                url: topology_url.to_string(),
            },
            CallError::Timeout => ClientError::Timeout {
                url: topology_url.to_string(),
            },
            CallError::Other(error) => ClientError::Http {
                url: topology_url.to_string(),
                error,
            },
        })?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(ClientError::Status {
            url: topology_url.to_string(),
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        url: topology_url.to_string(),
        error: e.to_string(),
    })
}

/// One request: the current document (`after = None`), or a blocking query.
/// `url` is the service's base URL (`http://writer-election:8080`).
pub async fn fetch_topology(
    url: &str,
    after: Option<u64>,
    wait: Option<Duration>,
) -> Result<Topology, ClientError> {
    let t = topology_url(url)?;
    let client = build_client(Duration::from_secs(5));
    fetch_with(&client, &t, after, wait, None).await
}

pub struct TopologyFollower {
    /// (as given, /v1/topology URL)
    urls: Vec<(String, String)>,
    opts: FollowOptions,
    client: HttpClient,
}

impl TopologyFollower {
    pub fn new(urls: Vec<String>, opts: FollowOptions) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: String::new(),
                reason: "no election URL given".into(),
            });
        }
        let urls = urls
            .into_iter()
            .map(|u| topology_url(&u).map(|t| (u, t)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TopologyFollower {
            urls,
            opts,
            client: build_client(Duration::from_secs(2)),
        })
    }

    /// Runs until dropped. See the module documentation.
    pub async fn run(self, mut on_event: impl FnMut(FollowEvent) + Send) {
        let n = self.urls.len();
        let mut idx = 0usize;
        let mut after: Option<u64> = None;
        let mut last: Option<Topology> = None;
        let mut failures_in_row = 0usize;
        let policy = retry_policy(&self.opts);
        let mut delays = policy.build();
        loop {
            let (given, url) = &self.urls[idx];
            let started = Instant::now();
            let wait = after.map(|_| self.opts.wait);
            match fetch_with(
                &self.client,
                url,
                after,
                wait,
                self.opts.client_id.as_deref(),
            )
            .await
            {
                Ok(t) => {
                    failures_in_row = 0;
                    delays = policy.build();
                    let changed = last.as_ref().is_none_or(|l| !l.same_content(&t));
                    let early = after.is_some() && started.elapsed() < self.opts.wait / 2;
                    after = Some(t.revision);
                    if changed {
                        last = Some(t.clone());
                        on_event(FollowEvent::Updated(t));
                    } else if early {
                        // The same content long before `wait`: replicas behind one Service answer
                        // each other's revisions at once (each numbers its own), or a server
                        // ignores blocking queries. Do not spin on it.
                        tokio::time::sleep(self.opts.backoff_initial).await;
                    }
                }
                Err(e) => {
                    on_event(FollowEvent::Unreachable {
                        url: given.clone(),
                        error: e.to_string(),
                    });
                    failures_in_row += 1;
                    idx = (idx + 1) % n;
                    after = None;
                    last = None;
                    if failures_in_row.is_multiple_of(n) {
                        let pause = delays.next().unwrap_or(self.opts.backoff_max);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
}

/// Pauses after every URL failed in a row: many followers lose the election together (it
/// restarts), so they are jittered apart.
fn retry_policy(opts: &FollowOptions) -> backon::ExponentialBuilder {
    backoff::doubling_jittered(opts.backoff_initial, opts.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            topology_url("http://a:8080").unwrap(),
            "http://a:8080/v1/topology"
        );
        assert_eq!(
            topology_url("http://a:8080/").unwrap(),
            "http://a:8080/v1/topology"
        );
        assert_eq!(
            topology_url("http://a:8080/v1/topology").unwrap(),
            "http://a:8080/v1/topology"
        );
        assert_eq!(
            topology_url("http://a/x/").unwrap(),
            "http://a/x/v1/topology"
        );
        assert!(topology_url("https://a:8080").is_err());
        assert!(topology_url("a:8080").is_err());
        assert!(topology_url("http://a:8080/?x=1").is_err());
        assert!(TopologyFollower::new(vec![], FollowOptions::default()).is_err());
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            query_url("http://a/v1/topology", None, None, None),
            "http://a/v1/topology"
        );
        assert_eq!(
            query_url(
                "http://a/v1/topology",
                Some(42),
                Some(Duration::from_secs(30)),
                Some("proxy a/1")
            ),
            "http://a/v1/topology?after=42&wait=30000ms&client=proxy%20a%2F1"
        );
    }

    #[test]
    fn a_new_replication_measurement_is_a_change() {
        use crate::topology::{NodeProgress, Replication};
        let a = Topology::empty();
        let mut b = a.clone();
        b.revision += 1;
        b.updated_at = "later".into();
        assert!(a.same_content(&b), "revision and time alone are not news");
        b.replication = Some(Replication {
            epoch: 0,
            writer_offset: 5,
            measured_at_ms: 1,
            nodes: vec![NodeProgress {
                name: "r".into(),
                offset: 4,
                lag_offsets: 1,
                lag_ms: 10,
                lag_at_least: false,
            }],
        });
        assert!(!a.same_content(&b), "proxies route by the lag in it");
    }

    #[test]
    fn the_pause_after_all_urls_failed_doubles_from_initial_to_max_with_jitter() {
        let opts = FollowOptions::default();
        for _ in 0..100 {
            // backon computes in f32: whole milliseconds are what matters.
            let d: Vec<u64> = retry_policy(&opts)
                .build()
                .take(10)
                .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
                .collect();
            assert!((50..=100).contains(&d[0]), "first {}ms", d[0]);
            assert!((100..=200).contains(&d[1]), "second {}ms", d[1]);
            for late in &d[6..] {
                assert!(
                    (2500..=5000).contains(late),
                    "capped at backoff_max: {late}ms"
                );
            }
        }
    }

    #[tokio::test]
    async fn refused_is_reported() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        match fetch_topology(&url, None, None).await {
            Err(ClientError::Refused { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
