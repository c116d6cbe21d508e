//! The decision loop: observe -> [`decide`] -> act (fence, promote, record) -> publish.
//!
//! One task owns the record and makes every change, so decisions are serialised without locks.
//! It wakes on whatever can change a decision: the pod list, a probe verdict, a switchover
//! request, leadership, the API's reachability, or a retry timer. The order of the actions for a
//! new writer is the safety argument of the whole service:
//!
//! 1. refuse while the Kubernetes API is unreachable (no failover on API loss) or while not leader;
//! 2. fence: with `fencing.delete_old_writer_pod`, delete the old writer pod and wait until it is
//!    gone (it can never be demoted, so it must not live on next to the new writer);
//! 3. re-read the record: a change by someone else (another leader) means decide again;
//! 4. promote the new writer (its promotion calls must succeed);
//! 5. record it (optimistic write: a conflict means decide again), then
//! 6. publish it (the topology and its revision), then the Event and the pod labels.
//!
//! HA followers run none of this: they publish the recorded writer (re-read every
//! `ha.retry_period`) with their own pod watch's readiness.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::config::ElectionConfig;
use crate::decision::{
    decide, Decision, ElectionPolicy, Health, Holder, ObservedNode, Progress, Reason, Recorded,
    Request,
};
use crate::discovery::{Membership, MembershipRx};
use crate::http::HttpClient;
use crate::kube_actions::KubeActions;
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::probe::{HealthTable, NodeKey, Prober};
use crate::promotion::{fetch_progress, Promoter};
use crate::publish::{build_topology, NodeView, TopologyHub};
use crate::store::{RecordStore, StoreError};
use crate::topology::Topology;

pub struct SwitchoverCmd {
    pub to: Option<String>,
    pub reply: oneshot::Sender<SwitchoverOutcome>,
}

#[derive(Debug)]
pub enum SwitchoverOutcome {
    Switched(Arc<Topology>),
    /// The target already is the writer.
    Unchanged(Arc<Topology>),
    /// Not a ready candidate (-> 409).
    Rejected(String),
    /// This replica does not decide; the leader's identity if known (-> 503).
    NotLeader(Option<String>),
    /// Could not be carried out now (API down, promotion or record failed) (-> 503).
    Failed(String),
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
    hub: Arc<TopologyHub>,
    metrics: Arc<Metrics>,
    switch_rx: mpsc::Receiver<SwitchoverCmd>,
    leader: watch::Receiver<LeaderState>,
    api_up: watch::Receiver<bool>,
    kube: Option<Arc<KubeActions>>,
    ready: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    penalties: HashMap<String, Instant>,
    retry_at: Option<Instant>,
    /// The reason the last due change was not carried out (logged once per episode).
    blocked: Option<String>,
    last_wait: Option<String>,
    ready_gauges: HashSet<String>,
}

/// How long a node whose promotion failed is skipped by automatic elections.
fn penalty(cfg: &ElectionConfig) -> Duration {
    (cfg.probe.interval * 10).max(Duration::from_secs(10))
}

