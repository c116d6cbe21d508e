//! What a request reads: one immutable [`Active`] (settings + topology + pools built from
//! both), behind one `ArcSwap`. A request does a single `load_full` and keeps that view to the
//! end, so it never sees half of a reload or half of a topology change.
//!
//! Writers (config reload, topology sources) are rare and take a mutex among themselves to
//! rebuild `Active`; readers never lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::balance::UpstreamStats;
use crate::balance::{Balancer, HasStats};
use crate::config::ProxyConfig;
use crate::contact::{self, Contact};
use crate::hold::WriteHold;
use crate::lag;
use crate::metrics::Metrics;
use crate::read_your_writes::{Applied, ReadYourWrites};
use crate::routing::RoutingTable;
use crate::topology::{TopologySink, TopologySnapshot, Upstream};

/// The parts of the configuration that requests use, compiled.
#[derive(Debug)]
pub struct Settings {
    pub config: ProxyConfig,
    pub table: RoutingTable,
    /// `routing.max_reader_lag`.
    pub lag: Option<lag::Limits>,
    /// `routing.read_your_writes` when enabled.
    pub read_your_writes: Option<ReadYourWrites>,
}

impl Settings {
    pub fn new(config: ProxyConfig) -> Settings {
        let table = RoutingTable::new(&config.routing);
        let lag = config.routing.max_reader_lag.as_ref().map(lag::Limits::new);
        let read_your_writes = config
            .routing
            .read_your_writes
            .as_ref()
            .map(ReadYourWrites::new);
        Settings {
            config,
            table,
            lag,
            read_your_writes,
        }
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
    /// Readers, plus the writer if `writer_serves_reads`; without the readers in `lagging`.
    pub read_pool: Box<[Backend]>,
    pub read_balancer: Balancer,
    /// Readers of the topology kept out of the read pool for lag (`routing.max_reader_lag`),
    /// by name, in topology order.
    pub lagging: Box<[Arc<str>]>,
    /// What each position of `read_pool` is known to have applied (read-your-writes); empty
    /// unless `routing.read_your_writes` is on.
    pub read_applied: Box<[Option<Applied>]>,
    /// Readers and the writer (target `any`).
    pub any_pool: Box<[Backend]>,
    pub any_balancer: Balancer,
}

impl Active {
    /// `was_lagging`: the readers the previous view kept out for lag; each keeps that state
    /// unless its published progress says otherwise (`lag::excluded`).
    fn build(
        settings: Arc<Settings>,
        topology: Arc<TopologySnapshot>,
        was_lagging: &[Arc<str>],
    ) -> Active {
        let lagging: Box<[Arc<str>]> = match (settings.lag, topology.replication) {
            // Without a round of this epoch there is nothing to judge by: nobody is out.
            (Some(limits), Some(_)) => {
                let was: HashSet<&str> = was_lagging.iter().map(|n| &**n).collect();
                topology
                    .readers
                    .iter()
                    .filter(|r| {
                        let was_out = was.contains(&*r.name);
                        lag::excluded(was_out, r.progress.as_ref(), &limits)
                    })
                    .map(|r| r.name.clone())
                    .collect()
            }
            _ => Box::default(),
        };
        let writer = topology.writer.as_ref().map(|w| Backend::new(w, true));
        let readers = topology.readers.iter().map(|r| Backend::new(r, false));
        let out: HashSet<&str> = lagging.iter().map(|n| &**n).collect();
        let in_read_pool = |b: &Backend| !out.contains(&*b.upstream.name);
        let read_pool: Box<[Backend]> = if settings.config.routing.writer_serves_reads {
            readers
                .clone()
                .filter(in_read_pool)
                .chain(writer.clone())
                .collect()
        } else {
            readers.clone().filter(in_read_pool).collect()
        };
        let read_applied = match (&settings.read_your_writes, &topology.replication) {
            (None, _) => Box::default(),
            (Some(_), round) => read_pool
                .iter()
                .map(|b| {
                    if b.is_writer {
                        Some(Applied::WRITER)
                    } else {
                        Some(Applied::of(b.upstream.progress.as_ref()?, round.as_ref()?))
                    }
                })
                .collect(),
        };
        let any_pool = readers.chain(writer.clone()).collect();
        let strategy = settings.config.reader_balancing;
        Active {
            settings,
            topology,
            writer,
            read_pool,
            read_balancer: Balancer::new(strategy),
            lagging,
            read_applied,
            any_pool,
            any_balancer: Balancer::new(strategy),
        }
    }
}

/// Whether `a` needs replication progress and its topology has a writer but none: every read
/// with a young token then goes to the writer and the lag gate lets every reader in.
fn lacks_replication(a: &Active) -> bool {
    (a.settings.read_your_writes.is_some() || a.settings.lag.is_some())
        && a.topology.writer.is_some()
        && a.topology.replication.is_none()
}

/// One log line when replication progress goes missing for a view that needs it, and one when
/// it is back: otherwise an operator who enabled read-your-writes without `election.progress`
/// sees only the writer's load grow.
fn report_replication(before: &Active, after: &Active) {
    match (lacks_replication(before), lacks_replication(after)) {
        (false, true) => tracing::warn!(
            epoch = after.topology.epoch,
            "the topology carries no replication progress (election.progress not configured, \
             a static topology, or no progress round of this epoch yet): reads with a \
             read-your-writes token go to the writer, and routing.max_reader_lag keeps no \
             reader out"
        ),
        (true, false) if after.topology.replication.is_some() => tracing::info!(
            epoch = after.topology.epoch,
            "replication progress published again: read-your-writes and the lag gate use it"
        ),
        _ => {}
    }
}

/// Epoch and revision of the topology in use; the write hold (hold.rs) waits on changes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopologyVersion {
    pub epoch: u64,
    pub revision: u64,
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
            &[],
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

