//! Replication progress: the leader's progress rounds and the lag estimate published as
//! `replication` in the topology (docs/api.md, "replication").
//!
//! With `election.progress` configured, the leader runs one round every
//! `election.progress.interval` on a task of its own ([`spawn`]; it ends when the replica stops
//! leading): it reads the offset of the published writer and of every node the probes say is
//! ready (one GET each, [`CONCURRENCY`] at a time, on the pooled client the probes use), adds the
//! writer's offset to a short history, and turns the history and the nodes' offsets into a
//! [`Replication`] with [`estimate`], the pure part. The engine publishes the newest result; a
//! round that could not read the writer sends nothing, so the last good measurement of the epoch
//! stays published and its `measured_at_ms` tells its age.
//!
//! **Sample time.** A writer sample carries the time its request was *sent*. The writer's offset
//! when it answers is at least its offset at that moment, so "the writer was at most at offset `v`
//! at time `t`" holds for the sample, and a node at offset `>= v` has everything the writer had at
//! `t`. Lags estimated from such samples can only be too large, never too small: a proxy that
//! trusts `measured_at_ms - lag_ms` for read-your-writes never reads too early.
//!
//! **History.** Per epoch (offsets of two writers are not comparable) and cleared when the
//! writer's offset goes down within one (a writer re-promoted after a restart that lost its
//! stream is a new stream). It keeps [`HISTORY_SPAN`] of samples, at most [`HISTORY_MAX`]: lags
//! that matter to a proxy (`max_reader_lag.duration`, the read-your-writes `window`) are seconds,
//! so ten minutes reach far past them; a node further behind is published with `lag_at_least`
//! and the span as its lag, which is still above any such limit. A run of equal offsets (an idle
//! writer) keeps only its first and its newest sample, so an idle cluster holds a handful of
//! samples and a busy one about one per round; the count bound only matters with intervals below
//! a third of a second, where it shortens the span instead of growing the memory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::config::ProgressConfig;
use crate::decision::{natural_cmp, Progress};
use crate::discovery::{Membership, MembershipRx};
use crate::metrics::Metrics;
use crate::probe::HealthTable;
use crate::promotion::fetch_progress;
use crate::publish::{node_views, Readiness, TopologyHub};
use crate::topology::{NodeProgress, Replication, Topology};
use topology_client::http::HttpClient;

/// How far back the writer's offsets are kept.
pub const HISTORY_SPAN: Duration = Duration::from_secs(600);
/// The most writer samples kept (see the module doc).
pub const HISTORY_MAX: usize = 2048;
/// Offset reads of one round in flight at once: a round of 500 nodes is a few round trips of
/// local requests, and a few hung nodes (each up to the timeout) do not hold up the others.
pub const CONCURRENCY: usize = 64;

/// The writer's offset as one round read it, at the time the request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    pub offset: u64,
}

/// The writer's recent offsets in one epoch, oldest first; offsets never go down.
#[derive(Debug, Default, Clone)]
pub struct WriterHistory {
    epoch: Option<u64>,
    samples: Vec<Sample>,
}

impl WriterHistory {
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Adds this round's writer sample of `epoch` (a new epoch starts an empty history).
    pub fn record(&mut self, epoch: u64, s: Sample) {
        if self.epoch != Some(epoch) {
            self.samples.clear();
            self.epoch = Some(epoch);
        }
        if self
            .samples
            .last()
            .is_some_and(|last| s.offset < last.offset || s.at < last.at)
        {
            self.samples.clear();
        }
        // The middle of a run of equal offsets is never the answer (its newer twin is), and the
        // run's first sample still dates the history when it is the oldest.
        let n = self.samples.len();
        if n >= 2
            && self.samples[n - 1].offset == s.offset
            && self.samples[n - 2].offset == s.offset
        {
            self.samples.pop();
        }
        self.samples.push(s);
        let too_old = self
            .samples
            .iter()
            .take_while(|x| s.at.duration_since(x.at) > HISTORY_SPAN)
            .count();
        let too_many = self.samples.len().saturating_sub(HISTORY_MAX);
        let drop = too_old.max(too_many).min(self.samples.len() - 1);
        self.samples.drain(..drop);
    }
}

