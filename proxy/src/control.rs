//! The control plane of one proxy process, as a Pingora background service:
//! - runs the topology source (and replaces it when a reload changes `topology`),
//! - reloads the config on SIGHUP (Pingora does not handle it) and when the file changes,
//! - notices when the traffic listener accepts connections (readiness),
//! - on SIGTERM waits for in-flight requests, then exits at once instead of sitting out
//!   Pingora's fixed grace period.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ProxyConfig, TopologyConfig};
use crate::follow::{client_id, ElectionSource};
use crate::forward::IN_FLIGHT;
use crate::state::Shared;
use crate::topology::{StaticSource, TopologySink, TopologySource};

/// File-change events come in bursts (editors, Kubernetes' ConfigMap symlink swap): wait
/// this long after the first before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct Control {
    shared: Arc<Shared>,
    config_path: PathBuf,
    initial: ProxyConfig,
    initial_text: String,
    listening: Arc<AtomicBool>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        config_path: PathBuf,
        initial: ProxyConfig,
        initial_text: String,
        listening: Arc<AtomicBool>,
    ) -> Self {
        Control {
            shared,
            config_path,
            initial,
            initial_text,
            listening,
        }
    }

    fn start_source(&self, topology: &TopologyConfig) -> JoinHandle<()> {
        let source: Box<dyn TopologySource> = match topology {
            TopologyConfig::Static(st) => Box::new(StaticSource {
                topology: st.clone(),
            }),
            TopologyConfig::ElectionUrl(urls) => Box::new(ElectionSource {
                urls: urls.clone(),
                client_id: client_id().to_string(),
                hold: self.shared.hold.clone(),
                metrics: self.shared.metrics.clone(),
            }),
        };
        self.shared
            .source_changed(matches!(topology, TopologyConfig::ElectionUrl(_)));
        tracing::info!(source = %source.describe(), "starting topology source");
        let sink: Arc<dyn TopologySink> = self.shared.clone();
        tokio::spawn(async move { source.run(sink).await })
    }
}

/// Outcome of one reload attempt (for logs and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Applied { topology_changed: bool },
    Unchanged,
    Rejected,
}

/// Reads and applies the config file. A bad file changes nothing but a counter and a log line.
fn reload(
    shared: &Shared,
    path: &Path,
    current: &mut ProxyConfig,
    current_text: &mut String,
    why: &str,
    skip_if_same_text: bool,
) -> Reload {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            shared.metrics.config_reload_error.inc();
            tracing::error!(
                file = %path.display(), trigger = why, error = %e,
                "config reload failed: cannot read the file; the running config stays"
            );
            return Reload::Rejected;
        }
    };
    if skip_if_same_text && text == *current_text {
        return Reload::Unchanged;
    }
    let mut new = match ProxyConfig::from_yaml_str(&text) {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.config_reload_error.inc();
            tracing::error!(
                file = %path.display(), trigger = why, error = %e,
                "config reload rejected; the running config stays"
            );
            return Reload::Rejected;
        }
    };
    for key in current.restart_only_changes(&new) {
        tracing::warn!(
            key,
            "config reload: {key} changed; it takes effect only after a restart, the running value stays"
        );
    }
    // Keep what is really running, so the applied config says the truth.
    new.listen = current.listen;
    new.admin_listen = current.admin_listen;
    new.threads = current.threads;
    new.shutdown_grace = current.shutdown_grace;

    let topology_changed = new.topology != current.topology;
    shared.apply_settings(new.clone());
    shared.metrics.config_reload_success.inc();
    tracing::info!(file = %path.display(), trigger = why, topology_changed, "config reloaded");
    *current = new;
    *current_text = text;
    Reload::Applied { topology_changed }
}

/// Watches the config file's directory (files are often replaced, not rewritten; Kubernetes
/// swaps a `..data` symlink) and forwards relevant events.
fn watch_file(path: &Path) -> Option<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    use notify::{RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_os_string();
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.kind.is_access() {
                return;
            }
            let relevant = ev.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|f| f == name.as_os_str() || f == "..data")
            });
            if relevant {
                let _ = tx.send(());
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
        return None;
    }
    Some((watcher, rx))
}

/// Where to connect to reach our own listener (a wildcard bind is reachable on loopback).
fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

