//! `topology.election_url`: the live topology from writer-election, and this proxy's side of
//! the planned-switchover drain barrier (docs: proxy/README.md, "Failover").
//!
//! [`ElectionSource`] runs writer-election's own [`TopologyFollower`] (one blocking query open on
//! one of the URLs, next URL and backoff on failure) and swaps each new document in at once.
//! When writer-election cannot be reached the proxy keeps its last topology and stays ready
//! (static stability); it logs once per outage and counts every failed attempt.
//!
//! When a topology announces a switchover in state `draining`, new writes are held (see
//! `hold.rs`) and a task here waits for this proxy's writes in flight to reach zero, then tells
//! the election: `POST {election_url}/v1/switchover/drained {"client": <id>, "switchover": <id>}`,
//! retried until a 2xx or until the switchover is gone from the topology.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use topology_client::backoff::{self, BackoffBuilder, ExponentialBuilder};
use topology_client::client::{FollowEvent, FollowOptions, TopologyFollower};
use topology_client::topology::Topology;

use crate::hold::WriteHold;
use crate::metrics::Metrics;
use crate::topology::{resolve_addresses, TopologySink, TopologySnapshot, TopologySource};

/// How long writer-election may hold one blocking query. Short enough that a hung (not dead)
/// election is noticed within `FOLLOW_WAIT` + the client's 10 s margin.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one drain acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const ACK_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const ACK_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pauses between rounds of drain acknowledgements: the switchover waits on them, so they stay
/// short.
fn ack_policy() -> ExponentialBuilder {
    backoff::doubling(ACK_BACKOFF_INITIAL, ACK_BACKOFF_MAX)
}

/// This process's client id, `<hostname>-<pid>-<8 hex digits>`: sent as `client=` on every
/// topology query and in drain acknowledgements. Fixed for the life of the process.
pub fn client_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "rw-proxy".to_string());
        format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    })
}

/// `http://host:port[/prefix][/v1/topology]` -> `http://host:port[/prefix]/v1/switchover/drained`.
pub fn drained_url(base: &str) -> String {
    let b = base.trim().trim_end_matches('/');
    let b = b.strip_suffix("/v1/topology").unwrap_or(b);
    format!("{b}/v1/switchover/drained")
}

pub struct ElectionSource {
    pub urls: Vec<String>,
    pub client_id: String,
    pub hold: Arc<WriteHold>,
    pub metrics: Arc<Metrics>,
}

/// The acknowledgement task of one switchover; aborted when dropped.
struct DrainTask {
    switchover: u64,
    task: JoinHandle<()>,
}

impl Drop for DrainTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ElectionSource {
    async fn apply(&self, sink: &Arc<dyn TopologySink>, t: Topology) {
        let previous = sink.current();
        let resolved = resolve_addresses(&t).await;
        let (snapshot, warnings) = TopologySnapshot::from_wire(&t, &resolved, &previous);
        for w in warnings {
            tracing::warn!("election topology: {w}");
        }
        let changed = previous.epoch != snapshot.epoch
            || previous.revision != snapshot.revision
            || !previous.is_known();
        let writer = snapshot.writer.as_ref().map(|w| w.name.clone());
        let readers = snapshot.readers.len();
        let switchover = snapshot
            .switchover
            .as_ref()
            .map(|s| format!("{} {} {} -> {}", s.id, s.state, s.from, s.to));
        let (epoch, revision) = (snapshot.epoch, snapshot.revision);
        if sink.publish(snapshot) && changed {
            tracing::info!(
                epoch,
                revision,
                writer = writer.as_deref().unwrap_or("none"),
                readers,
                switchover = switchover.as_deref().unwrap_or("none"),
                "topology from writer-election swapped in"
            );
        }
    }

    /// Starts, keeps or stops the drain acknowledgement after each document.
    fn manage_drain(&self, sink: &Arc<dyn TopologySink>, drain: &mut Option<DrainTask>) {
        let current = sink.current();
        let draining = current
            .switchover
            .as_ref()
            .filter(|s| s.is_draining())
            .map(|s| s.id);
        match (draining, drain.as_ref().map(|d| d.switchover)) {
            (Some(id), Some(running)) if id == running => {}
            (Some(id), _) => {
                tracing::info!(
                    switchover = id,
                    writes_in_flight = self.hold.writes_in_flight(),
                    "switchover: holding new writes, draining the writes in flight to the old writer"
                );
                *drain = Some(DrainTask {
                    switchover: id,
                    task: tokio::spawn(acknowledge_drain(
                        self.urls.clone(),
                        self.client_id.clone(),
                        id,
                        self.hold.clone(),
                        sink.clone(),
                        self.metrics.clone(),
                    )),
                });
            }
            (None, _) => *drain = None,
        }
    }
}

#[async_trait]
impl TopologySource for ElectionSource {
    fn describe(&self) -> String {
        format!(
            "election {} (client id {})",
            self.urls.join(", "),
            self.client_id
        )
    }