/// A duration in whole milliseconds, rounded up (a lag is never published as smaller).
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// One node's lag behind the writer's newest sample `now`: (lag_ms, lag_at_least).
fn node_lag(history: &[Sample], now: Sample, offset: u64) -> (u64, bool) {
    if offset >= now.offset {
        return (0, false);
    }
    // Offsets never go down in a history: the samples at or below `offset` come first.
    let at_or_below = history.partition_point(|s| s.offset <= offset);
    match at_or_below.checked_sub(1).and_then(|i| history.get(i)) {
        Some(s) => (ceil_ms(now.at.saturating_duration_since(s.at)), false),
        None => {
            let oldest = history.first().map_or(now.at, |s| s.at);
            (ceil_ms(now.at.saturating_duration_since(oldest)), true)
        }
    }
}

/// **The lag estimate**: the `replication` document for `epoch` from the writer's history (its
/// newest sample is this round's reading, taken at `measured_at_ms` unix milliseconds) and the
/// offsets this round read from the nodes (the writer among them). `None` while the history
/// holds no sample.
///
/// `lag_offsets` is the writer's offset minus the node's (0 when level or ahead). `lag_ms` is how
/// long before the newest sample the last sample was taken whose offset is at most the node's
/// (0 when level or ahead); a node behind every sample gets the history's age and
/// `lag_at_least`.
pub fn estimate(
    epoch: u64,
    history: &[Sample],
    measured_at_ms: u64,
    nodes: &[(String, u64)],
) -> Option<Replication> {
    let now = *history.last()?;
    let mut out: Vec<NodeProgress> = nodes
        .iter()
        .map(|(name, offset)| {
            let (lag_ms, lag_at_least) = node_lag(history, now, *offset);
            NodeProgress {
                name: name.clone(),
                offset: *offset,
                lag_offsets: now.offset.saturating_sub(*offset),
                lag_ms,
                lag_at_least,
            }
        })
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Some(Replication {
        epoch,
        writer_offset: now.offset,
        measured_at_ms,
        nodes: out,
    })
}

/// Whom one round reads: the published writer first, then every other node the probes say is
/// ready. `None` while no writer is published (nothing to compare against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundTargets {
    pub epoch: u64,
    /// (name, address), the writer first.
    pub nodes: Vec<(String, String)>,
}

