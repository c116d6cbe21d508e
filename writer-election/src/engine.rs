//! The decision loop: observe -> [`decide`] -> act -> publish.
//!
//! One task owns the record and makes every change, so decisions are serialised without locks.
//! It wakes on whatever can change a decision: the pod list, a probe verdict, a switchover
//! request, leadership, the API's reachability, or a retry timer. Where to look:
//!
//! - the decision itself is [`decide`] (pure);
//! - the order of the actions that carry a decision out (re-read the record, fence, promote,
//!   record, publish) is [`crate::writer_change`]; here a step that failed becomes a retry, a
//!   penalty or an exclusion of the node, a log line and a metric;
//! - a planned switchover's states are [`crate::switchover`], its drain barrier
//!   [`crate::drain`]; here the loop drives them;
//! - the document and its gauges are [`crate::publish`].
//!
//! With `election.progress`, the leader also runs progress rounds on a task of its own
//! ([`crate::progress`]): each round's measurement comes back here and is published with the next
//! document, so the revision moves at most once per round because of it.
//!
//! Every probe interval the published writer is asked `promotion.check` (one GET, off the loop).
//! A writer that answers it is not the writer (restarted, lost its role) is promoted again at its
//! own epoch; if that fails it is lost and the next candidate is elected as usual. A check
//! without an answer changes nothing: the readiness probes decide about a dead node.
//!
//! HA followers run none of this: they publish the recorded writer (re-read every
//! `ha.retry_period`) with their own pod watch's readiness.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::config::ElectionConfig;
use crate::decision::{
    decide, promotion_refused, refusal_span, Decision, ElectionPolicy, Health, Holder,
    ObservedNode, Progress, Reason, Recorded, RefusalSpan, Request,
};
use crate::discovery::{Membership, MembershipRx};
use crate::drain::{Barrier, ClientRegistry, DrainBarrier};
use crate::kube_actions::KubeActions;
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::probe::{HealthTable, Prober};
use crate::progress::{self, ProgressRun, RoundDeps};
use crate::promotion::{fetch_progress, CheckResult, Promoter, PromotionError};
use crate::publish::{node_key, Publisher, TopologyHub};
use crate::store::{RecordStore, StoreError};
use crate::switchover::{
    abandons_drain, plan_after_drain, plan_request, reply, AfterDrain, RequestPlan, Step,
    Switchovers,
};
use crate::topology::{push_history, HistoryEntry, Replication};
use crate::writer_change::{self, pod_to_fence, Failure, Fence, PodFencer, Steps};
use topology_client::http::HttpClient;

pub use crate::switchover::{SwitchoverCmd, SwitchoverOutcome};

/// How a switchover that got past its drain ended.
enum SwitchResult {
    Switched,
    Unchanged,
    Other(SwitchoverOutcome),
}

pub struct EngineDeps {
    pub cfg: Arc<ElectionConfig>,
    pub store: Arc<dyn RecordStore>,
    /// The record read at startup, if it could be read.
    pub initial: Option<Recorded>,
    pub membership: MembershipRx,
    pub hub: Arc<TopologyHub>,
    pub metrics: Arc<Metrics>,
    pub switch_rx: mpsc::Receiver<SwitchoverCmd>,
    pub leader: watch::Receiver<LeaderState>,
    pub api_up: watch::Receiver<bool>,
    pub kube: Option<Arc<KubeActions>>,
    pub ready: watch::Sender<bool>,
    pub stop: watch::Receiver<bool>,
    pub client: HttpClient,
    /// The proxies seen polling (the drain set of a switchover).
    pub clients: Arc<ClientRegistry>,
    /// Acknowledgements of the running switchover (recorded by the API).
    pub drain: Arc<DrainBarrier>,
    /// The probe verdicts (also read by `/v1/status`).
    pub table: Arc<HealthTable>,
}

/// A node that refused promotion, kept out of candidacy (see [`refusal_span`]).
struct Refusal {
    span: RefusalSpan,
    since: Instant,
}

/// The answer of the published writer to `promotion.check`.
struct CheckReport {
    holder: Holder,
    epoch: u64,
    result: CheckResult,
}