    fn contact_lock(&self) -> std::sync::MutexGuard<'_, Option<Contact>> {
        // A `Contact` is two plain fields, each update a whole one: never half-written.
        self.contact.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new topology source starts: forget what the previous one knew about its contact.
    pub fn source_changed(&self, follows_election: bool) {
        *self.contact_lock() = follows_election.then(Contact::new);
        self.metrics.election_reachable.set(0);
    }

    /// `rw_proxy_topology_age_seconds`: how long since the topology was last known current
    /// (`contact::topology_age`).
    pub fn topology_age(&self) -> Option<Duration> {
        let contact = *self.contact_lock();
        let received_at = self.topology().received_at;
        contact::topology_age(contact.as_ref(), received_at, Instant::now())
    }

    /// Swaps in new settings, keeping the topology.
    pub fn apply_settings(&self, config: ProxyConfig) {
        let _g = self.lock();
        let current = self.active.load_full();
        self.swap_in(
            &current,
            Arc::new(Settings::new(config)),
            current.topology.clone(),
        );
    }

    /// Builds and stores the view of `settings` and `topology` after `current` (the caller
    /// holds the writer lock), and reports what changed about lagging readers.
    fn swap_in(&self, current: &Active, settings: Arc<Settings>, topology: Arc<TopologySnapshot>) {
        let next = Active::build(settings, topology, &current.lagging);
        self.report_lag(current, &next);
        report_replication(current, &next);
        self.active.store(Arc::new(next));
    }

    /// One log line per reader that leaves the read pool for lag or comes back; the lag
    /// gauges.
    fn report_lag(&self, before: &Active, after: &Active) {
        let reader = |a: &Active, name: &str| {
            a.topology
                .readers
                .iter()
                .find(|r| &*r.name == name)
                .map(|r| r.progress)
        };
        for name in after.lagging.iter() {
            if !before.lagging.contains(name) {
                let p = reader(after, name).flatten();
                tracing::warn!(
                    reader = &**name,
                    lag_offsets = p.map(|p| p.lag_offsets),
                    lag_ms = p.map(|p| p.lag_ms),
                    "reader lags past routing.max_reader_lag: out of the read pool"
                );
            }
        }
        for name in before.lagging.iter() {
            if after.lagging.contains(name) {
                continue;
            }
            match reader(after, name) {
                Some(p) => tracing::info!(
                    reader = &**name,
                    lag_offsets = p.map(|p| p.lag_offsets),
                    lag_ms = p.map(|p| p.lag_ms),
                    "reader back in the read pool"
                ),
                None => tracing::info!(reader = &**name, "lagging reader left the topology"),
            }
        }
        self.metrics
            .lagging_readers
            .set(i64::try_from(after.lagging.len()).unwrap_or(i64::MAX));
        if std::ptr::eq(&*before.topology, &*after.topology) {
            return;
        }
        for r in &after.topology.readers {
            if let Some(p) = &r.progress {
                self.metrics.reader_lag(&r.name, p);
            }
        }
        let staying: HashSet<&str> = after.topology.readers.iter().map(|r| &*r.name).collect();
        for r in &before.topology.readers {
            if !staying.contains(&*r.name) {
                self.metrics.reader_gone(&r.name);
            }
        }
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
        self.swap_in(&current, current.settings.clone(), Arc::new(snapshot));
        self.metrics.topology_updates.inc();
        self.metrics
            .writer_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.hold.topology_changed(&self.active.load().topology);
        self.changes.send_replace(version);
        true
    }