pub fn round_targets(doc: &Topology, m: &Membership, table: &HealthTable) -> Option<RoundTargets> {
    let writer = doc.writer.as_ref()?;
    let mut nodes = vec![(writer.name.clone(), writer.address.clone())];
    nodes.extend(
        node_views(m, Readiness::Probes(table))
            .into_iter()
            .filter(|v| v.ready && v.name != writer.name)
            .map(|v| (v.name, v.address)),
    );
    Some(RoundTargets {
        epoch: doc.epoch,
        nodes,
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a round needs; the leader's engine builds it from its own parts.
#[derive(Clone)]
pub struct RoundDeps {
    pub cfg: ProgressConfig,
    pub interval: Duration,
    /// Per read unless `cfg.timeout` is set: `probe.timeout`.
    pub timeout: Duration,
    pub client: HttpClient,
    /// The published document: its epoch and writer are what a round compares against.
    pub hub: Arc<TopologyHub>,
    pub membership: MembershipRx,
    pub table: Arc<HealthTable>,
    pub metrics: Arc<Metrics>,
}

/// A running round task; dropping it ends the task.
pub struct ProgressRun {
    handle: JoinHandle<()>,
    /// The newest measurement (none before the first round that read the writer).
    pub rx: watch::Receiver<Option<Arc<Replication>>>,
}

impl Drop for ProgressRun {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the rounds (call when this replica starts leading; drop the result when it stops).
pub fn spawn(deps: RoundDeps) -> ProgressRun {
    let (tx, rx) = watch::channel(None);
    let handle = tokio::spawn(run(deps, tx));
    ProgressRun { handle, rx }
}

async fn run(d: RoundDeps, tx: watch::Sender<Option<Arc<Replication>>>) {
    let mut tick = tokio::time::interval(d.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut history = WriterHistory::default();
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let started = Instant::now();
        if let Some(rep) = round(&d, &mut history).await {
            tx.send_replace(Some(Arc::new(rep)));
        }
        d.metrics
            .progress_round_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One round: `None` when there is no writer, or its offset could not be read.
async fn round(d: &RoundDeps, history: &mut WriterHistory) -> Option<Replication> {
    let targets = {
        let doc = d.hub.current();
        let m = d.membership.borrow().clone();
        round_targets(&doc, &m, &d.table)?
    };
    let timeout = d.timeout;
    let reads = stream::iter(targets.nodes.into_iter().enumerate())
        .map(|(i, (name, address))| {
            let (client, cfg) = (d.client.clone(), d.cfg.clone());
            async move {
                // Taken when the request starts: the writer's is the sample time.
                let sent = (Instant::now(), SystemTime::now());
                let p = fetch_progress(&client, &address, &cfg, timeout).await;
                (i, name, sent, p)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut measured_at_ms = None;
    let mut nodes = Vec::with_capacity(reads.len());
    for (i, name, (at, wall), p) in reads {
        let Progress::Offset(offset) = p else {
            debug!(node = %name, "replication offset unreadable");
            continue;
        };
        if i == 0 {
            history.record(targets.epoch, Sample { at, offset });
            measured_at_ms = Some(unix_ms(wall));
        }
        nodes.push((name, offset));
    }
    let Some(measured_at_ms) = measured_at_ms else {
        d.metrics
            .progress_rounds
            .with_label_values(&["writer_unreadable"])
            .inc();
        return None;
    };
    d.metrics.progress_rounds.with_label_values(&["ok"]).inc();
    estimate(targets.epoch, history.samples(), measured_at_ms, &nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A history of (ms after t0, offset) samples in one epoch.
    fn history(t0: Instant, samples: &[(u64, u64)]) -> WriterHistory {
        let mut h = WriterHistory::default();
        for &(ms, offset) in samples {
            h.record(
                7,
                Sample {
                    at: at(t0, ms),
                    offset,
                },
            );
        }
        h
    }

    fn nodes(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    /// (name, offset, lag_offsets, lag_ms, lag_at_least) of every node.
    fn lags(r: &Replication) -> Vec<(&str, u64, u64, u64, bool)> {
        r.nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.offset,
                    n.lag_offsets,
                    n.lag_ms,
                    n.lag_at_least,
                )
            })
            .collect()
    }

    #[test]
    fn level_behind_and_ahead() {
        let t0 = Instant::now();
        // Rounds every second; the writer moves 100 -> 130 -> 150 -> 180 -> 200.
        let h = history(
            t0,
            &[(0, 100), (1000, 130), (2000, 150), (3000, 180), (4000, 200)],
        );
        let r = estimate(
            7,
            h.samples(),
            1_764_650_004_000,
            &nodes(&[
                ("node-0", 200),  // the writer: level
                ("node-1", 150),  // the writer was at 150 two rounds ago
                ("node-2", 160),  // between samples: the older one counts (rounded up)
                ("node-10", 250), // ahead (read after the writer)
            ]),
        )
        .unwrap();
        assert_eq!(r.epoch, 7);
        assert_eq!(r.writer_offset, 200);
        assert_eq!(r.measured_at_ms, 1_764_650_004_000);
        assert_eq!(
            lags(&r),
            vec![
                ("node-0", 200, 0, 0, false),
                ("node-1", 150, 50, 2000, false),
                ("node-2", 160, 40, 2000, false),
                ("node-10", 250, 0, 0, false),
            ]
        );
    }

    #[test]
    fn behind_the_whole_history_is_a_lower_bound() {
        let t0 = Instant::now();
        let h = history(t0, &[(0, 100), (1000, 130), (2500, 150)]);
        let r = estimate(7, h.samples(), 1, &nodes(&[("node-1", 99)])).unwrap();
        assert_eq!(lags(&r), vec![("node-1", 99, 51, 2500, true)]);
        // At the oldest sample exactly: known, not a bound.
        let r = estimate(7, h.samples(), 1, &nodes(&[("node-1", 100)])).unwrap();
        assert_eq!(lags(&r), vec![("node-1", 100, 50, 2500, false)]);
    }

    #[test]
    fn a_single_sample_knows_only_level_or_behind_by_at_least_nothing() {
        let t0 = Instant::now();
        let h = history(t0, &[(0, 100)]);
        let r = estimate(7, h.samples(), 5, &nodes(&[("a", 100), ("b", 90)])).unwrap();
        assert_eq!(
            lags(&r),
            vec![("a", 100, 0, 0, false), ("b", 90, 10, 0, true)]
        );
    }

    #[test]
    fn no_sample_no_document() {
        assert_eq!(estimate(7, &[], 5, &nodes(&[("a", 100)])), None);
    }

    #[test]
    fn lags_are_rounded_up_to_whole_milliseconds() {
        let t0 = Instant::now();
        let mut h = WriterHistory::default();
        h.record(1, Sample { at: t0, offset: 1 });
        h.record(
            1,
            Sample {
                at: t0 + Duration::from_micros(1500),
                offset: 2,
            },
        );
        let r = estimate(1, h.samples(), 0, &nodes(&[("a", 1)])).unwrap();
        assert_eq!(r.nodes[0].lag_ms, 2);
    }

    #[test]
    fn a_new_epoch_starts_an_empty_history() {
        let t0 = Instant::now();
        let mut h = history(t0, &[(0, 100), (1000, 200)]);
        assert_eq!(h.epoch(), Some(7));
        // The new writer happens to be further on: its offsets still start a history of their own.
        let first = Sample {
            at: at(t0, 2000),
            offset: 250,
        };
        h.record(8, first);
        assert_eq!(h.epoch(), Some(8));
        assert_eq!(h.samples(), &[first]);
        // A node at 150 is behind everything known of the new writer: a bound, not the old
        // writer's 2000 ms.
        let r = estimate(8, h.samples(), 0, &nodes(&[("a", 150), ("b", 300)])).unwrap();
        assert_eq!(r.epoch, 8);
        assert_eq!(r.writer_offset, 250);
        assert_eq!(
            lags(&r),
            vec![("a", 150, 100, 0, true), ("b", 300, 0, 0, false)]
        );
    }

    #[test]
    fn an_offset_going_down_starts_the_history_again() {
        let t0 = Instant::now();
        let h = history(t0, &[(0, 100), (1000, 200), (2000, 50)]);
        assert_eq!(h.samples().len(), 1);
        assert_eq!(h.samples()[0].offset, 50);
    }

    #[test]
    fn an_idle_writer_keeps_the_first_and_newest_sample_of_a_run() {
        let t0 = Instant::now();
        let h = history(
            t0,
            &[(0, 10), (1000, 100), (2000, 100), (3000, 100), (4000, 100)],
        );
        let kept: Vec<_> = h
            .samples()
            .iter()
            .map(|s| (s.at.duration_since(t0).as_millis() as u64, s.offset))
            .collect();
        assert_eq!(kept, vec![(0, 10), (1000, 100), (4000, 100)]);
        // The collapse changes no answer: behind the run -> the sample before it; at the run -> 0
        // (level with the newest).
        let r = estimate(7, h.samples(), 0, &nodes(&[("a", 50), ("b", 100)])).unwrap();
        assert_eq!(
            lags(&r),
            vec![("a", 50, 50, 4000, false), ("b", 100, 0, 0, false)]
        );
        // Behind everything: the history's age still counts from its oldest sample.
        let r = estimate(7, h.samples(), 0, &nodes(&[("c", 1)])).unwrap();
        assert_eq!(lags(&r), vec![("c", 1, 99, 4000, true)]);
    }

    #[test]
    fn the_history_is_bounded_in_time_and_count() {
        let t0 = Instant::now();
        let span = HISTORY_SPAN.as_millis() as u64;
        let h = history(t0, &[(0, 1), (1000, 2), (span + 500, 3), (span + 900, 4)]);
        let kept: Vec<_> = h.samples().iter().map(|s| s.offset).collect();
        assert_eq!(kept, vec![2, 3, 4], "older than the span: dropped");

        let mut h = WriterHistory::default();
        for i in 0..(HISTORY_MAX as u64 + 10) {
            h.record(
                1,
                Sample {
                    at: at(t0, i),
                    offset: i,
                },
            );
        }
        assert_eq!(h.samples().len(), HISTORY_MAX);
        assert_eq!(h.samples().last().unwrap().offset, HISTORY_MAX as u64 + 9);
    }
}