pub struct Engine {
    cfg: Arc<ElectionConfig>,
    policy: ElectionPolicy,
    store: Arc<dyn RecordStore>,
    recorded: Option<Recorded>,
    need_reload: bool,
    last_reload: Option<Instant>,
    membership: MembershipRx,
    table: Arc<HealthTable>,
    prober: Prober,
    promoter: Promoter,
    client: HttpClient,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    switch_rx: mpsc::Receiver<SwitchoverCmd>,
    leader: watch::Receiver<LeaderState>,
    api_up: watch::Receiver<bool>,
    kube: Option<Arc<KubeActions>>,
    ready: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    penalties: HashMap<String, Instant>,
    /// By node name.
    refused: HashMap<String, Refusal>,
    /// Writers that lost their role and could not be promoted again: name -> (pod UID, until).
    lost_role: HashMap<String, (Option<String>, Instant)>,
    check_tx: mpsc::Sender<CheckReport>,
    check_rx: mpsc::Receiver<CheckReport>,
    check_in_flight: bool,
    /// The last check of the writer failed to get an answer (logged once per episode).
    check_failing: bool,
    retry_at: Option<Instant>,
    /// The reason the last due change was not carried out (logged once per episode).
    blocked: Option<String>,
    last_wait: Option<String>,
    /// Woken by the API on every acknowledgement of the running switchover's drain.
    drain_rx: watch::Receiver<Option<Barrier>>,
    switchovers: Switchovers,
    /// When this process first saw the published writer lost (for the history's time without a
    /// writer); cleared once a writer is recorded again.
    lost_at: Option<Instant>,
    /// What a progress round needs (`None`: `election.progress` is not configured).
    progress_deps: Option<RoundDeps>,
    /// The progress rounds, while this replica leads.
    progress: Option<ProgressRun>,
}

/// The next measurement of the running progress rounds; never, while none run.
async fn next_measurement(run: &mut Option<ProgressRun>) -> Option<Arc<Replication>> {
    let Some(run) = run.as_mut() else {
        return std::future::pending().await;
    };
    if run.rx.changed().await.is_err() {
        // The round task ended (it only does when dropped): nothing more will come.
        return std::future::pending().await;
    }
    run.rx.borrow_and_update().clone()
}

/// How long a node whose promotion failed is skipped by automatic elections.
fn penalty(cfg: &ElectionConfig) -> Duration {
    (cfg.probe.interval * 10).max(Duration::from_secs(10))
}

/// Since when the cluster has had no writer, as this process saw it, and how long a drain took.
struct Outage {
    since: Option<Instant>,
    drained_in: Option<Duration>,
}

/// The history entry for `to` being recorded now.
fn history_entry(
    outage: &Outage,
    from: Option<String>,
    to: &Holder,
    epoch: u64,
    reason: Reason,
) -> HistoryEntry {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    HistoryEntry {
        at: k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Millisecond)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        from,
        to: to.name.clone(),
        epoch,
        reason: reason.as_str().to_string(),
        no_writer_ms: outage.since.map(|t| ms(t.elapsed())),
        drain_ms: outage.drained_in.map(ms),
    }
}

impl Engine {
    pub fn new(d: EngineDeps) -> Self {
        let table = d.table.clone();
        let prober = Prober::new(
            d.cfg.probe.clone(),
            d.client.clone(),
            table.clone(),
            d.metrics.clone(),
        );
        let promoter = Promoter::new(d.cfg.promotion.clone(), d.client.clone());
        let (check_tx, check_rx) = mpsc::channel(1);
        let progress_deps = d
            .cfg
            .election
            .progress
            .clone()
            .zip(d.cfg.progress_interval())
            .map(|(cfg, interval)| RoundDeps {
                cfg,
                interval,
                timeout: d.cfg.probe.timeout,
                client: d.client.clone(),
                hub: d.hub.clone(),
                membership: d.membership.clone(),
                table: table.clone(),
                metrics: d.metrics.clone(),
            });
        let publisher = Publisher::new(
            d.hub,
            d.metrics.clone(),
            d.membership.clone(),
            table.clone(),
        );
        let drain_rx = d.drain.subscribe();
        let switchovers = Switchovers::new(
            d.drain,
            d.clients,
            d.metrics.clone(),
            d.cfg.switchover.drain_timeout,
        );
        Engine {
            policy: d.cfg.policy(),
            need_reload: d.initial.is_none(),
            last_reload: d.initial.as_ref().map(|_| Instant::now()),
            recorded: d.initial,
            cfg: d.cfg,
            store: d.store,
            membership: d.membership,
            table,
            prober,
            promoter,
            client: d.client,
            publisher,
            metrics: d.metrics,
            switch_rx: d.switch_rx,
            leader: d.leader,
            api_up: d.api_up,
            kube: d.kube,
            ready: d.ready,
            stop: d.stop,
            penalties: HashMap::new(),
            refused: HashMap::new(),
            lost_role: HashMap::new(),
            check_tx,
            check_rx,
            check_in_flight: false,
            check_failing: false,
            retry_at: None,
            blocked: None,
            last_wait: None,
            drain_rx,
            switchovers,
            lost_at: None,
            progress_deps,
            progress: None,
        }
    }