impl Engine {
    pub fn new(d: EngineDeps) -> Self {
        let table = Arc::new(HealthTable::default());
        let prober = Prober::new(
            d.cfg.probe.clone(),
            d.client.clone(),
            table.clone(),
            d.metrics.clone(),
        );
        let promoter = Promoter::new(d.cfg.promotion.clone(), d.client.clone());
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
            hub: d.hub,
            metrics: d.metrics,
            switch_rx: d.switch_rx,
            leader: d.leader,
            api_up: d.api_up,
            kube: d.kube,
            ready: d.ready,
            stop: d.stop,
            penalties: HashMap::new(),
            retry_at: None,
            blocked: None,
            last_wait: None,
            ready_gauges: HashSet::new(),
        }
    }

    pub async fn run(mut self) {
        let mut follow_tick = tokio::time::interval(self.cfg.ha.retry_period);
        follow_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                } else {
                    info!("following: serving the recorded writer, not probing");
                    self.prober.stop_all();
                    self.ready.send_replace(false);
                }
                was_leading = leading;
            }
            if leading {
                self.lead_round().await;
            } else {
                self.follow_round().await;
            }

            let now = Instant::now();
            let next_penalty = self.penalties.values().filter(|t| **t > now).min().copied();
            let wake = match (self.retry_at, next_penalty) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let valid_until = self.leader.borrow().valid_until;
            tokio::select! {
                _ = self.stop.changed() => break,
                r = self.membership.changed(), if membership_open => {
                    if r.is_err() { membership_open = false; }
                }
                _ = self.table.changed.notified() => {}
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
                    self.retry_at = None;
                }
                // Followers refresh the record; the leader re-reads it too, so a change made
                // outside this process (an operator, a competing decider) is seen within one tick.
                _ = follow_tick.tick() => {}
                _ = tokio::time::sleep_until(valid_until.unwrap_or(now).into()), if leading && valid_until.is_some() => {}
            }
        }
        self.prober.stop_all();
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
                let key = NodeKey {
                    name: n.name.clone(),
                    address: n.address.clone(),
                    uid: n.uid.clone(),
                };
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
        let observed = self.observe();
        let decision = self
            .decide_with_progress(&observed, Request::Evaluate)
            .await;
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

    /// Re-reads the record; Err (and a retry) if it cannot be read or changed since `old`.
    async fn check_record(
        &mut self,
        old: &Recorded,
        writer: &Holder,
        reason: Reason,
    ) -> Result<(), String> {
        match self.store.load().await {
            Ok(fresh) if &fresh == old => Ok(()),
            Ok(fresh) => {
                info!(
                    epoch = fresh.epoch,
                    "the record changed underneath; deciding again"
                );
                self.recorded = Some(fresh);
                self.retry_at = Some(Instant::now());
                Err("the record changed; decided again".into())
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                let kind = if self.kube.is_some() {
                    "api_unreachable"
                } else {
                    "record_failed"
                };
                Err(self.block(
                    kind,
                    format!(
                        "cannot read the record ({e}): keeping {} as writer instead of electing {} ({reason})",
                        old.writer().map(|h| h.name.as_str()).unwrap_or("no writer"),
                        writer.name
                    ),
                ))
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
        if !self.leading() {
            return Err("not the leader".into());
        }
        // The record must be writable before anything irreversible happens: this read proves the
        // API answers (Kubernetes mode) and catches a change made by someone else.
        self.check_record(&old, &writer, reason).await?;
        if self.cfg.fencing.delete_old_writer_pod {
            if let (Some(k), Some(h)) = (self.kube.clone(), old.holder.as_ref()) {
                if let Some(uid) = &h.uid {
                    let alive = self
                        .membership
                        .borrow()
                        .get(&h.name)
                        .is_some_and(|n| n.uid.as_ref() == Some(uid));
                    if alive && writer.uid.as_ref() != Some(uid) {
                        info!(pod = %h.name, "fencing: deleting the old writer pod before promoting {}", writer.name);
                        if let Err(e) = k
                            .delete_pod_and_confirm(&h.name, uid, self.cfg.fencing.timeout)
                            .await
                        {
                            self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                            return Err(self.block("fencing_failed", e));
                        }
                        // Fencing took a while: read again right before promoting.
                        self.check_record(&old, &writer, reason).await?;
                    }
                }
            }
        }
        if let Err(e) = self.promoter.promote(&writer.address).await {
            let until = Instant::now() + penalty(&self.cfg);
            self.penalties.insert(writer.name.clone(), until);
            self.retry_at = Some(Instant::now());
            self.metrics.count_blocked("promotion_failed");
            warn!(node = %writer.name, error = %e, "promotion failed; trying another candidate");
            if let Some(k) = &self.kube {
                k.emit_event(
                    &writer,
                    "Warning",
                    "PromotionFailed",
                    format!("promotion of {} failed: {e}", writer.name),
                );
            }
            return Err(format!("promotion of {} failed: {e}", writer.name));
        }
        if !self.leading() {
            return Err("lost leadership during the promotion".into());
        }
        let new = Recorded {
            epoch,
            holder: Some(writer.clone()),
            active: true,
        };
        self.save(new).await?;
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

    async fn save(&mut self, new: Recorded) -> Result<(), String> {
        match self.store.save(&new).await {
            Ok(()) => {
                self.metrics.record_writes.with_label_values(&["ok"]).inc();
                self.recorded = Some(new);
                self.blocked = None;
                Ok(())
            }
            Err(StoreError::Conflict(e)) => {
                self.metrics
                    .record_writes
                    .with_label_values(&["conflict"])
                    .inc();
                info!(error = %e, "record write conflict; re-reading and deciding again");
                self.need_reload = true;
                self.retry_at = Some(Instant::now());
                Err(e)
            }
            Err(e) => {
                self.metrics
                    .record_writes
                    .with_label_values(&["error"])
                    .inc();
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                Err(self.block("record_failed", e.to_string()))
            }
        }
    }

    async fn reinstate(&mut self, reason: Reason) -> Result<(), String> {
        let old = self.recorded.clone().unwrap_or_default();
        let Some(holder) = old.holder.clone() else {
            return Err("no holder to reinstate".into());
        };
        self.check_record(&old, &holder, reason).await?;
        if let Err(e) = self.promoter.promote(&holder.address).await {
            self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            return Err(self.block(
                "promotion_failed",
                format!("re-promotion of {} failed: {e}", holder.name),
            ));
        }
        if !self.leading() {
            return Err("lost leadership during the promotion".into());
        }
        self.save(Recorded {
            active: true,
            ..old.clone()
        })
        .await?;
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
        let old = self.recorded.clone().unwrap_or_default();
        // A failed write keeps the last recorded writer published (e.g. the API is down).
        self.save(Recorded {
            active: false,
            ..old.clone()
        })
        .await?;
        warn!(
            holder = ?old.holder.as_ref().map(|h| &h.name),
            epoch = old.epoch,
            reason = %reason,
            "writer lost and no ready candidate: publishing no writer until one is ready"
        );
        Ok(())
    }

    /// Publishes the record with this replica's view of the nodes.
    fn publish(&mut self, leading: bool) {
        let Some(rec) = self.recorded.clone() else {
            return;
        };
        let m: Arc<Membership> = self.membership.borrow().clone();
        let views: Vec<NodeView> = m
            .nodes
            .iter()
            .map(|n| {
                let ready = n.running
                    && if leading {
                        self.table.get(&NodeKey {
                            name: n.name.clone(),
                            address: n.address.clone(),
                            uid: n.uid.clone(),
                        }) == Health::Ready
                    } else {
                        n.pod_ready.unwrap_or(false)
                    };
                NodeView {
                    name: n.name.clone(),
                    address: n.address.clone(),
                    uid: n.uid.clone(),
                    ready,
                }
            })
            .collect();
        let doc = build_topology(&rec, &views);
        if let Some(t) = self.hub.publish(doc) {
            debug!(revision = t.revision, epoch = t.epoch, writer = ?t.writer.as_ref().map(|w| &w.name), "published topology");
            self.metrics.topology_revision.set(t.revision as i64);
        }
        self.metrics.epoch.set(rec.epoch as i64);
        self.metrics
            .has_writer
            .set(i64::from(rec.writer().is_some()));
        let mut present = HashSet::new();
        for v in &views {
            self.metrics
                .node_ready
                .with_label_values(&[v.name.as_str()])
                .set(i64::from(v.ready));
            present.insert(v.name.clone());
        }
        for gone in self.ready_gauges.difference(&present) {
            let _ = self
                .metrics
                .node_ready
                .remove_label_values(&[gone.as_str()]);
        }
        self.ready_gauges = present;

        if leading {
            let writer_key = rec.writer().and_then(|h| {
                m.get(&h.name)
                    .filter(|n| n.running && (h.uid.is_none() || n.uid == h.uid))
                    .map(|n| NodeKey {
                        name: n.name.clone(),
                        address: n.address.clone(),
                        uid: n.uid.clone(),
                    })
            });
            self.prober.watch(writer_key.as_ref());
            if let Some(k) = &self.kube {
                if self.api_reachable() {
                    k.reconcile_labels(&m, rec.writer());
                }
            }
        }
    }

    async fn switchover(&mut self, cmd: SwitchoverCmd) {
        let outcome = self.switchover_outcome(cmd.to.as_deref()).await;
        let label = match &outcome {
            SwitchoverOutcome::Switched(_) => "switched",
            SwitchoverOutcome::Unchanged(_) => "unchanged",
            SwitchoverOutcome::Rejected(_) => "rejected",
            SwitchoverOutcome::NotLeader(_) => "not_leader",
            SwitchoverOutcome::Failed(_) => "failed",
        };
        self.metrics.switchovers.with_label_values(&[label]).inc();
        let _ = cmd.reply.send(outcome);
    }

    async fn switchover_outcome(&mut self, to: Option<&str>) -> SwitchoverOutcome {
        let leader = self.leader.borrow().clone();
        if !leader.leading_now() {
            return SwitchoverOutcome::NotLeader(leader.leader);
        }
        if !self.ensure_loaded().await {
            return SwitchoverOutcome::Failed("the record cannot be read".into());
        }
        let m = self.membership.borrow().clone();
        if !m.synced {
            return SwitchoverOutcome::Failed("the node list is not known yet".into());
        }
        self.prober.sync(&m);
        let observed = self.observe();
        let decision = self
            .decide_with_progress(&observed, Request::Switchover { to })
            .await;
        info!(to = ?to, decision = ?decision, "switchover requested");
        let result = match decision {
            Decision::Elect {
                writer,
                epoch,
                reason,
            } => self
                .change_writer(writer, epoch, reason)
                .await
                .map(|_| true),
            Decision::Reinstate { reason } => self.reinstate(reason).await.map(|_| true),
            Decision::Keep => Ok(false),
            Decision::Rejected { why } => return SwitchoverOutcome::Rejected(why),
            other => Err(format!("cannot switch over now: {other:?}")),
        };
        self.publish(true);
        match result {
            Ok(true) => SwitchoverOutcome::Switched(self.hub.current()),
            Ok(false) => SwitchoverOutcome::Unchanged(self.hub.current()),
            Err(e) => SwitchoverOutcome::Failed(e),
        }
    }
}
