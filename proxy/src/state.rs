//! What a request reads: one immutable [`Active`] (settings + topology + pools built from
//! both), behind one `ArcSwap`. A request does a single `load_full` and keeps that view to the
//! end, so it never sees half of a reload or half of a topology change.
//!
//! Writers (config reload, topology sources) are rare and take a mutex among themselves to
//! rebuild `Active`; readers never lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::balance::UpstreamStats;
use crate::balance::{Balancer, HasStats};
use crate::config::ProxyConfig;
use crate::hold::WriteHold;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::topology::{TopologySink, TopologySnapshot, Upstream};

/// The parts of the configuration that requests use, compiled.
#[derive(Debug)]
pub struct Settings {
    pub config: ProxyConfig,
    pub table: RoutingTable,
}

impl Settings {
    pub fn new(config: ProxyConfig) -> Settings {
        let table = RoutingTable::new(&config.routing);
        Settings { config, table }
    }
}

/// A node a request can go to, and whether it is the writer.
#[derive(Debug, Clone)]
pub struct Backend {
    pub upstream: Upstream,
    pub is_writer: bool,
}

impl HasStats for Backend {
    fn stats(&self) -> &UpstreamStats {
        &self.upstream.stats
    }
}

impl Backend {
    fn new(upstream: &Upstream, is_writer: bool) -> Backend {
        Backend {
            upstream: upstream.clone(),
            is_writer,
        }
    }
}

/// Everything a request needs, consistent with itself.
pub struct Active {
    pub settings: Arc<Settings>,
    pub topology: Arc<TopologySnapshot>,
    pub writer: Option<Backend>,
    /// Readers, plus the writer if `writer_serves_reads`.
    pub read_pool: Box<[Backend]>,
    pub read_balancer: Balancer,
    /// Readers and the writer (target `any`).
    pub any_pool: Box<[Backend]>,
    pub any_balancer: Balancer,
}

impl Active {
    fn build(settings: Arc<Settings>, topology: Arc<TopologySnapshot>) -> Active {
        let writer = topology.writer.as_ref().map(|w| Backend::new(w, true));
        let readers = topology.readers.iter().map(|r| Backend::new(r, false));
        let read_pool: Box<[Backend]> = if settings.config.routing.writer_serves_reads {
            readers.clone().chain(writer.clone()).collect()
        } else {
            readers.clone().collect()
        };
        let any_pool = readers.chain(writer.clone()).collect();
        let strategy = settings.config.reader_balancing;
        Active {
            settings,
            topology,
            writer,
            read_pool,
            read_balancer: Balancer::new(strategy),
            any_pool,
            any_balancer: Balancer::new(strategy),
        }
    }
}

/// Epoch and revision of the topology in use; the write hold (hold.rs) waits on changes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopologyVersion {
    pub epoch: u64,
    pub revision: u64,
}

/// How current the topology is known to be, for a source that talks to something.
#[derive(Debug, Clone, Copy)]
struct Contact {
    reachable: bool,
    /// The last moment the topology was known to be current: the last success, or the moment
    /// contact was lost (the open blocking query was fine until then).
    current_at: Option<Instant>,
}

/// The proxy's shared state.
pub struct Shared {
    active: ArcSwap<Active>,
    writer_lock: Mutex<()>,
    changes: watch::Sender<TopologyVersion>,
    /// `None` for a static topology.
    contact: Mutex<Option<Contact>>,
    pub hold: Arc<WriteHold>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(config: ProxyConfig, metrics: Arc<Metrics>) -> Arc<Shared> {
        let active = Active::build(
            Arc::new(Settings::new(config)),
            Arc::new(TopologySnapshot::none()),
        );
        Arc::new(Shared {
            active: ArcSwap::from_pointee(active),
            writer_lock: Mutex::new(()),
            changes: watch::channel(TopologyVersion::default()).0,
            contact: Mutex::new(None),
            hold: Arc::new(WriteHold::new(metrics.clone())),
            metrics,
        })
    }

    /// The per-request view (one atomic load and reference count).
    pub fn load(&self) -> Arc<Active> {
        self.active.load_full()
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.active.load().settings.clone()
    }

    pub fn topology(&self) -> Arc<TopologySnapshot> {
        self.active.load().topology.clone()
    }

    /// Notified with every new topology.
    pub fn subscribe(&self) -> watch::Receiver<TopologyVersion> {
        self.changes.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.writer_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new topology source starts: forget what the previous one knew about its contact.
    pub fn source_changed(&self, follows_election: bool) {
        let mut c = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        *c = follows_election.then_some(Contact {
            reachable: false,
            current_at: None,
        });
        self.metrics.election_reachable.set(0);
    }

    /// `rw_proxy_topology_age_seconds`: how long since the topology was last known current.
    /// Following writer-election: 0 while it is reachable (a blocking query is open, a change
    /// would arrive at once), else the time since contact was lost. Static: since loaded.
    pub fn topology_age(&self) -> Option<Duration> {
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        match contact {
            Some(c) if c.reachable => Some(Duration::ZERO),
            Some(c) => c.current_at.map(|t| t.elapsed()),
            None => self.topology().received_at.map(|t| t.elapsed()),
        }
    }

    /// Swaps in new settings, keeping the topology.
    pub fn apply_settings(&self, config: ProxyConfig) {
        let _g = self.lock();
        let topology = self.active.load().topology.clone();
        self.active.store(Arc::new(Active::build(
            Arc::new(Settings::new(config)),
            topology,
        )));
    }
}

impl TopologySink for Shared {
    fn current(&self) -> Arc<TopologySnapshot> {
        self.topology()
    }

