//! Prometheus metrics (`writer_election_` prefix). One registry per
//! service instance, so tests can run several in one process.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// The published epoch.
    pub epoch: IntGauge,
    /// Writer changes, by reason (initial, writer-unready, writer-gone, writer-recreated, switchover).
    pub failovers: IntCounterVec,
    /// 1 ready / 0 not, per node (this replica's view).
    pub node_ready: IntGaugeVec,
    pub probe_duration: Histogram,
    /// 1 on the replica that decides (always 1 without HA).
    pub is_leader: IntGauge,
    /// Kubernetes mode: 0 while the API cannot be reached (no failover meanwhile).
    pub kubernetes_api_up: IntGauge,
    /// 1 while a writer is published.
    pub has_writer: IntGauge,
    /// 1 for the published writer, by node name (no series while there is none): dashboards
    /// show who was the writer when, which the epoch alone does not.
    pub writer: IntGaugeVec,
    /// Elections that were due but not carried out, by reason (api_unreachable, promotion_failed,
    /// record_failed, fencing_failed, conflict, not_leader).
    pub failovers_blocked: IntCounterVec,
    pub switchovers: IntCounterVec,
    pub topology_revision: IntGauge,
    pub blocking_queries: IntGauge,
    pub record_writes: IntCounterVec,
    /// Clients (proxies) seen polling /v1/topology with `client=<id>` recently (the drain set a
    /// switchover would wait for).
    pub clients: IntGauge,
    /// 1 while a planned switchover waits for the proxies to drain.
    pub switchover_draining: IntGauge,
    /// Drain-set members that have not acknowledged the running switchover.
    pub switchover_pending_clients: IntGauge,
    /// From publishing `draining` to the last acknowledgement (or the timeout).
    pub switchover_drain_seconds: Histogram,
    /// `promotion.check` calls on the published writer, by result (ok, not_distributor, error).
    pub writer_checks: IntCounterVec,
    /// Promotions of the published writer at its own epoch after it said it is not the writer,
    /// by result (ok, failed).
    pub repromotions: IntCounterVec,
    /// Nodes taken out of candidacy, by reason (promotion_refused).
    pub candidates_excluded: IntCounterVec,
    /// Progress rounds, by result (ok, writer_unreadable).
    pub progress_rounds: IntCounterVec,
    /// How long one progress round took (every read answered or timed out).
    pub progress_round_seconds: Histogram,
    /// The published writer's offset, by writer name; no series while no `replication` is
    /// published (these gauges follow the published document).
    pub replication_writer_offset: IntGaugeVec,
    /// Per node of the published `replication`: offsets behind the writer.
    pub replication_lag_offsets: IntGaugeVec,
    /// Per node of the published `replication`: `lag_ms` in seconds (a lower bound where the
    /// document says `lag_at_least`).
    pub replication_lag_seconds: GaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let epoch = IntGauge::new(
            "writer_election_epoch",
            "Epoch (fencing token) of the published writer",
        )
        .unwrap();
        let failovers = IntCounterVec::new(
            Opts::new(
                "writer_election_failovers_total",
                "Writer changes by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let node_ready = IntGaugeVec::new(
            Opts::new(
                "writer_election_node_ready",
                "1 if the node is ready in this replica's view",
            ),
            &["node"],
        )
        .unwrap();
        let writer = IntGaugeVec::new(
            Opts::new(
                "writer_election_writer",
                "1 for the published writer (label node); absent while there is none",
            ),
            &["node"],
        )
        .unwrap();
        let probe_duration = Histogram::with_opts(
            HistogramOpts::new(
                "writer_election_probe_duration_seconds",
                "Duration of readiness probes",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let is_leader = IntGauge::new(
            "writer_election_is_leader",
            "1 if this replica probes and decides",
        )
        .unwrap();
        let kubernetes_api_up = IntGauge::new(
            "writer_election_kubernetes_api_up",
            "0 while the Kubernetes API is unreachable (the last recorded writer is kept)",
        )
        .unwrap();
        let has_writer = IntGauge::new(
            "writer_election_has_writer",
            "1 while a writer is published",
        )
        .unwrap();
        let failovers_blocked = IntCounterVec::new(
            Opts::new(
                "writer_election_failovers_blocked_total",
                "Writer changes that were due but not carried out, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let switchovers = IntCounterVec::new(
            Opts::new(
                "writer_election_switchovers_total",
                "Switchover requests by result",
            ),
            &["result"],
        )
        .unwrap();
        let topology_revision = IntGauge::new(
            "writer_election_topology_revision",
            "Revision of the published topology",
        )
        .unwrap();
        let blocking_queries = IntGauge::new(
            "writer_election_blocking_queries",
            "Open blocking /v1/topology queries",
        )
        .unwrap();
        let record_writes = IntCounterVec::new(
            Opts::new(
                "writer_election_record_writes_total",
                "Writes of the durable record by result",
            ),
            &["result"],
        )
        .unwrap();
        let clients = IntGauge::new(
            "writer_election_clients",
            "Clients seen polling the topology with a client id within their wait + 5s",
        )
        .unwrap();
        let switchover_draining = IntGauge::new(
            "writer_election_switchover_draining",
            "1 while a planned switchover waits for the proxies to drain",
        )
        .unwrap();
        let switchover_pending_clients = IntGauge::new(
            "writer_election_switchover_pending_clients",
            "Clients of the running switchover's drain set that have not acknowledged",
        )
        .unwrap();
        let switchover_drain_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "writer_election_switchover_drain_seconds",
                "Time from publishing a draining switchover to the last acknowledgement or the timeout",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap();
        let writer_checks = IntCounterVec::new(
            Opts::new(
                "writer_election_writer_checks_total",
                "Checks that the published writer still is the writer, by result",
            ),
            &["result"],
        )
        .unwrap();
        let repromotions = IntCounterVec::new(
            Opts::new(
                "writer_election_repromotions_total",
                "Promotions of the published writer at its own epoch after it lost its role, by result",
            ),
            &["result"],
        )
        .unwrap();
        let candidates_excluded = IntCounterVec::new(
            Opts::new(
                "writer_election_candidates_excluded_total",
                "Nodes taken out of candidacy, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let progress_rounds = IntCounterVec::new(
            Opts::new(
                "writer_election_progress_rounds_total",
                "Progress rounds (replication offsets of every ready node), by result",
            ),
            &["result"],
        )
        .unwrap();
        let progress_round_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "writer_election_progress_round_seconds",
                "Duration of one progress round",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let replication_writer_offset = IntGaugeVec::new(
            Opts::new(
                "writer_election_replication_writer_offset",
                "Replication offset of the writer (label node) in the published replication",
            ),
            &["node"],
        )
        .unwrap();
        let replication_lag_offsets = IntGaugeVec::new(
            Opts::new(
                "writer_election_replication_lag_offsets",
                "Offsets the node is behind the writer, as published",
            ),
            &["node"],
        )
        .unwrap();
        let replication_lag_seconds = GaugeVec::new(
            Opts::new(
                "writer_election_replication_lag_seconds",
                "How long ago the writer was at the node's offset, as published",
            ),
            &["node"],
        )
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "writer_election_build_info",
                "Always 1; the labels name the version and the git commit of this binary",
            ),
            &["version", "commit"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("WRITER_ELECTION_COMMIT")])
            .set(1);
        for c in [
            Box::new(epoch.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failovers.clone()),
            Box::new(node_ready.clone()),
            Box::new(probe_duration.clone()),
            Box::new(is_leader.clone()),
            Box::new(kubernetes_api_up.clone()),
            Box::new(has_writer.clone()),
            Box::new(writer.clone()),
            Box::new(failovers_blocked.clone()),
            Box::new(switchovers.clone()),
            Box::new(topology_revision.clone()),
            Box::new(blocking_queries.clone()),
            Box::new(record_writes.clone()),
            Box::new(clients.clone()),
            Box::new(switchover_draining.clone()),
            Box::new(switchover_pending_clients.clone()),
            Box::new(switchover_drain_seconds.clone()),
            Box::new(writer_checks.clone()),
            Box::new(repromotions.clone()),
            Box::new(candidates_excluded.clone()),
            Box::new(progress_rounds.clone()),
            Box::new(progress_round_seconds.clone()),
            Box::new(replication_writer_offset.clone()),
            Box::new(replication_lag_offsets.clone()),
            Box::new(replication_lag_seconds.clone()),
            Box::new(build_info),
        ] {
            // Names are constants and unique: registration cannot fail.
            registry.register(c).unwrap();
        }
        // The standard process_* series (CPU, memory, file descriptors, start time), read from
        // /proc at scrape time; the crate has them for Linux only. Of the whole process: several
        // services in one test process all report that process.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        kubernetes_api_up.set(1);
        Metrics {
            registry,
            epoch,
            failovers,
            node_ready,
            probe_duration,
            is_leader,
            kubernetes_api_up,
            has_writer,
            writer,
            failovers_blocked,
            switchovers,
            topology_revision,
            blocking_queries,
            record_writes,
            clients,
            switchover_draining,
            switchover_pending_clients,
            switchover_drain_seconds,
            writer_checks,
            repromotions,
            candidates_excluded,
            progress_rounds,
            progress_round_seconds,
            replication_writer_offset,
            replication_lag_offsets,
            replication_lag_seconds,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn count_failover(&self, reason: &str) {
        self.failovers.with_label_values(&[reason]).inc();
    }

    pub fn count_blocked(&self, reason: &str) {
        self.failovers_blocked.with_label_values(&[reason]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Unused counters still show up (with 0) so dashboards and alerts can refer to them.
pub fn prime(m: &Metrics) {
    for r in [
        "initial",
        "writer-unready",
        "writer-gone",
        "writer-recreated",
        "writer-lost-role",
        "switchover",
    ] {
        let _ = m.failovers.with_label_values(&[r]);
    }
    for r in [
        "api_unreachable",
        "promotion_failed",
        "record_failed",
        "fencing_failed",
    ] {
        let _ = m.failovers_blocked.with_label_values(&[r]);
    }
    let _ = m.record_writes.with_label_values(&["ok"]);
    for r in ["ok", "not_distributor", "error"] {
        let _ = m.writer_checks.with_label_values(&[r]);
    }
    for r in ["ok", "failed"] {
        let _ = m.repromotions.with_label_values(&[r]);
    }
    let _ = m
        .candidates_excluded
        .with_label_values(&["promotion_refused"]);
    for r in ["ok", "writer_unreadable"] {
        let _ = m.progress_rounds.with_label_values(&[r]);
    }
    for r in [
        "switched",
        "unchanged",
        "rejected",
        "not_leader",
        "failed",
        "drain_timeout",
        "busy",
    ] {
        let _ = m.switchovers.with_label_values(&[r]);
    }
}
