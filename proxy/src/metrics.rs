//! Prometheus metrics (the names listed in proxy/README.md, "Metrics"), in a private registry.
//!
//! Pingora registers nothing of its own. The per-request counters are kept per worker (each
//! worker counts in its own [`RequestMetrics`], so no cache line moves between cores on a
//! request) and summed at scrape time by [`PerWorker`]; within a worker they are resolved once
//! per label combination and cached in lock-free slots: `with_label_values` takes a lock and
//! hashes the labels, which the hot path should not pay on every request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus::core::Collector;
use prometheus::proto::{Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::read_your_writes::{Source, ToWriter};
use crate::topology::Progress;

/// `target` label values, indexed by [`crate::routing::RouteTarget::label_index`]; the last
/// one is for requests that failed before a route was chosen.
pub const TARGETS: [&str; 4] = ["writer", "readers", "any", "none"];
pub const TARGET_NONE: usize = 3;

/// `method` label values; every other method is counted as OTHER (bounded cardinality).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

fn method_index(m: &Method) -> usize {
    METHODS[..9]
        .iter()
        .position(|s| *s == m.as_str())
        .unwrap_or(9)
}

/// Status codes 0 (no response was sent) to 599.
const STATUSES: usize = 600;

/// `(target, reason)` of `rw_proxy_read_your_writes_total`, indexed by [`ryw_index`].
const RYW_OUTCOMES: [(&str, &str); 5] = [
    ("readers", "covered"),
    ("writer", "not_caught_up"),
    ("writer", "other_epoch"),
    ("writer", "garbled"),
    ("writer", "no_replication"),
];

fn ryw_index(to_writer: Option<ToWriter>) -> usize {
    match to_writer {
        None => 0,
        Some(ToWriter::NotCaughtUp) => 1,
        Some(ToWriter::OtherEpoch) => 2,
        Some(ToWriter::Garbled) => 3,
        Some(ToWriter::NoReplication) => 4,
    }
}

/// `source` of `rw_proxy_read_your_writes_tokens_total`.
const TOKEN_SOURCES: [Source; 2] = [Source::Writer, Source::Published];

/// The counters one worker touches on every request. Not registered: [`PerWorker`] sums them.
struct RequestMetrics {
    requests: IntCounterVec,
    slots: Box<[OnceLock<IntCounter>]>,
    durations_vec: HistogramVec,
    durations: [Histogram; 4],
    ryw_vec: IntCounterVec,
    ryw: [IntCounter; RYW_OUTCOMES.len()],
    tokens_vec: IntCounterVec,
    tokens: [IntCounter; TOKEN_SOURCES.len()],
}

impl RequestMetrics {
    fn new() -> RequestMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "rw_proxy_requests_total",
                "Requests handled, by route target, method and status",
            ),
            &["target", "method", "status"],
        )
        .expect("static metric definition");
        let durations_vec = HistogramVec::new(
            HistogramOpts::new(
                "rw_proxy_request_duration_seconds",
                "Time from request header to the end of the response, by route target",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["target"],
        )
        .expect("static metric definition");
        let durations = TARGETS.map(|t| durations_vec.with_label_values(&[t]));
        let slots = (0..TARGETS.len() * METHODS.len() * STATUSES)
            .map(|_| OnceLock::new())
            .collect();
        let ryw_vec = IntCounterVec::new(
            Opts::new(
                "rw_proxy_read_your_writes_total",
                "Reads that carried a read-your-writes token younger than the window, by where \
                 they went (target readers: reason covered, only readers known to have the \
                 write; target writer: reason not_caught_up, other_epoch, garbled or \
                 no_replication)",
            ),
            &["target", "reason"],
        )
        .expect("static metric definition");
        let ryw = RYW_OUTCOMES.map(|(t, r)| ryw_vec.with_label_values(&[t, r]));
        let tokens_vec = IntCounterVec::new(
            Opts::new(
                "rw_proxy_read_your_writes_tokens_total",
                "Read-your-writes tokens issued on writes answered 2xx, by where their offset \
                 came from (writer: the writer's offset header, exact; published: the last \
                 published writer offset, compared by time only)",
            ),
            &["source"],
        )
        .expect("static metric definition");
        let tokens = TOKEN_SOURCES.map(|s| tokens_vec.with_label_values(&[s.label()]));
        RequestMetrics {
            requests,
            slots,
            durations_vec,
            durations,
            ryw_vec,
            ryw,
            tokens_vec,
            tokens,
        }
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.requests.collect();
        families.extend(self.durations_vec.collect());
        families.extend(self.ryw_vec.collect());
        families.extend(self.tokens_vec.collect());
        families
    }
}

