//! Readiness probes of the storage nodes, with Kubernetes probe semantics.
//!
//! One pooled HTTP client serves every probe; each node has one small task that probes it every
//! `interval` with `timeout`. A node turns ready after `success_threshold` consecutive successes
//! and unready after `failure_threshold` consecutive failures, except that a refused connection
//! is unready at once: nothing listens, the process is gone, there is nothing to wait for.
//!
//! The writer gets one extra: a watchdog holds an idle TCP connection to it. When the writer's
//! process dies the kernel closes that connection, and the writer is probed at that very moment
//! instead of at the next tick, so a killed writer is out in milliseconds, not up to `interval`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::config::ProbeConfig;
use crate::decision::Health;
use crate::discovery::Membership;
use crate::metrics::Metrics;
use topology_client::http::{call, node_url, CallError, HttpClient};

/// Delay of the second probe that confirms a refused connection.
pub const REFUSED_CONFIRM: Duration = Duration::from_millis(50);

/// The pure part: consecutive results -> verdict.
#[derive(Debug, Clone)]
pub struct ProbeState {
    health: Health,
    successes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Connection refused: fails the node at once.
    Refused,
}

impl ProbeState {
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Self {
        ProbeState {
            health: Health::Unknown,
            successes: 0,
            failures: 0,
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one result; returns the new verdict when it changed.
    pub fn record(&mut self, outcome: Outcome) -> Option<Health> {
        let before = self.health;
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.success_threshold {
                    self.health = Health::Ready;
                }
            }
            Outcome::Failure | Outcome::Refused => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if outcome == Outcome::Refused || self.failures >= self.failure_threshold {
                    self.health = Health::Unready;
                }
            }
        }
        (self.health != before).then_some(self.health)
    }
}

/// What a node is probed as; a change of address or UID is a new node with a fresh verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub name: String,
    pub address: String,
    pub uid: Option<String>,
}

/// The verdicts, read by the engine; `changed` wakes it.
#[derive(Default)]
pub struct HealthTable {
    inner: Mutex<HashMap<String, (NodeKey, Health)>>,
    /// The last probe of each node, for `/v1/status` (the verdict alone hides a node that
    /// flaps under its thresholds).
    last: Mutex<HashMap<String, (Instant, bool, String)>>,
    pub changed: Notify,
}

impl HealthTable {
    pub fn get(&self, key: &NodeKey) -> Health {
        self.inner
            .lock()
            .ok()
            .and_then(|m| m.get(&key.name).filter(|(k, _)| k == key).map(|(_, h)| *h))
            .unwrap_or(Health::Unknown)
    }