    async fn run(&self, sink: Arc<dyn TopologySink>) {
        let opts = FollowOptions {
            wait: FOLLOW_WAIT,
            client_id: Some(self.client_id.clone()),
            ..FollowOptions::default()
        };
        let follower = match TopologyFollower::new(self.urls.clone(), opts) {
            Ok(f) => f,
            Err(e) => {
                // The config parser checks the URLs; this is a bug, not an outage.
                tracing::error!(error = %e, "topology.election_url: cannot follow writer-election");
                return std::future::pending().await;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let follow = follower.run(move |event| {
            let _ = tx.send(event);
        });
        let consume = async {
            let mut outage: Option<Instant> = None;
            let mut drain: Option<DrainTask> = None;
            while let Some(event) = rx.recv().await {
                match event {
                    FollowEvent::Updated(t) => {
                        sink.contact(true);
                        if let Some(since) = outage.take() {
                            tracing::info!(
                                after = ?since.elapsed(),
                                "writer-election is reachable again"
                            );
                        }
                        self.apply(&sink, t).await;
                        self.manage_drain(&sink, &mut drain);
                    }
                    FollowEvent::Unreachable { url, error } => {
                        sink.contact(false);
                        if outage.is_none() {
                            outage = Some(Instant::now());
                            let known = sink.current();
                            if known.is_known() {
                                tracing::warn!(
                                    %url, %error, epoch = known.epoch,
                                    writer = known.writer.as_ref().map(|w| &*w.name).unwrap_or("none"),
                                    "writer-election is unreachable: serving with the last topology \
                                     until it answers again (logged once per outage)"
                                );
                            } else {
                                tracing::warn!(
                                    %url, %error,
                                    "writer-election is unreachable and no topology is known yet: \
                                     not ready (logged once per outage)"
                                );
                            }
                        } else {
                            tracing::debug!(%url, %error, "writer-election still unreachable");
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = follow => {}
            _ = consume => {}
        }
    }
}

/// Waits for this proxy's writes in flight to finish, then tells the election, retrying until
/// it says yes or the switchover is no longer in the topology.
async fn acknowledge_drain(
    urls: Vec<String>,
    client_id: String,
    switchover: u64,
    hold: Arc<WriteHold>,
    sink: Arc<dyn TopologySink>,
    metrics: Arc<Metrics>,
) {
    let started = Instant::now();
    hold.writes_idle().await;
    let drained_after = started.elapsed();
    let body = Bytes::from(
        serde_json::json!({ "client": client_id, "switchover": switchover }).to_string(),
    );
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(ACK_TIMEOUT));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut delays = ack_policy().build();
    let mut attempts = 0u32;
    loop {
        for base in &urls {
            let url = drained_url(base);
            attempts += 1;
            match post_json(&client, &url, body.clone()).await {
                Ok((status, _)) if (200..300).contains(&status) => {
                    metrics.switchover_drained.inc();
                    tracing::info!(
                        switchover, %url, ?drained_after, attempts,
                        "switchover: drained; acknowledged to writer-election"
                    );
                    return;
                }
                Ok((status, text)) => {
                    tracing::debug!(switchover, %url, status, body = %text, "drain acknowledgement refused");
                }
                Err(e) => {
                    tracing::debug!(switchover, %url, error = %e, "drain acknowledgement failed");
                }
            }
        }
        if attempts == urls.len() as u32 {
            tracing::warn!(
                switchover,
                "switchover: cannot acknowledge the drain yet; retrying until writer-election \
                 accepts it or the switchover ends"
            );
        }
        tokio::time::sleep(delays.next().unwrap_or(ACK_BACKOFF_MAX)).await;
        let still = sink
            .current()
            .switchover
            .as_ref()
            .is_some_and(|s| s.id == switchover);
        if !still {
            return;
        }
    }
}

async fn post_json(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "rw-proxy")
        .body(Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    let call = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // Small JSON answers; read a bounded amount for the log.
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((
            status,
            String::from_utf8_lossy(&body).chars().take(300).collect(),
        ))
    };
    match tokio::time::timeout(ACK_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err("timed out".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_shape() {
        let id = client_id();
        assert_eq!(id, client_id(), "fixed for the process");
        let mut parts = id.rsplitn(3, '-');
        let hex = parts.next().unwrap();
        let pid = parts.next().unwrap();
        let host = parts.next().unwrap();
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(pid, std::process::id().to_string());
        assert!(!host.is_empty());
    }

    #[test]
    fn drain_acknowledgements_retry_after_50ms_doubling_to_1s() {
        // backon computes in f32: whole milliseconds are what matters.
        let d: Vec<u64> = ack_policy()
            .build()
            .take(8)
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
            .collect();
        assert_eq!(d, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn drained_urls() {
        assert_eq!(
            drained_url("http://we:8080"),
            "http://we:8080/v1/switchover/drained"
        );
        assert_eq!(
            drained_url("http://we:8080/"),
            "http://we:8080/v1/switchover/drained"
        );
        assert_eq!(
            drained_url("http://we:8080/x/v1/topology"),
            "http://we:8080/x/v1/switchover/drained"
        );
    }
}