/// Per-worker [`RequestMetrics`], made when a worker first counts, exported as one set of
/// series: counters and histogram buckets of the same labels are added up.
struct PerWorker {
    shards: Box<[OnceLock<RequestMetrics>]>,
    /// Of shard 0, made up front: the descriptions the registry asks for.
    descs: Vec<prometheus::core::Desc>,
}

impl PerWorker {
    fn new() -> PerWorker {
        let shards: Box<[OnceLock<RequestMetrics>]> = (0..crate::workers::SHARDS)
            .map(|_| OnceLock::new())
            .collect();
        let first = shards[0].get_or_init(RequestMetrics::new);
        let descs = first
            .requests
            .desc()
            .into_iter()
            .chain(first.durations_vec.desc())
            .chain(first.ryw_vec.desc())
            .chain(first.tokens_vec.desc())
            .cloned()
            .collect();
        PerWorker { shards, descs }
    }

    fn current(&self) -> &RequestMetrics {
        self.shards[crate::workers::current() % self.shards.len()].get_or_init(RequestMetrics::new)
    }
}

/// What the registry holds: the same shards the hot path counts in.
struct Registered(Arc<PerWorker>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Collector for PerWorker {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut shards = self.shards.iter().filter_map(OnceLock::get);
        let Some(first) = shards.next() else {
            return Vec::new();
        };
        let mut total = first.collect();
        for shard in shards {
            for (into, family) in total.iter_mut().zip(shard.collect()) {
                merge_family(into, family);
            }
        }
        for family in &mut total {
            family
                .mut_metric()
                .sort_by(|a, b| label_values(a).cmp(&label_values(b)));
        }
        total
    }
}

fn label_values(m: &Metric) -> Vec<&str> {
    m.get_label().iter().map(|l| l.value()).collect()
}

/// Adds `from`'s series into `into` (the same family of another worker): counters and
/// histograms with equal labels are summed, others appended.
fn merge_family(into: &mut MetricFamily, mut from: MetricFamily) {
    let kind = into.get_field_type();
    for metric in from.take_metric() {
        let same = into
            .mut_metric()
            .iter_mut()
            .find(|m| m.get_label() == metric.get_label());
        let Some(same) = same else {
            into.mut_metric().push(metric);
            continue;
        };
        match kind {
            MetricType::COUNTER => {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(same.get_counter().get_value() + metric.get_counter().get_value());
                same.set_counter(c);
            }
            MetricType::HISTOGRAM => {
                let (a, b) = (same.get_histogram(), metric.get_histogram());
                let mut h = prometheus::proto::Histogram::default();
                h.set_sample_count(a.get_sample_count() + b.get_sample_count());
                h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
                // Both come from the same bucket definition.
                let buckets = a
                    .get_bucket()
                    .iter()
                    .zip(b.get_bucket())
                    .map(|(x, y)| {
                        let mut bucket = x.clone();
                        bucket.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                        bucket
                    })
                    .collect();
                h.set_bucket(buckets);
                same.set_histogram(h);
            }
            // Only counters and histograms are kept per worker.
            _ => {}
        }
    }
}