    fn set(&self, key: &NodeKey, health: Health) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(key.name.clone(), (key.clone(), health));
        }
        self.changed.notify_one();
    }

    fn remove(&self, key: &NodeKey) {
        if let Ok(mut m) = self.inner.lock() {
            if m.get(&key.name).is_some_and(|(k, _)| k == key) {
                m.remove(&key.name);
                if let Ok(mut l) = self.last.lock() {
                    l.remove(&key.name);
                }
            }
        }
    }

    fn note(&self, key: &NodeKey, ok: bool, detail: String) {
        if let Ok(mut l) = self.last.lock() {
            l.insert(key.name.clone(), (Instant::now(), ok, detail));
        }
    }

    /// The last probe of every probed node, by name.
    pub fn last_probes(&self) -> Vec<crate::topology::ProbeReport> {
        let Ok(l) = self.last.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = l
            .iter()
            .map(|(name, (at, ok, detail))| crate::topology::ProbeReport {
                node: name.clone(),
                ok: *ok,
                result: detail.clone(),
                age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .collect();
        out.sort_by(|a, b| crate::decision::natural_cmp(&a.node, &b.node));
        out
    }
}

struct ProbeTask {
    handle: JoinHandle<()>,
    kick: Arc<Notify>,
}

struct Watchdog {
    key: NodeKey,
    handle: JoinHandle<()>,
}

pub struct Prober {
    cfg: ProbeConfig,
    client: HttpClient,
    table: Arc<HealthTable>,
    metrics: Arc<Metrics>,
    tasks: HashMap<NodeKey, ProbeTask>,
    watchdog: Option<Watchdog>,
}

impl Prober {
    pub fn new(
        cfg: ProbeConfig,
        client: HttpClient,
        table: Arc<HealthTable>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Prober {
            cfg,
            client,
            table,
            metrics,
            tasks: HashMap::new(),
            watchdog: None,
        }
    }

    pub fn table(&self) -> &Arc<HealthTable> {
        &self.table
    }

    /// Probes exactly the running nodes of `m` (starting and stopping tasks as needed).
    pub fn sync(&mut self, m: &Membership) {
        let wanted: std::collections::HashSet<NodeKey> = m
            .nodes
            .iter()
            .filter(|n| n.running)
            .map(|n| NodeKey {
                name: n.name.clone(),
                address: n.address.clone(),
                uid: n.uid.clone(),
            })
            .collect();
        let gone: Vec<NodeKey> = self
            .tasks
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(t) = self.tasks.remove(&k) {
                t.handle.abort();
            }
            self.table.remove(&k);
            debug!(node = %k.name, "stopped probing");
        }
        for k in wanted {
            if self.tasks.contains_key(&k) {
                continue;
            }
            let kick = Arc::new(Notify::new());
            let handle = tokio::spawn(probe_loop(
                k.clone(),
                self.cfg.clone(),
                self.client.clone(),
                self.table.clone(),
                self.metrics.clone(),
                kick.clone(),
            ));
            self.tasks.insert(k, ProbeTask { handle, kick });
        }
        if let Some(w) = &self.watchdog {
            if !self.tasks.contains_key(&w.key) {
                self.watch(None);
            }
        }
    }

    /// Probe this node now (e.g. the watchdog saw its connection close).
    pub fn kick(&self, key: &NodeKey) {
        if let Some(t) = self.tasks.get(key) {
            t.kick.notify_one();
        }
    }

    /// Keeps a watchdog connection to `node` (the writer), or none.
    pub fn watch(&mut self, node: Option<&NodeKey>) {
        if self.watchdog.as_ref().map(|w| &w.key) == node {
            return;
        }
        if let Some(w) = self.watchdog.take() {
            w.handle.abort();
        }
        let Some(key) = node else { return };
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        let handle = tokio::spawn(watchdog_loop(
            key.address.clone(),
            task.kick.clone(),
            self.cfg.interval,
            self.cfg.timeout,
        ));
        self.watchdog = Some(Watchdog {
            key: key.clone(),
            handle,
        });
    }

    pub fn stop_all(&mut self) {
        self.watch(None);
        for (k, t) in self.tasks.drain() {
            t.handle.abort();
            self.table.remove(&k);
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub async fn probe_once(
    client: &HttpClient,
    address: &str,
    cfg: &ProbeConfig,
) -> (Outcome, String) {
    let url = node_url(address, &cfg.path);
    match call(client, http::Method::GET, &url, Bytes::new(), cfg.timeout).await {
        // Kubernetes counts 200..400 as success.
        Ok((status, _, _)) if status.as_u16() >= 200 && status.as_u16() < 400 => {
            (Outcome::Success, status.to_string())
        }
        Ok((status, _, _)) => (Outcome::Failure, format!("status {status}")),
        Err(CallError::Refused) => (Outcome::Refused, "connection refused".into()),
        Err(e) => (Outcome::Failure, e.to_string()),
    }
}

async fn probe_loop(
    key: NodeKey,
    cfg: ProbeConfig,
    client: HttpClient,
    table: Arc<HealthTable>,
    metrics: Arc<Metrics>,
    kick: Arc<Notify>,
) {
    let mut state = ProbeState::new(cfg.success_threshold, cfg.failure_threshold);
    // Spread the first probes of many nodes over a quarter interval.
    let spread = cfg.interval.as_millis().min(1000) as u64 / 4;
    if spread > 0 {
        let delay = rand::rng().random_range(0..spread);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    loop {
        let started = Instant::now();
        let (mut outcome, mut detail) = probe_once(&client, &key.address, &cfg).await;
        metrics
            .probe_duration
            .observe(started.elapsed().as_secs_f64());
        if outcome == Outcome::Refused && state.health() != Health::Unready {
            // Confirm once, ~50 ms later, before failing a node at once on a refusal
            // (docs/failover.md); a second refusal is the process being gone.
            tokio::time::sleep(REFUSED_CONFIRM).await;
            let (again, d) = probe_once(&client, &key.address, &cfg).await;
            if again != Outcome::Refused {
                // It answers (or merely fails): an ordinary failed probe, counted as such.
                outcome = Outcome::Failure;
                detail = format!("refused, then {d}");
            }
        }
        table.note(&key, outcome == Outcome::Success, detail.clone());
        if let Some(h) = state.record(outcome) {
            info!(node = %key.name, address = %key.address, health = ?h, detail = %detail, "node verdict changed");
            table.set(&key, h);
        }
        tokio::select! {
            _ = tokio::time::sleep_until((started + cfg.interval).into()) => {}
            _ = kick.notified() => {}
        }
    }
}

/// Holds an idle connection to `address`; when it closes or cannot be opened, kicks the probe.
async fn watchdog_loop(address: String, kick: Arc<Notify>, interval: Duration, timeout: Duration) {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(mut stream)) => {
                // Servers may answer or close idle connections; either way, end of stream or an
                // error means "probe now". Data is ignored.
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
                kick.notify_one();
                // A live server that closes idle connections costs one probe per cycle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    kick.notify_one();
                }
                tokio::time::sleep(interval).await;
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_as_in_kubernetes() {
        let mut s = ProbeState::new(2, 3);
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.record(Outcome::Success), None);
        assert_eq!(s.record(Outcome::Success), Some(Health::Ready));
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.record(Outcome::Failure), None);
        // A success in between resets the failure count.
        assert_eq!(s.record(Outcome::Success), None);
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.record(Outcome::Failure), Some(Health::Unready));
        assert_eq!(s.record(Outcome::Success), None);
        assert_eq!(s.record(Outcome::Success), Some(Health::Ready));
    }

    #[test]
    fn refused_is_unready_at_once() {
        let mut s = ProbeState::new(1, 3);
        assert_eq!(s.record(Outcome::Success), Some(Health::Ready));
        assert_eq!(s.record(Outcome::Refused), Some(Health::Unready));
        let mut s = ProbeState::new(1, 5);
        assert_eq!(s.record(Outcome::Refused), Some(Health::Unready));
    }

    #[test]
    fn unknown_until_a_threshold_is_reached() {
        let mut s = ProbeState::new(1, 3);
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.record(Outcome::Failure), None);
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.record(Outcome::Failure), Some(Health::Unready));
    }

    #[tokio::test]
    async fn a_refused_probe_is_reported_as_refused() {
        // Bind then drop: the port is very likely closed right after.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let client = topology_client::http::build_client(Duration::from_millis(500));
        let (o, _) = probe_once(&client, &addr, &ProbeConfig::default()).await;
        assert_eq!(o, Outcome::Refused);
    }
}