async fn wait_until_listening(listen: SocketAddr, flag: Arc<AtomicBool>) {
    let addr = probe_addr(listen);
    loop {
        if let Ok(Ok(_conn)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            flag.store(true, Ordering::Release);
            tracing::info!(%listen, "proxy listener is accepting connections");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM: Pingora has stopped accepting and closes idle keep-alive connections; wait for
/// the requests still running, up to the grace period, then leave with 0.
async fn drain_and_exit(grace: Duration) -> ! {
    let started = Instant::now();
    let at_start = IN_FLIGHT.sum();
    tracing::info!(in_flight = at_start, grace = ?grace, "SIGTERM: draining in-flight requests");
    loop {
        let n = IN_FLIGHT.sum();
        if n == 0 {
            tracing::info!(waited = ?started.elapsed(), "drained; exiting");
            crate::logging::exit(0);
        }
        if started.elapsed() >= grace {
            tracing::warn!(
                in_flight = n,
                "grace period over; exiting with requests in flight"
            );
            crate::logging::exit(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};

        // First, before readiness can be reported: SIGHUP's default action ends the process.
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload by file change only");
                None
            }
        };
        let mut current = self.initial.clone();
        let mut current_text = self.initial_text.clone();
        let mut source = self.start_source(&current.topology);
        tokio::spawn(wait_until_listening(current.listen, self.listening.clone()));

        let (_watcher, mut file_events) = match watch_file(&self.config_path) {
            Some((w, rx)) => (Some(w), Some(rx)),
            None => (None, None),
        };

        loop {
            let (why, skip_same) = tokio::select! {
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    ("SIGHUP", false)
                }
                Some(_) = async { match file_events.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    tokio::time::sleep(DEBOUNCE).await;
                    if let Some(rx) = file_events.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    ("file change", true)
                }
                res = shutdown.changed() => {
                    if res.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let outcome = reload(
                &self.shared,
                &self.config_path,
                &mut current,
                &mut current_text,
                why,
                skip_same,
            );
            if outcome
                == (Reload::Applied {
                    topology_changed: true,
                })
            {
                source.abort();
                source = self.start_source(&current.topology);
            }
        }

        self.listening.store(false, Ordering::Release);
        source.abort();
        drain_and_exit(current.shutdown_grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn reload_keeps_the_running_config_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, "reader_balancing: least_conn\n").unwrap();
        let initial = ProxyConfig::load(&path).unwrap();
        let shared = Shared::new(initial.clone(), Arc::new(Metrics::new()));
        let mut current = initial;
        let mut text = std::fs::read_to_string(&path).unwrap();

        std::fs::write(&path, "reader_balancing: nope\n").unwrap();
        let r = reload(&shared, &path, &mut current, &mut text, "test", true);
        assert_eq!(r, Reload::Rejected);
        assert_eq!(shared.metrics.config_reload_error.get(), 1);
        assert_eq!(
            shared.settings().config.reader_balancing,
            crate::config::Balancing::LeastConn
        );

        std::fs::write(&path, "reader_balancing: p2c_ewma\nlisten: 127.0.0.1:1\n").unwrap();
        let r = reload(&shared, &path, &mut current, &mut text, "test", true);
        assert_eq!(
            r,
            Reload::Applied {
                topology_changed: false
            }
        );
        assert_eq!(shared.metrics.config_reload_success.get(), 1);
        let s = shared.settings();
        assert_eq!(s.config.reader_balancing, crate::config::Balancing::P2cEwma);
        // listen needs a restart: the running value stays.
        assert_eq!(s.config.listen, "0.0.0.0:8080".parse().unwrap());

        let r = reload(&shared, &path, &mut current, &mut text, "test", true);
        assert_eq!(r, Reload::Unchanged);
        let r = reload(&shared, &path, &mut current, &mut text, "test", false);
        assert_eq!(
            r,
            Reload::Applied {
                topology_changed: false
            }
        );

        std::fs::write(&path, "topology: { static: { writer: \"127.0.0.1:9\" } }\n").unwrap();
        let r = reload(&shared, &path, &mut current, &mut text, "test", true);
        assert_eq!(
            r,
            Reload::Applied {
                topology_changed: true
            }
        );

        std::fs::remove_file(&path).unwrap();
        let r = reload(&shared, &path, &mut current, &mut text, "test", false);
        assert_eq!(r, Reload::Rejected);
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8080".parse().unwrap()),
            "[::1]:8080".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.0.0.1:80".parse().unwrap()),
            "10.0.0.1:80".parse().unwrap()
        );
    }
}