pub struct Metrics {
    registry: Registry,
    per_worker: Arc<PerWorker>,
    upstream_errors: IntCounterVec,
    pub held_writes: IntGauge,
    pub write_hold_seconds: Histogram,
    pub write_holds_released: IntCounter,
    pub write_holds_timed_out: IntCounter,
    pub write_holds_overflow: IntCounter,
    pub write_holds_abandoned: IntCounter,
    pub writer_suspect: IntGauge,
    writer_refused_held: IntCounter,
    writer_refused_not_resendable: IntCounter,
    client_refusals: IntCounterVec,
    pub writer_epoch: IntGauge,
    pub topology_updates: IntCounter,
    /// `rw_proxy_topology_rejected_total{reason="stale_epoch"}`.
    pub topology_rejected: IntCounter,
    topology_age: prometheus::Gauge,
    pub election_errors: IntCounter,
    pub election_reachable: IntGauge,
    pub switchover_drained: IntCounter,
    pub config_reload_success: IntCounter,
    pub config_reload_error: IntCounter,
    in_flight: IntGauge,
    /// `rw_proxy_lagging_readers`.
    pub lagging_readers: IntGauge,
    reader_lag_offsets: IntGaugeVec,
    reader_lag_seconds: GaugeVec,
    log_lines_dropped: IntCounter,
    /// Two scrapes catching the counter up at once would add the same lines twice.
    log_lines_catch_up: std::sync::Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let per_worker = Arc::new(PerWorker::new());
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "rw_proxy_upstream_errors_total",
                "Failures talking to an upstream, by route target and kind",
            ),
            &["target", "kind"],
        )
        .expect("static metric definition");
        let held_writes = IntGauge::new(
            "rw_proxy_held_writes",
            "Writes waiting for a writer right now",
        )
        .expect("static metric definition");
        let write_hold_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rw_proxy_write_hold_seconds",
                "How long a held write waited, per hold (released or not)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .expect("static metric definition");
        let write_holds = IntCounterVec::new(
            Opts::new(
                "rw_proxy_write_holds_total",
                "Writes held, by outcome: released (went to a writer), timeout (503 after \
                 failover.hold_writes), overflow (503 at once: failover.max_held_writes reached), \
                 client_gone (the client left while held; nothing was sent)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let writer_suspect = IntGauge::new(
            "rw_proxy_writer_suspect",
            "1 while writes to the writer are held without a new topology: a connect to it \
             failed (until it accepts connections again), or it refused a write as not the \
             distributor (until a short backoff passes)",
        )
        .expect("static metric definition");
        let writer_refusals = IntCounterVec::new(
            Opts::new(
                "rw_proxy_writer_refusals_total",
                "Writes the writer refused as not the distributor (400 + StorageNode-NAD or Microstream-NAD: true; \
                 nothing applied), by outcome: held (held and sent again, the refusal never \
                 reaches the client), not_resendable (body larger than the retry buffer: 503)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let client_refusals = IntCounterVec::new(
            Opts::new(
                "rw_proxy_client_refusals_total",
                "Requests the client connection loop refused before routing, and closed the \
                 connection: reason header_timeout (408, timeouts.client_header), \
                 headers_too_large (431), or a framing rule broken (bad_target, \
                 bare_line_feed, content_length_and_chunked, bad_chunk)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let election_errors = IntCounter::new(
            "rw_proxy_election_errors_total",
            "Failed attempts to reach writer-election (the proxy keeps its last topology)",
        )
        .expect("static metric definition");
        let election_reachable = IntGauge::new(
            "rw_proxy_election_reachable",
            "1 while the last attempt to reach writer-election succeeded",
        )
        .expect("static metric definition");
        let switchover_drained = IntCounter::new(
            "rw_proxy_switchover_drained_total",
            "Planned switchovers this proxy drained and acknowledged",
        )
        .expect("static metric definition");
        let writer_epoch = IntGauge::new(
            "rw_proxy_writer_epoch",
            "Epoch of the topology in use (the fencing token sent as X-Writer-Epoch)",
        )
        .expect("static metric definition");
        let topology_updates =
            IntCounter::new("rw_proxy_topology_updates_total", "Topologies swapped in")
                .expect("static metric definition");
        let topology_rejected = IntCounterVec::new(
            Opts::new(
                "rw_proxy_topology_rejected_total",
                "Topologies ignored, by reason (stale_epoch: lower than an epoch already seen)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let topology_age = prometheus::Gauge::new(
            "rw_proxy_topology_age_seconds",
            "Seconds since the proxy last knew its topology to be current: 0 while it follows \
             writer-election, growing while the election is unreachable (static: since loaded)",
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "rw_proxy_config_reloads_total",
                "Configuration reloads (SIGHUP or file change), by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new(
            "rw_proxy_in_flight_requests",
            "Requests being proxied right now",
        )
        .expect("static metric definition");
        let lagging_readers = IntGauge::new(
            "rw_proxy_lagging_readers",
            "Readers out of the read pool because their published lag passed \
             routing.max_reader_lag (back once under half of every limit)",
        )
        .expect("static metric definition");
        let reader_lag_offsets = IntGaugeVec::new(
            Opts::new(
                "rw_proxy_reader_lag_offsets",
                "How many offsets each reader was behind the writer, as writer-election last \
                 published it",
            ),
            &["reader"],
        )
        .expect("static metric definition");
        let reader_lag_seconds = GaugeVec::new(
            Opts::new(
                "rw_proxy_reader_lag_seconds",
                "How long before the measurement the writer was where each reader is, as \
                 writer-election last published it (a lower bound when the reader is behind \
                 all its history)",
            ),
            &["reader"],
        )
        .expect("static metric definition");
        let log_lines_dropped = IntCounter::new(
            "rw_proxy_log_lines_dropped_total",
            "Log lines dropped because stderr could not keep up",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rw_proxy_build_info",
                "Always 1; the labels name the version and the git commit of this binary",
            ),
            &["version", "commit"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("RW_PROXY_COMMIT")])
            .set(1);

        for c in [
            Box::new(Registered(per_worker.clone())) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_errors.clone()),
            Box::new(held_writes.clone()),
            Box::new(write_hold_seconds.clone()),
            Box::new(write_holds.clone()),
            Box::new(writer_suspect.clone()),
            Box::new(writer_refusals.clone()),
            Box::new(client_refusals.clone()),
            Box::new(election_errors.clone()),
            Box::new(election_reachable.clone()),
            Box::new(switchover_drained.clone()),
            Box::new(writer_epoch.clone()),
            Box::new(topology_updates.clone()),
            Box::new(topology_rejected.clone()),
            Box::new(topology_age.clone()),
            Box::new(reloads.clone()),
            Box::new(in_flight.clone()),
            Box::new(lagging_readers.clone()),
            Box::new(reader_lag_offsets.clone()),
            Box::new(reader_lag_seconds.clone()),
            Box::new(log_lines_dropped.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // The standard process_* series (CPU, memory, file descriptors, start time), read from
        // /proc at scrape time; the crate has them for Linux only.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");

        Metrics {
            registry,
            per_worker,
            upstream_errors,
            held_writes,
            write_hold_seconds,
            write_holds_released: write_holds.with_label_values(&["released"]),
            write_holds_timed_out: write_holds.with_label_values(&["timeout"]),
            write_holds_overflow: write_holds.with_label_values(&["overflow"]),
            write_holds_abandoned: write_holds.with_label_values(&["client_gone"]),
            writer_suspect,
            writer_refused_held: writer_refusals.with_label_values(&["held"]),
            writer_refused_not_resendable: writer_refusals.with_label_values(&["not_resendable"]),
            client_refusals,
            writer_epoch,
            topology_updates,
            topology_rejected: topology_rejected.with_label_values(&["stale_epoch"]),
            topology_age,
            election_errors,
            election_reachable,
            switchover_drained,
            config_reload_success: reloads.with_label_values(&["success"]),
            config_reload_error: reloads.with_label_values(&["error"]),
            in_flight,
            lagging_readers,
            reader_lag_offsets,
            reader_lag_seconds,
            log_lines_dropped,
            log_lines_catch_up: std::sync::Mutex::new(()),
        }
    }

    /// Counts one finished request and its duration, in the current worker's counters.
    pub fn request_done(&self, target: usize, method: &Method, status: u16, elapsed: Duration) {
        let mine = self.per_worker.current();
        let target = target.min(TARGET_NONE);
        let m = method_index(method);
        let s = usize::from(status).min(STATUSES - 1);
        let slot = &mine.slots[(target * METHODS.len() + m) * STATUSES + s];
        slot.get_or_init(|| {
            mine.requests
                .with_label_values(&[TARGETS[target], METHODS[m], &status.to_string()])
        })
        .inc();
        mine.durations[target].observe(elapsed.as_secs_f64());
    }

    /// Counts a read that carried a young read-your-writes token: `None` when it went to the
    /// readers that have the write, else why it went to the writer.
    pub fn read_your_writes(&self, to_writer: Option<ToWriter>) {
        self.per_worker.current().ryw[ryw_index(to_writer)].inc();
    }

    /// Counts a read-your-writes token issued.
    pub fn token_issued(&self, source: Source) {
        let i = match source {
            Source::Writer => 0,
            Source::Published => 1,
        };
        self.per_worker.current().tokens[i].inc();
    }

    /// A reader's lag as published (when a topology arrives).
    pub fn reader_lag(&self, reader: &str, p: &Progress) {
        self.reader_lag_offsets
            .with_label_values(&[reader])
            .set(i64::try_from(p.lag_offsets).unwrap_or(i64::MAX));
        self.reader_lag_seconds
            .with_label_values(&[reader])
            .set(p.lag_ms as f64 / 1000.0);
    }

    /// A reader left the topology: its lag series go.
    pub fn reader_gone(&self, reader: &str) {
        // Absent when nothing was ever published for it.
        let _ = self.reader_lag_offsets.remove_label_values(&[reader]);
        let _ = self.reader_lag_seconds.remove_label_values(&[reader]);
    }

    /// Counts a refusal by the writer (a NAD header); `resent`: the write is held and goes
    /// again.
    pub fn writer_refusal(&self, resent: bool) {
        if resent {
            self.writer_refused_held.inc();
        } else {
            self.writer_refused_not_resendable.inc();
        }
    }

    /// Counts a request the client connection loop refused (rare: the lookup is fine here).
    pub fn client_refused(&self, reason: &str) {
        self.client_refusals.with_label_values(&[reason]).inc();
    }

    /// Counts an upstream failure (rare: the label lookup is fine here).
    pub fn upstream_error(&self, target: usize, kind: &str) {
        self.upstream_errors
            .with_label_values(&[TARGETS[target.min(TARGET_NONE)], kind])
            .inc();
    }

    /// Prometheus text format. `topology_age` is filled in at scrape time.
    pub fn render(&self, topology_age: Option<Duration>) -> Vec<u8> {
        self.topology_age
            .set(topology_age.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        self.in_flight.set(crate::forward::IN_FLIGHT.sum());
        // The log writer counts on its own; the counter catches up at scrape time.
        if let Ok(_one_at_a_time) = self.log_lines_catch_up.lock() {
            let dropped = crate::logging::dropped_lines();
            self.log_lines_dropped
                .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        }
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_are_exported() {
        let m = Metrics::new();
        m.request_done(0, &Method::PUT, 201, Duration::from_millis(3));
        m.request_done(1, &Method::GET, 200, Duration::from_millis(1));
        m.request_done(1, &Method::GET, 200, Duration::from_millis(1));
        m.request_done(
            1,
            &Method::from_bytes(b"PROPFIND").unwrap(),
            404,
            Duration::ZERO,
        );
        m.upstream_error(1, "connect_refused");
        m.config_reload_error.inc();
        m.writer_epoch.set(7);
        m.read_your_writes(None);
        m.read_your_writes(Some(ToWriter::OtherEpoch));
        m.read_your_writes(Some(ToWriter::OtherEpoch));
        m.token_issued(Source::Published);
        m.lagging_readers.set(1);
        let p = Progress {
            offset: 10,
            lag_offsets: 90,
            lag_ms: 1500,
            lag_at_least: false,
        };
        m.reader_lag("node-1", &p);
        m.reader_lag("node-2", &p);
        m.reader_gone("node-2");
        m.reader_gone("never-seen");
        let text = String::from_utf8(m.render(Some(Duration::from_secs(2)))).unwrap();
        for want in [
            r#"rw_proxy_requests_total{method="PUT",status="201",target="writer"} 1"#,
            r#"rw_proxy_requests_total{method="GET",status="200",target="readers"} 2"#,
            r#"rw_proxy_requests_total{method="OTHER",status="404",target="readers"} 1"#,
            r#"rw_proxy_request_duration_seconds_count{target="readers"} 3"#,
            r#"rw_proxy_upstream_errors_total{kind="connect_refused",target="readers"} 1"#,
            "rw_proxy_held_writes 0",
            "rw_proxy_writer_epoch 7",
            "rw_proxy_topology_updates_total 0",
            "rw_proxy_topology_age_seconds 2",
            r#"rw_proxy_topology_rejected_total{reason="stale_epoch"} 0"#,
            r#"rw_proxy_write_holds_total{outcome="timeout"} 0"#,
            "rw_proxy_write_hold_seconds_count 0",
            "rw_proxy_writer_suspect 0",
            r#"rw_proxy_writer_refusals_total{outcome="held"} 0"#,
            "rw_proxy_election_errors_total 0",
            r#"rw_proxy_config_reloads_total{result="error"} 1"#,
            r#"rw_proxy_config_reloads_total{result="success"} 0"#,
            "rw_proxy_log_lines_dropped_total 0",
            r#"rw_proxy_read_your_writes_total{reason="covered",target="readers"} 1"#,
            r#"rw_proxy_read_your_writes_total{reason="other_epoch",target="writer"} 2"#,
            r#"rw_proxy_read_your_writes_total{reason="no_replication",target="writer"} 0"#,
            r#"rw_proxy_read_your_writes_tokens_total{source="published"} 1"#,
            r#"rw_proxy_read_your_writes_tokens_total{source="writer"} 0"#,
            "rw_proxy_lagging_readers 1",
            r#"rw_proxy_reader_lag_offsets{reader="node-1"} 90"#,
            r#"rw_proxy_reader_lag_seconds{reader="node-1"} 1.5"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        let build_info = format!(
            r#"rw_proxy_build_info{{commit="{}",version="{}"}} 1"#,
            env!("RW_PROXY_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            text.contains(&build_info),
            "missing {build_info} in\n{text}"
        );
        assert!(!text.contains("node-2"), "{text}");
    }

    #[test]
    fn requests_counted_on_several_workers_read_as_one_series() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let m = m.clone();
                std::thread::spawn(move || {
                    crate::workers::enter(i + 1);
                    for _ in 0..=i {
                        m.request_done(1, &Method::GET, 200, Duration::from_millis(2));
                    }
                    // Only worker 3 sees this status.
                    if i == 2 {
                        m.request_done(0, &Method::PUT, 503, Duration::from_secs(2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = String::from_utf8(m.render(None)).unwrap();
        let lines = |prefix: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(r#"rw_proxy_requests_total{"#),
            vec![
                r#"rw_proxy_requests_total{method="GET",status="200",target="readers"} 6"#,
                r#"rw_proxy_requests_total{method="PUT",status="503",target="writer"} 1"#,
            ]
        );
        for want in [
            r#"rw_proxy_request_duration_seconds_count{target="readers"} 6"#,
            r#"rw_proxy_request_duration_seconds_bucket{target="readers",le="0.0025"} 6"#,
            r#"rw_proxy_request_duration_seconds_bucket{target="readers",le="0.001"} 0"#,
            r#"rw_proxy_request_duration_seconds_bucket{target="writer",le="2.5"} 1"#,
            r#"rw_proxy_request_duration_seconds_bucket{target="writer",le="1"} 0"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // One HELP/TYPE per family, as before.
        assert_eq!(lines("# TYPE rw_proxy_requests_total").len(), 1);
        assert_eq!(lines("# TYPE rw_proxy_request_duration_seconds").len(), 1);
    }
}