    pub async fn run(mut self) {
        let mut follow_tick = tokio::time::interval(self.cfg.ha.retry_period);
        follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check_tick = tokio::time::interval(self.cfg.probe.interval);
        check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checking = self.promoter.has_check();
        let mut was_leading = false;
        // A watch whose sender is gone answers `changed()` at once, forever: such a branch is
        // switched off instead of spinning the loop.
        let mut membership_open = true;
        let mut leader_open = true;
        let mut api_up_open = true;
        let mut switch_open = true;
        loop {
            if *self.stop.borrow() {
                break;
            }
            let leading = self.leader.borrow().leading_now();
            if leading != was_leading {
                self.metrics.is_leader.set(i64::from(leading));
                if leading {
                    info!("deciding (leader)");
                    // Another leader may have written since we last read.
                    self.need_reload = true;
                    self.progress = self.progress_deps.clone().map(progress::spawn);
                } else {
                    info!("following: serving the recorded writer, not probing");
                    self.prober.stop_all();
                    self.progress = None;
                    self.ready.send_replace(false);
                }
                was_leading = leading;
            }
            if leading {
                self.lead_round().await;
                self.advance_switchover().await;
            } else {
                if self.switchovers.current().is_some() {
                    let leader = self.leader.borrow().leader.clone();
                    self.switchovers
                        .abandon("lost leadership", SwitchoverOutcome::NotLeader(leader));
                }
                self.follow_round().await;
            }

            let now = Instant::now();
            let next_penalty = self.penalties.values().filter(|t| **t > now).min().copied();
            let wake = [self.retry_at, next_penalty, self.switchovers.deadline()]
                .into_iter()
                .flatten()
                .min();
            let draining = self.switchovers.current().is_some();
            let valid_until = self.leader.borrow().valid_until;
            tokio::select! {
                _ = self.stop.changed() => break,
                r = self.membership.changed(), if membership_open => {
                    if r.is_err() { membership_open = false; }
                }
                _ = self.table.changed.notified() => {}
                // An acknowledgement: the barrier may be complete.
                _ = self.drain_rx.changed(), if draining => {}
                cmd = self.switch_rx.recv(), if switch_open => match cmd {
                    Some(cmd) => self.switchover(cmd).await,
                    None => switch_open = false,
                },
                r = self.leader.changed(), if leader_open => {
                    if r.is_err() { leader_open = false; }
                }
                r = self.api_up.changed(), if api_up_open => {
                    if r.is_err() { api_up_open = false; }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {
                    // The wake may have been a penalty's end or a drain deadline: a retry that is
                    // not due yet stays.
                    if self.retry_at.is_some_and(|t| t <= Instant::now()) {
                        self.retry_at = None;
                    }
                }
                // Followers refresh the record; the leader re-reads it too, so a change made
                // outside this process (an operator, a competing decider) is seen within one tick.
                _ = follow_tick.tick() => {}
                _ = check_tick.tick(), if leading && checking => self.spawn_check(),
                Some(report) = self.check_rx.recv() => {
                    self.check_in_flight = false;
                    if self.leading() {
                        self.on_check(report).await;
                    }
                }
                _ = tokio::time::sleep_until(valid_until.unwrap_or(now).into()), if leading && valid_until.is_some() => {}
                Some(r) = next_measurement(&mut self.progress) => self.on_measurement(&r),
            }
        }
        self.progress = None;
        self.prober.stop_all();
    }

    /// A progress round's measurement: published with the next document if it is about the
    /// recorded writer (a round that started before a writer change is about the old one).
    fn on_measurement(&mut self, r: &Replication) {
        let current = self.recorded.as_ref();
        if self.leading()
            && current.is_some_and(|rec| rec.epoch == r.epoch && rec.writer().is_some())
        {
            self.publisher.set_replication(r.clone());
        }
    }

    fn leading(&self) -> bool {
        self.leader.borrow().leading_now()
    }

    async fn ensure_loaded(&mut self) -> bool {
        if !self.need_reload && self.recorded.is_some() {
            return true;
        }
        match self.store.load().await {
            Ok(r) => {
                if self.recorded.as_ref() != Some(&r) {
                    info!(epoch = r.epoch, holder = ?r.holder.as_ref().map(|h| &h.name), active = r.active, store = %self.store.describe(), "record loaded");
                }
                self.recorded = Some(r);
                self.need_reload = false;
                self.last_reload = Some(Instant::now());
                true
            }
            Err(e) => {
                match &e {
                    StoreError::Corrupt(_) => error!(error = %e, "cannot use the record"),
                    _ => warn!(error = %e, "cannot read the record yet"),
                }
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                self.recorded.is_some()
            }
        }
    }

    fn observe(&self) -> Vec<ObservedNode> {
        let m = self.membership.borrow().clone();
        let now = Instant::now();
        m.nodes
            .iter()
            .map(|n| {
                let key = node_key(n);
                ObservedNode {
                    name: n.name.clone(),
                    address: n.address.clone(),
                    uid: n.uid.clone(),
                    running: n.running,
                    health: if n.running {
                        self.table.get(&key)
                    } else {
                        Health::Unready
                    },
                    created: n.created,
                    progress: Progress::NotFetched,
                    penalized: self.penalties.get(&n.name).is_some_and(|t| *t > now),
                    promotion_refused: self.refused.get(&n.name).is_some_and(|r| match &r.span {
                        RefusalSpan::WhilePodExists(uid) => n.uid.as_ref() == Some(uid),
                        RefusalSpan::For(d) => r.since.elapsed() < *d,
                    }),
                    lost_role: self
                        .lost_role
                        .get(&n.name)
                        .is_some_and(|(uid, until)| *uid == n.uid && *until > now),
                }
            })
            .collect()
    }

    async fn decide_with_progress(
        &self,
        observed: &[ObservedNode],
        request: Request<'_>,
    ) -> Decision {
        let recorded = self.recorded.clone().unwrap_or_default();
        let mut observed = observed.to_vec();
        for _ in 0..2 {
            match decide(&recorded, &observed, &self.policy, request) {
                Decision::NeedProgress { nodes } => {
                    let Some(pcfg) = self.cfg.election.progress.clone() else {
                        return Decision::Wait {
                            why: "election.progress is not configured".into(),
                        };
                    };
                    let reads =
                        nodes.iter().filter_map(|name| {
                            let n = observed.iter().find(|o| &o.name == name)?;
                            let (client, addr, pcfg) =
                                (self.client.clone(), n.address.clone(), pcfg.clone());
                            let timeout = self.cfg.probe.timeout;
                            let name = name.clone();
                            Some(async move {
                                (name, fetch_progress(&client, &addr, &pcfg, timeout).await)
                            })
                        });
                    for (name, p) in join_all(reads).await {
                        debug!(node = %name, progress = ?p, "replication offset");
                        if let Some(o) = observed.iter_mut().find(|o| o.name == name) {
                            o.progress = p;
                        }
                    }
                }
                d => return d,
            }
        }
        Decision::Wait {
            why: "replication offsets could not be read".into(),
        }
    }

    async fn lead_round(&mut self) {
        let periodic = !self.need_reload
            && self
                .last_reload
                .is_some_and(|t| t.elapsed() >= self.cfg.ha.retry_period.mul_f64(0.9));
        if periodic {
            self.last_reload = Some(Instant::now());
            match self.store.load().await {
                Ok(r) => {
                    if self.recorded.as_ref() != Some(&r) {
                        warn!(epoch = r.epoch, holder = ?r.holder.as_ref().map(|h| &h.name), active = r.active, "the record was changed outside this process; following it");
                        self.recorded = Some(r);
                    }
                }
                // Keep deciding from the last record; a write will find out (conflict) anyway.
                Err(e) => debug!(error = %e, "periodic re-read of the record failed"),
            }
        }
        if !self.ensure_loaded().await {
            return;
        }
        let m = self.membership.borrow().clone();
        if !m.synced {
            // Before the first pod list every node looks gone: deciding now would fail over.
            return;
        }
        self.prober.sync(&m);
        self.forget_refusals(&m);
        let observed = self.observe();
        let decision = self
            .decide_with_progress(&observed, Request::Evaluate)
            .await;
        self.abandon_on_failover(&decision);
        match decision {
            Decision::Keep => {
                self.blocked = None;
                self.last_wait = None;
            }
            Decision::Wait { why } => {
                if self.last_wait.as_ref() != Some(&why) {
                    info!(why = %why, "no writer elected yet");
                    self.last_wait = Some(why);
                }
            }
            Decision::Elect {
                writer,
                epoch,
                reason,
            } => {
                if reason != Reason::Initial {
                    self.lost_at.get_or_insert_with(Instant::now);
                }
                let _ = self.change_writer(writer, epoch, reason).await;
            }
            Decision::Reinstate { reason } => {
                let _ = self.reinstate(reason).await;
            }
            Decision::Suspend { reason } => {
                let _ = self.suspend(reason).await;
            }
            Decision::NeedProgress { .. } | Decision::Rejected { .. } => {}
        }
        self.publish(true);
        self.ready.send_replace(true);
    }

    /// A draining switchover ends when the writer it drains away from is lost: the failover takes
    /// over (the proxies see the new writer, or none, instead of the draining state).
    fn abandon_on_failover(&mut self, decision: &Decision) {
        if self.switchovers.current().is_some() && abandons_drain(decision) {
            self.switchovers.abandon(
                "the writer failed during the drain",
                SwitchoverOutcome::Failed(format!(
                    "the writer failed during the drain; the switchover was abandoned and the \
                     failover decides ({decision:?})"
                )),
            );
        }
    }

    async fn follow_round(&mut self) {
        let due = self
            .last_reload
            .is_none_or(|t| t.elapsed() >= self.cfg.ha.retry_period.mul_f64(0.9));
        if due || self.recorded.is_none() {
            self.last_reload = Some(Instant::now());
            match self.store.load().await {
                Ok(r) => {
                    if self.recorded.as_ref() != Some(&r) {
                        info!(epoch = r.epoch, writer = ?r.writer().map(|h| &h.name), "following the recorded writer");
                    }
                    self.recorded = Some(r);
                }
                Err(e) => {
                    debug!(error = %e, "follower: cannot re-read the record; serving the last one")
                }
            }
        }
        self.publish(false);
        let knows_leader = self.leader.borrow().leader.is_some();
        self.ready
            .send_replace(self.recorded.is_some() && knows_leader);
    }

    /// Logs and counts a due change that cannot be carried out, once per episode.
    fn block(&mut self, kind: &str, why: String) -> String {
        if self.blocked.as_deref() != Some(kind) {
            warn!(reason = kind, why = %why, "writer change due but not carried out");
            self.metrics.count_blocked(kind);
            self.blocked = Some(kind.to_string());
        }
        why
    }

    fn api_reachable(&self) -> bool {
        *self.api_up.borrow()
    }

    /// The steps of a writer change, as this engine carries them out.
    fn steps<'a>(&'a mut self, fencer: Option<&'a dyn Fence>) -> Steps<'a> {
        Steps {
            leader: &self.leader,
            store: &*self.store,
            fencer,
            promoter: &self.promoter,
            publisher: &mut self.publisher,
        }
    }

    /// Fencing for a change to `writer`, when `fencing.delete_old_writer_pod` is on (Kubernetes).
    fn pod_fencer(&self, writer: &Holder) -> Option<PodFencer> {
        if !self.cfg.fencing.delete_old_writer_pod {
            return None;
        }
        Some(PodFencer {
            kube: self.kube.clone()?,
            timeout: self.cfg.fencing.timeout,
            for_writer: writer.name.clone(),
        })
    }

    /// A record written (and published): the one to decide from.
    fn written(&mut self, rec: Recorded) {
        self.metrics.record_writes.with_label_values(&["ok"]).inc();
        self.recorded = Some(rec);
        self.blocked = None;
    }

    /// Turns a writer change that stopped into its retry, log and metrics; returns the reason
    /// for the caller (a switchover's answer). A failed promotion means something else for each
    /// change, so each change handles it first.
    fn failed(
        &mut self,
        f: Failure,
        old: &Recorded,
        to: Option<&Holder>,
        reason: Reason,
    ) -> String {
        match f {
            Failure::NotLeader => "not the leader".into(),
            Failure::RecordChanged(fresh) => {
                info!(
                    epoch = fresh.epoch,
                    "the record changed underneath; deciding again"
                );
                self.recorded = Some(fresh);
                self.retry_at = Some(Instant::now());
                "the record changed; decided again".into()
            }
            Failure::RecordUnreadable(e) => {
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                let kind = if self.kube.is_some() {
                    "api_unreachable"
                } else {
                    "record_failed"
                };
                self.block(
                    kind,
                    format!(
                        "cannot read the record ({e}): keeping {} as writer instead of electing {} ({reason})",
                        old.writer().map(|h| h.name.as_str()).unwrap_or("no writer"),
                        to.map(|h| h.name.as_str()).unwrap_or("no writer")
                    ),
                )
            }
            Failure::Fencing(e) => {
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                self.block("fencing_failed", e)
            }
            Failure::Promotion(e) => format!("promotion failed: {e}"),
            Failure::LostLeadership => "lost leadership during the promotion".into(),
            Failure::Write(StoreError::Conflict(e)) => {
                self.metrics
                    .record_writes
                    .with_label_values(&["conflict"])
                    .inc();
                info!(error = %e, "record write conflict; re-reading and deciding again");
                self.need_reload = true;
                self.retry_at = Some(Instant::now());
                e
            }
            Failure::Write(e) => {
                self.metrics
                    .record_writes
                    .with_label_values(&["error"])
                    .inc();
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                self.block("record_failed", e.to_string())
            }
        }
    }

    async fn change_writer(
        &mut self,
        writer: Holder,
        epoch: u64,
        reason: Reason,
    ) -> Result<(), String> {
        let old = self.recorded.clone().unwrap_or_default();
        let pod = pod_to_fence(&old, &writer, &self.membership.borrow());
        let fencer = self.pod_fencer(&writer);
        let outage = self.outage();
        let record = || {
            let mut new = Recorded {
                epoch,
                holder: Some(writer.clone()),
                active: true,
                history: old.history.clone(),
            };
            let from = old.writer().map(|h| h.name.clone());
            push_history(
                &mut new.history,
                history_entry(&outage, from, &writer, epoch, reason),
            );
            new
        };
        let fence = fencer.as_ref().map(|f| f as &dyn Fence);
        let result =
            writer_change::elect(&mut self.steps(fence), &old, &writer, pod.as_ref(), record).await;
        match result {
            Ok(new) => {
                self.written(new);
                self.lost_at = None;
            }
            Err(Failure::Promotion(e)) => return Err(self.promotion_failed(&writer, e)),
            Err(f) => return Err(self.failed(f, &old, Some(&writer), reason)),
        }
        let previous = old
            .holder
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default();
        info!(writer = %writer.name, address = %writer.address, epoch, reason = %reason, previous = %previous, "elected writer");
        self.metrics.count_failover(reason.as_str());
        if let Some(k) = &self.kube {
            k.emit_event(
                &writer,
                "Normal",
                "WriterElected",
                format!(
                    "elected {} as writer, epoch {epoch}, reason: {reason}",
                    writer.name
                ),
            );
        }
        Ok(())
    }

    /// A new writer's promotion failed: a node that refused it is out of candidacy, any other is
    /// penalised; the next decision tries another candidate at once.
    fn promotion_failed(&mut self, writer: &Holder, e: PromotionError) -> String {
        self.retry_at = Some(Instant::now());
        if promotion_refused(e.step, e.status) {
            self.refuse(writer, &e.to_string());
            return format!(
                "{} refused promotion (a backup or dev node): {e}",
                writer.name
            );
        }
        let until = Instant::now() + penalty(&self.cfg);
        self.penalties.insert(writer.name.clone(), until);
        self.metrics.count_blocked("promotion_failed");
        warn!(node = %writer.name, error = %e, "promotion failed; trying another candidate");
        if let Some(k) = &self.kube {
            k.emit_event(
                writer,
                "Warning",
                "PromotionFailed",
                format!("promotion of {} failed: {e}", writer.name),
            );
        }
        format!("promotion of {} failed: {e}", writer.name)
    }

    /// Keeps a node that refused promotion out of candidacy; logged and counted once per refusal.
    fn refuse(&mut self, node: &Holder, why: &str) {
        let span = refusal_span(node.uid.as_deref());
        let until = match &span {
            RefusalSpan::WhilePodExists(_) => "while this pod exists".to_string(),
            RefusalSpan::For(d) => format!("for {}", humantime::format_duration(*d)),
        };
        warn!(node = %node.name, error = %why, "node refused promotion (a backup or dev node of the node library): not a candidate {until}; trying another candidate");
        self.metrics
            .candidates_excluded
            .with_label_values(&["promotion_refused"])
            .inc();
        if let Some(k) = &self.kube {
            k.emit_event(
                node,
                "Warning",
                "PromotionRefused",
                format!(
                    "{} refused promotion (a backup or dev node); not a candidate {until}",
                    node.name
                ),
            );
        }
        self.refused.insert(
            node.name.clone(),
            Refusal {
                span,
                since: Instant::now(),
            },
        );
    }

    /// Ends refusals whose pod is gone (a new pod under the name is a new node) or whose time
    /// ran out, and role losses that ran out.
    fn forget_refusals(&mut self, m: &Membership) {
        self.refused.retain(|name, r| match &r.span {
            RefusalSpan::WhilePodExists(uid) => m
                .get(name)
                .is_some_and(|n| n.uid.as_deref() == Some(uid.as_str())),
            RefusalSpan::For(d) => r.since.elapsed() < *d,
        });
        let now = Instant::now();
        self.lost_role.retain(|_, (_, until)| *until > now);
    }

    /// Asks the published writer `promotion.check`, off the loop; the answer comes back as a
    /// [`CheckReport`].
    fn spawn_check(&mut self) {
        if self.check_in_flight || self.switchovers.current().is_some() {
            return;
        }
        let Some(rec) = self.recorded.clone() else {
            return;
        };
        let Some(holder) = rec.writer().cloned() else {
            return;
        };
        let running = self
            .membership
            .borrow()
            .get(&holder.name)
            .is_some_and(|n| n.running && (holder.uid.is_none() || n.uid == holder.uid));
        if !running {
            return;
        }
        self.check_in_flight = true;
        let promoter = self.promoter.clone();
        let tx = self.check_tx.clone();
        let timeout = self.cfg.probe.timeout;
        tokio::spawn(async move {
            if let Some(result) = promoter.check(&holder.address, timeout).await {
                let _ = tx
                    .send(CheckReport {
                        holder,
                        epoch: rec.epoch,
                        result,
                    })
                    .await;
            }
        });
    }

    async fn on_check(&mut self, report: CheckReport) {
        let current = self.recorded.clone().unwrap_or_default();
        if current.epoch != report.epoch || current.writer() != Some(&report.holder) {
            // The writer changed while the check was out: it is about the old one.
            return;
        }
        self.metrics
            .writer_checks
            .with_label_values(&[report.result.label()])
            .inc();
        match report.result {
            CheckResult::Ok => {
                if self.check_failing {
                    info!(writer = %report.holder.name, "writer check answered again");
                    self.check_failing = false;
                }
            }
            CheckResult::Error(e) => {
                if !self.check_failing {
                    warn!(writer = %report.holder.name, error = %e, "writer check got no answer (the readiness probes decide whether the writer is lost)");
                    self.check_failing = true;
                } else {
                    debug!(writer = %report.holder.name, error = %e, "writer check got no answer");
                }
            }
            CheckResult::NotDistributor(answer) => {
                self.check_failing = false;
                self.repromote(current, report.holder, answer).await;
            }
        }
    }

    /// The published writer says it is not the writer: promote it again at its own epoch, or,
    /// if that fails, mark it lost so the next decision fails over (next candidate, epoch + 1).
    async fn repromote(&mut self, old: Recorded, holder: Holder, answer: String) {
        warn!(writer = %holder.name, epoch = old.epoch, answer = %answer, "the writer says it is not the writer (restarted?): promoting it again at its epoch");
        match writer_change::repromote(&self.steps(None), &old, &holder).await {
            Ok(()) => {
                self.metrics.repromotions.with_label_values(&["ok"]).inc();
                info!(writer = %holder.name, epoch = old.epoch, "writer promoted again at its epoch");
            }
            Err(Failure::Promotion(e)) => {
                self.metrics
                    .repromotions
                    .with_label_values(&["failed"])
                    .inc();
                warn!(writer = %holder.name, epoch = old.epoch, error = %e, "re-promotion failed: failing over");
                let until = Instant::now() + penalty(&self.cfg);
                self.lost_role
                    .insert(holder.name.clone(), (holder.uid.clone(), until));
                self.penalties.insert(holder.name.clone(), until);
                if let Some(k) = &self.kube {
                    k.emit_event(
                        &holder,
                        "Warning",
                        "PromotionFailed",
                        format!("re-promotion of {} failed: {e}", holder.name),
                    );
                }
                self.retry_at = Some(Instant::now());
            }
            Err(Failure::NotLeader) => {}
            Err(f) => {
                self.failed(f, &old, Some(&holder), Reason::WriterLostRole);
            }
        }
    }

    async fn reinstate(&mut self, reason: Reason) -> Result<(), String> {
        let old = self.recorded.clone().unwrap_or_default();
        let Some(holder) = old.holder.clone() else {
            return Err("no holder to reinstate".into());
        };
        let outage = self.outage();
        let record = || {
            let mut back = Recorded {
                active: true,
                ..old.clone()
            };
            push_history(
                &mut back.history,
                history_entry(
                    &outage,
                    Some(holder.name.clone()),
                    &holder,
                    old.epoch,
                    reason,
                ),
            );
            back
        };
        match writer_change::reinstate(&mut self.steps(None), &old, &holder, record).await {
            Ok(back) => {
                self.written(back);
                self.lost_at = None;
            }
            Err(Failure::Promotion(e)) => {
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                return Err(self.block(
                    "promotion_failed",
                    format!("re-promotion of {} failed: {e}", holder.name),
                ));
            }
            Err(f) => return Err(self.failed(f, &old, Some(&holder), reason)),
        }
        info!(writer = %holder.name, epoch = old.epoch, reason = %reason, "writer back: reinstated at its epoch");
        if let Some(k) = &self.kube {
            k.emit_event(
                &holder,
                "Normal",
                "WriterReinstated",
                format!(
                    "reinstated {} as writer, epoch {}, reason: {reason}",
                    holder.name, old.epoch
                ),
            );
        }
        Ok(())
    }

    async fn suspend(&mut self, reason: Reason) -> Result<(), String> {
        self.lost_at.get_or_insert_with(Instant::now);
        let old = self.recorded.clone().unwrap_or_default();
        let inactive = Recorded {
            active: false,
            ..old.clone()
        };
        // A failed write keeps the last recorded writer published (e.g. the API is down).
        match writer_change::suspend(&mut self.steps(None), inactive).await {
            Ok(rec) => self.written(rec),
            Err(f) => return Err(self.failed(f, &old, old.holder.as_ref(), reason)),
        }
        warn!(
            holder = ?old.holder.as_ref().map(|h| &h.name),
            epoch = old.epoch,
            reason = %reason,
            "writer lost and no ready candidate: publishing no writer until one is ready"
        );
        Ok(())
    }

    /// Publishes the record with this replica's view of the nodes. The leader also points the
    /// writer watchdog at the writer and labels the pods: both follow what was published.
    fn publish(&mut self, leading: bool) {
        let Some(rec) = self.recorded.clone() else {
            return;
        };
        let m = self
            .publisher
            .publish(&rec, leading, self.switchovers.document());
        if leading {
            let writer_key = rec.writer().and_then(|h| {
                m.get(&h.name)
                    .filter(|n| n.running && (h.uid.is_none() || n.uid == h.uid))
                    .map(node_key)
            });
            self.prober.watch(writer_key.as_ref());
            if let Some(k) = &self.kube {
                if self.api_reachable() {
                    k.reconcile_labels(&m, rec.writer());
                }
            }
        }
    }

    /// Since when the cluster has no writer, as far as this process saw it. During a switchover
    /// the writes are held from the start of the drain, so that is when it stopped having one.
    fn outage(&self) -> Outage {
        match self.switchovers.current() {
            Some(d) => Outage {
                since: Some(d.started()),
                drained_in: d.drained_in(),
            },
            None => Outage {
                since: self.lost_at,
                drained_in: None,
            },
        }
    }

    fn reply(&self, to: oneshot::Sender<SwitchoverOutcome>, outcome: SwitchoverOutcome) {
        reply(&self.metrics, to, outcome);
    }

    async fn switchover(&mut self, cmd: SwitchoverCmd) {
        if let Some(d) = self.switchovers.current() {
            let running = d.id;
            return self.reply(cmd.reply, SwitchoverOutcome::Busy { running });
        }
        let leader = self.leader.borrow().clone();
        if !leader.leading_now() {
            return self.reply(cmd.reply, SwitchoverOutcome::NotLeader(leader.leader));
        }
        if !self.ensure_loaded().await {
            return self.reply(
                cmd.reply,
                SwitchoverOutcome::Failed("the record cannot be read".into()),
            );
        }
        let m = self.membership.borrow().clone();
        if !m.synced {
            return self.reply(
                cmd.reply,
                SwitchoverOutcome::Failed("the node list is not known yet".into()),
            );
        }
        self.prober.sync(&m);
        let observed = self.observe();
        let to = cmd.to.as_deref();
        let decision = self
            .decide_with_progress(&observed, Request::Switchover { to })
            .await;
        info!(to = ?to, force = cmd.force, decision = ?decision, "switchover requested");
        let published = self
            .recorded
            .as_ref()
            .and_then(|r| r.writer())
            .map(|h| h.name.clone());
        let result = match plan_request(decision, published) {
            RequestPlan::Drain { from, target } => {
                self.switchovers.begin(from, target, cmd.force, cmd.reply);
                // The old writer with `switchover: draining`.
                return self.publish(true);
            }
            RequestPlan::ChangeNow {
                writer,
                epoch,
                reason,
            } => self
                .change_writer(writer, epoch, reason)
                .await
                .map(|_| true),
            RequestPlan::Reinstate { reason } => self.reinstate(reason).await.map(|_| true),
            RequestPlan::Unchanged => Ok(false),
            RequestPlan::Rejected(why) => {
                return self.reply(cmd.reply, SwitchoverOutcome::Rejected(why))
            }
            RequestPlan::Impossible(why) => Err(why),
        };
        self.publish(true);
        let current = self.publisher.hub().current();
        let outcome = match result {
            Ok(true) => SwitchoverOutcome::Switched(current),
            Ok(false) => SwitchoverOutcome::Unchanged(current),
            Err(e) => SwitchoverOutcome::Failed(e),
        };
        self.reply(cmd.reply, outcome);
    }

    /// Carries out what the barrier of a draining switchover says: promote, abort, or wait.
    async fn advance_switchover(&mut self) {
        match self.switchovers.poll(Instant::now()) {
            Step::Idle | Step::Wait => {}
            Step::Abort { id, pending } => {
                warn!(
                    switchover = id,
                    pending = ?pending,
                    timeout = ?self.cfg.switchover.drain_timeout,
                    "switchover aborted: these proxies did not acknowledge the drain in time; the old writer stays"
                );
                if let Some(to) = self.switchovers.end() {
                    self.publish(true);
                    self.reply(to, SwitchoverOutcome::DrainTimeout { pending });
                }
            }
            Step::Promote {
                id,
                target,
                forced_past,
            } => {
                if forced_past.is_empty() {
                    let after = self.switchovers.current().map(|d| d.started().elapsed());
                    info!(switchover = id, after = ?after.unwrap_or_default(), "switchover: every proxy drained; promoting {}", target.name);
                } else {
                    warn!(switchover = id, pending = ?forced_past, "switchover forced past the drain timeout; promoting {}", target.name);
                }
                let result = self.promote_after_drain(&target).await;
                if let Some(to) = self.switchovers.end() {
                    self.publish(true);
                    let current = self.publisher.hub().current();
                    let outcome = match result {
                        SwitchResult::Switched => SwitchoverOutcome::Switched(current),
                        SwitchResult::Unchanged => SwitchoverOutcome::Unchanged(current),
                        SwitchResult::Other(o) => o,
                    };
                    if let SwitchoverOutcome::Failed(e) | SwitchoverOutcome::Rejected(e) = &outcome
                    {
                        warn!(switchover = id, error = %e, "switchover failed after the drain; the old writer stays");
                    }
                    self.reply(to, outcome);
                }
            }
        }
    }

    /// Steps 1-6 for the target chosen when the switchover began. The drain took a while, so the
    /// decision is made again (the target may have become unready meanwhile).
    async fn promote_after_drain(&mut self, target: &Holder) -> SwitchResult {
        let leader = self.leader.borrow().clone();
        if !leader.leading_now() {
            return SwitchResult::Other(SwitchoverOutcome::NotLeader(leader.leader));
        }
        if !self.ensure_loaded().await {
            return SwitchResult::Other(SwitchoverOutcome::Failed(
                "the record cannot be read".into(),
            ));
        }
        let m = self.membership.borrow().clone();
        self.prober.sync(&m);
        let observed = self.observe();
        let decision = self
            .decide_with_progress(
                &observed,
                Request::Switchover {
                    to: Some(&target.name),
                },
            )
            .await;
        match plan_after_drain(decision) {
            AfterDrain::Change {
                writer,
                epoch,
                reason,
            } => match self.change_writer(writer, epoch, reason).await {
                Ok(()) => SwitchResult::Switched,
                Err(e) => SwitchResult::Other(SwitchoverOutcome::Failed(e)),
            },
            AfterDrain::Unchanged => SwitchResult::Unchanged,
            AfterDrain::Rejected(why) => SwitchResult::Other(SwitchoverOutcome::Rejected(why)),
            AfterDrain::Impossible(why) => SwitchResult::Other(SwitchoverOutcome::Failed(why)),
        }
    }
}