    fn contact(&self, ok: bool) {
        let mut guard = self.contact_lock();
        guard
            .get_or_insert_with(Contact::new)
            .record(ok, Instant::now());
        self.metrics.election_reachable.set(i64::from(ok));
        if !ok {
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

    /// Writer `w` and readers `r0..` at epoch 3, revision `rev`; `lags`: each reader's
    /// published `lag_offsets` (`None`: not in the round); `round`: publish a round at all.
    fn lagged(shared: &Shared, rev: u64, lags: &[Option<u64>], round: bool) -> TopologySnapshot {
        use topology_client::topology::{NodeProgress, NodeRef, Replication, Topology};
        let node = |name: String, port: usize| NodeRef {
            name,
            address: format!("127.0.0.1:{}", 1000 + port),
        };
        let mut t = Topology::empty();
        t.epoch = 3;
        t.revision = rev;
        t.writer = Some(node("w".into(), 0));
        t.readers = (0..lags.len())
            .map(|i| node(format!("r{i}"), i + 1))
            .collect();
        t.replication = round.then(|| Replication {
            epoch: 3,
            writer_offset: 1000,
            measured_at_ms: 50_000,
            nodes: lags
                .iter()
                .enumerate()
                .filter_map(|(i, lag)| {
                    let lag = (*lag)?;
                    Some(NodeProgress {
                        name: format!("r{i}"),
                        offset: 1000 - lag,
                        lag_offsets: lag,
                        lag_ms: lag * 10,
                        lag_at_least: false,
                    })
                })
                .collect(),
        });
        let resolved = t
            .writer
            .iter()
            .chain(t.readers.iter())
            .map(|n| (n.address.clone(), n.address.parse().unwrap()))
            .collect();
        TopologySnapshot::from_wire(&t, &resolved, &shared.topology()).0
    }

    fn pool_names(a: &Active) -> Vec<&str> {
        a.read_pool.iter().map(|b| &*b.upstream.name).collect()
    }

    #[test]
    fn lagging_readers_leave_the_read_pool_and_come_back_under_half() {
        let cfg = ProxyConfig::from_yaml_str("routing: { max_reader_lag: { offsets: 100 } }");
        let shared = Shared::new(cfg.unwrap(), Arc::new(Metrics::new()));
        let lags = |shared: &Shared, rev, lags: &[Option<u64>]| {
            assert!(shared.publish(lagged(shared, rev, lags, true)));
            shared.load()
        };
        let a = lags(&shared, 1, &[Some(0), Some(500), Some(100)]);
        assert_eq!(pool_names(&a), ["r0", "r2"]);
        assert_eq!(&*a.lagging, [Arc::<str>::from("r1")]);
        assert_eq!(a.any_pool.len(), 4, "`any` keeps every node");
        assert_eq!(shared.metrics.lagging_readers.get(), 1);
        // Under the limit, not under half: r1 stays out; r2, never out, stays in.
        let a = lags(&shared, 2, &[Some(0), Some(99), Some(99)]);
        assert_eq!(pool_names(&a), ["r0", "r2"]);
        // Not in the round: keeps its state.
        let a = lags(&shared, 3, &[Some(0), None, None]);
        assert_eq!(pool_names(&a), ["r0", "r2"]);
        let a = lags(&shared, 4, &[Some(0), Some(49), Some(0)]);
        assert_eq!(pool_names(&a), ["r0", "r1", "r2"]);
        assert_eq!(shared.metrics.lagging_readers.get(), 0);

        // Everybody out; then a round of no use (another epoch's, or none): nobody is.
        let a = lags(&shared, 5, &[Some(101), Some(101), Some(101)]);
        assert!(a.read_pool.is_empty());
        assert_eq!(a.lagging.len(), 3);
        assert!(shared.publish(lagged(&shared, 6, &[Some(101); 3], false)));
        assert_eq!(pool_names(&shared.load()), ["r0", "r1", "r2"]);

        // The limits follow the config: a reload re-judges the same round.
        let a = lags(&shared, 7, &[Some(0), Some(60), Some(0)]);
        assert_eq!(a.read_pool.len(), 3);
        let tight =
            ProxyConfig::from_yaml_str("routing: { max_reader_lag: { offsets: 50 } }").unwrap();
        shared.apply_settings(tight);
        assert_eq!(pool_names(&shared.load()), ["r0", "r2"]);
        shared.apply_settings(ProxyConfig::from_yaml_str("").unwrap());
        assert_eq!(shared.load().read_pool.len(), 3);
        assert_eq!(shared.metrics.lagging_readers.get(), 0);
    }

    #[test]
    fn reader_lag_gauges_follow_the_topology() {
        let shared = Shared::new(
            ProxyConfig::from_yaml_str("").unwrap(),
            Arc::new(Metrics::new()),
        );
        let text = |shared: &Shared| String::from_utf8(shared.metrics.render(None)).unwrap();
        assert!(shared.publish(lagged(&shared, 1, &[Some(7), Some(30)], true)));
        let t = text(&shared);
        assert!(
            t.contains(r#"rw_proxy_reader_lag_offsets{reader="r1"} 30"#),
            "{t}"
        );
        assert!(
            t.contains(r#"rw_proxy_reader_lag_seconds{reader="r1"} 0.3"#),
            "{t}"
        );
        assert!(
            t.contains(r#"rw_proxy_reader_lag_offsets{reader="r0"} 7"#),
            "{t}"
        );
        // Without limits nobody leaves the pool.
        assert_eq!(shared.load().read_pool.len(), 2);
        // Not in this round: the last value stays. Gone from the topology: so is its series.
        assert!(shared.publish(lagged(&shared, 2, &[Some(1), None], true)));
        let t = text(&shared);
        assert!(
            t.contains(r#"rw_proxy_reader_lag_offsets{reader="r1"} 30"#),
            "{t}"
        );
        assert!(
            t.contains(r#"rw_proxy_reader_lag_offsets{reader="r0"} 1"#),
            "{t}"
        );
        assert!(shared.publish(lagged(&shared, 3, &[Some(2)], true)));
        let t = text(&shared);
        assert!(!t.contains(r#"reader="r1""#), "{t}");
        assert!(
            t.contains(r#"rw_proxy_reader_lag_offsets{reader="r0"} 2"#),
            "{t}"
        );
    }

    #[test]
    fn what_each_reader_applied_is_ready_for_read_your_writes() {
        let cfg = ProxyConfig::from_yaml_str(
            "routing: { writer_serves_reads: true, read_your_writes: { enabled: true } }",
        )
        .unwrap();
        let shared = Shared::new(cfg, Arc::new(Metrics::new()));
        assert!(shared.publish(lagged(&shared, 1, &[Some(10), None], true)));
        let a = shared.load();
        assert_eq!(pool_names(&a), ["r0", "r1", "w"]);
        assert_eq!(
            &*a.read_applied,
            [
                Some(Applied {
                    offset: 990,
                    until_ms: Some(50_000 - 100)
                }),
                None,
                Some(Applied::WRITER)
            ]
        );
        // Off: nothing is made.
        shared.apply_settings(ProxyConfig::from_yaml_str("").unwrap());
        assert!(shared.load().read_applied.is_empty());
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
        shared.contact(false);
        // How much it is, counted from the first failure, is contact.rs's to test.
        assert!(shared.topology_age().is_some());
        assert_eq!(shared.metrics.election_errors.get(), 2);
        assert_eq!(shared.metrics.election_reachable.get(), 0);
        shared.contact(true);
        assert_eq!(shared.topology_age(), Some(Duration::ZERO));
    }
}