    fn publish(&self, snapshot: TopologySnapshot) -> bool {
        let _g = self.lock();
        let current = self.active.load();
        if current.topology.is_known() && snapshot.epoch < current.topology.epoch {
            tracing::warn!(
                epoch = snapshot.epoch,
                current = current.topology.epoch,
                "ignoring a topology with an older epoch"
            );
            self.metrics.topology_rejected.inc();
            return false;
        }
        let version = TopologyVersion {
            epoch: snapshot.epoch,
            revision: snapshot.revision,
        };
        let epoch = snapshot.epoch;
        self.active.store(Arc::new(Active::build(
            current.settings.clone(),
            Arc::new(snapshot),
        )));
        self.metrics.topology_updates.inc();
        self.metrics
            .writer_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.hold.topology_changed(&self.active.load().topology);
        self.changes.send_replace(version);
        true
    }

    fn contact(&self, ok: bool) {
        let mut guard = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        let c = guard.get_or_insert(Contact {
            reachable: false,
            current_at: None,
        });
        if ok {
            c.reachable = true;
            c.current_at = Some(Instant::now());
            self.metrics.election_reachable.set(1);
        } else {
            if c.reachable {
                c.current_at = Some(Instant::now());
            }
            c.reachable = false;
            self.metrics.election_reachable.set(0);
            self.metrics.election_errors.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StaticNode, StaticTopology};
    use crate::topology::StaticSource;

    fn node(port: u16) -> StaticNode {
        StaticNode {
            name: format!("n{port}"),
            address: format!("127.0.0.1:{port}"),
        }
    }

    fn snapshot(shared: &Shared, writer: u16, readers: &[u16]) -> TopologySnapshot {
        let src = StaticSource {
            topology: StaticTopology {
                writer: Some(node(writer)),
                readers: readers.iter().map(|p| node(*p)).collect(),
            },
        };
        let wire = src.to_wire(&shared.topology());
        let resolved = wire
            .writer
            .iter()
            .chain(wire.readers.iter())
            .map(|n| (n.address.clone(), n.address.parse().unwrap()))
            .collect();
        TopologySnapshot::from_wire(&wire, &resolved, &shared.topology()).0
    }

    #[test]
    fn pools_follow_settings_and_topology() {
        let cfg = ProxyConfig::from_yaml_str("routing: { writer_serves_reads: false }").unwrap();
        let shared = Shared::new(cfg, Arc::new(Metrics::new()));
        let mut rx = shared.subscribe();
        assert!(!shared.load().topology.is_known());
        assert!(shared.publish(snapshot(&shared, 1, &[2, 3])));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().revision, 1);
        let a = shared.load();
        assert_eq!(a.read_pool.len(), 2);
        assert_eq!(a.any_pool.len(), 3);
        assert!(a.writer.as_ref().unwrap().is_writer);
        assert_eq!(
            a.settings.config.timeouts.connect,
            std::time::Duration::from_secs(1)
        );

        let cfg = ProxyConfig::from_yaml_str(
            "routing: { writer_serves_reads: true }\ntimeouts: { connect: 250ms }",
        )
        .unwrap();
        shared.apply_settings(cfg);
        let b = shared.load();
        assert_eq!(b.read_pool.len(), 3);
        assert!(Arc::ptr_eq(&a.topology, &b.topology));
        assert_eq!(
            b.settings.config.timeouts.connect,
            std::time::Duration::from_millis(250)
        );
        // The old view stays valid for requests that hold it.
        assert_eq!(a.read_pool.len(), 2);
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn epochs_only_move_forward() {
        let cfg = ProxyConfig::from_yaml_str("").unwrap();
        let shared = Shared::new(cfg, Arc::new(Metrics::new()));
        let mut s = snapshot(&shared, 1, &[]);
        s.epoch = 5;
        assert!(shared.publish(s.clone()));
        s.epoch = 4;
        s.revision += 1;
        assert!(!shared.publish(s.clone()));
        assert_eq!(shared.topology().epoch, 5);
        assert_eq!(shared.metrics.topology_rejected.get(), 1);
        s.epoch = 5;
        assert!(shared.publish(s));
        assert_eq!(shared.metrics.topology_updates.get(), 2);
        assert_eq!(shared.metrics.writer_epoch.get(), 5);
    }

    #[test]
    fn topology_age_follows_contact() {
        let cfg = ProxyConfig::from_yaml_str("").unwrap();
        let shared = Shared::new(cfg, Arc::new(Metrics::new()));
        // Static: age since the topology was loaded.
        assert_eq!(shared.topology_age(), None);
        assert!(shared.publish(snapshot(&shared, 1, &[])));
        assert!(shared.topology_age().is_some());

        shared.source_changed(true);
        assert_eq!(shared.topology_age(), None, "nothing known yet");
        shared.contact(true);
        assert_eq!(shared.topology_age(), Some(Duration::ZERO));
        assert_eq!(shared.metrics.election_reachable.get(), 1);
        shared.contact(false);
        std::thread::sleep(Duration::from_millis(20));
        shared.contact(false);
        let age = shared.topology_age().unwrap();
        assert!(age >= Duration::from_millis(20), "{age:?}");
        assert_eq!(shared.metrics.election_errors.get(), 2);
        assert_eq!(shared.metrics.election_reachable.get(), 0);
        shared.contact(true);
        assert_eq!(shared.topology_age(), Some(Duration::ZERO));
    }
}
