//! A planned switchover as a state machine: idle -> draining -> idle.
//!
//! A request whose decision elects another node while a writer is published starts a drain
//! ([`Switchovers::begin`]): the proxies of the drain set hold new writes and acknowledge once
//! their writes to the old writer are done (the barrier in [`crate::drain`]). Each round the
//! engine asks [`Switchovers::poll`] what the barrier says; the drain ends with the promotion of
//! the target, an abort on the timeout, or is abandoned (the writer failed, leadership was lost).
//! Whatever ends it answers the request exactly once.
//!
//! The plans ([`plan_request`], [`plan_after_drain`], [`abandons_drain`]) are plain functions of
//! the decision; the engine carries them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::decision::{Decision, Holder, Reason};
use crate::drain::{drain_verdict, ClientRegistry, DrainBarrier, DrainVerdict};
use crate::metrics::Metrics;
use crate::topology::{Switchover, Topology};

pub struct SwitchoverCmd {
    pub to: Option<String>,
    /// Promote even when some proxies did not acknowledge within `switchover.drain_timeout`.
    pub force: bool,
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
    /// Some proxies did not acknowledge the drain in time: aborted, the old writer stays (-> 504).
    DrainTimeout {
        pending: Vec<String>,
    },
    /// Another switchover is draining (-> 409).
    Busy {
        running: u64,
    },
}

impl SwitchoverOutcome {
    fn label(&self) -> &'static str {
        match self {
            SwitchoverOutcome::Switched(_) => "switched",
            SwitchoverOutcome::Unchanged(_) => "unchanged",
            SwitchoverOutcome::Rejected(_) => "rejected",
            SwitchoverOutcome::NotLeader(_) => "not_leader",
            SwitchoverOutcome::Failed(_) => "failed",
            SwitchoverOutcome::DrainTimeout { .. } => "drain_timeout",
            SwitchoverOutcome::Busy { .. } => "busy",
        }
    }
}

/// Answers a switchover request and counts how it ended.
pub fn reply(
    metrics: &Metrics,
    to: oneshot::Sender<SwitchoverOutcome>,
    outcome: SwitchoverOutcome,
) {
    metrics
        .switchovers
        .with_label_values(&[outcome.label()])
        .inc();
    // The caller may have hung up: the switchover went on regardless.
    let _ = to.send(outcome);
}

/// What a switchover request does, by the decision made for it.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPlan {
    /// A writer is published: drain the proxies away from `from` before promoting `target`.
    Drain { from: String, target: Holder },
    /// No writer is published, so no proxy has a write in flight to one: change at once.
    ChangeNow {
        writer: Holder,
        epoch: u64,
        reason: Reason,
    },
    /// The suspended holder is the target: reinstate it at its epoch.
    Reinstate { reason: Reason },
    /// The target already is the writer.
    Unchanged,
    /// Not a ready candidate: answered at once.
    Rejected(String),
    /// The decision allows no change now (e.g. still waiting for verdicts).
    Impossible(String),
}

pub fn plan_request(decision: Decision, published_writer: Option<String>) -> RequestPlan {
    match decision {
        Decision::Elect {
            writer,
            epoch,
            reason,
        } => match published_writer {
            Some(from) => RequestPlan::Drain {
                from,
                target: writer,
            },
            None => RequestPlan::ChangeNow {
                writer,
                epoch,
                reason,
            },
        },
        Decision::Reinstate { reason } => RequestPlan::Reinstate { reason },
        Decision::Keep => RequestPlan::Unchanged,
        Decision::Rejected { why } => RequestPlan::Rejected(why),
        other => RequestPlan::Impossible(cannot_now(&other)),
    }
}

/// What the drained switchover does, by the decision made again for its target (the drain took
/// a while: the target may have turned unready meanwhile).
#[derive(Debug, PartialEq, Eq)]
pub enum AfterDrain {
    Change {
        writer: Holder,
        epoch: u64,
        reason: Reason,
    },
    Unchanged,
    Rejected(String),
    /// Anything else, a reinstatement included: the drain was for another node.
    Impossible(String),
}

pub fn plan_after_drain(decision: Decision) -> AfterDrain {
    match decision {
        Decision::Elect {
            writer,
            epoch,
            reason,
        } => AfterDrain::Change {
            writer,
            epoch,
            reason,
        },
        Decision::Keep => AfterDrain::Unchanged,
        Decision::Rejected { why } => AfterDrain::Rejected(why),
        other => AfterDrain::Impossible(cannot_now(&other)),
    }
}

fn cannot_now(decision: &Decision) -> String {
    format!("cannot switch over now: {decision:?}")
}

/// A draining switchover ends when the writer it drains away from is lost: any decision of a
/// round other than keeping the writer means the failover takes over (the proxies see the new
/// writer, or none, instead of the draining state).
pub fn abandons_drain(decision: &Decision) -> bool {
    !matches!(decision, Decision::Keep)
}

/// A planned switchover waiting for the proxies to drain their writes to the old writer.
pub struct Draining {
    pub id: u64,
    pub from: String,
    /// Chosen when the switchover began (`to`, or the best candidate then).
    pub target: Holder,
    force: bool,
    started: Instant,
    /// How long the proxies took to acknowledge, once they all did (or the drain was forced).
    drained_in: Option<Duration>,
    deadline: Instant,
    reply: oneshot::Sender<SwitchoverOutcome>,
}

impl Draining {
    /// When `draining` was published: the proxies hold their writes from then on.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How long the proxies took to drain, once they did.
    pub fn drained_in(&self) -> Option<Duration> {
        self.drained_in
    }
}

/// What the running switchover does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Idle,
    Wait,
    /// Timed out without `force`: end the drain, publish the old writer, answer 504.
    Abort {
        id: u64,
        pending: Vec<String>,
    },
    /// Drained (or forced past the timeout, `forced_past` naming who did not acknowledge):
    /// promote the target.
    Promote {
        id: u64,
        target: Holder,
        forced_past: Vec<String>,
    },
}

/// The running switchover, if any, and the barrier it drives.
pub struct Switchovers {
    draining: Option<Draining>,
    barrier: Arc<DrainBarrier>,
    clients: Arc<ClientRegistry>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Switchovers {
    pub fn new(
        barrier: Arc<DrainBarrier>,
        clients: Arc<ClientRegistry>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Switchovers {
            draining: None,
            barrier,
            clients,
            metrics,
            timeout,
        }
    }

    pub fn current(&self) -> Option<&Draining> {
        self.draining.as_ref()
    }

    /// The `switchover` of the published document.
    pub fn document(&self) -> Option<Switchover> {
        self.draining.as_ref().map(|d| Switchover {
            id: d.id,
            state: "draining".into(),
            from: d.from.clone(),
            to: d.target.name.clone(),
        })
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.draining.as_ref().map(|d| d.deadline)
    }

    /// Starts draining: the drain set is every client live now. One switchover at a time: a
    /// second one is answered busy.
    pub fn begin(
        &mut self,
        from: String,
        target: Holder,
        force: bool,
        reply_to: oneshot::Sender<SwitchoverOutcome>,
    ) {
        if let Some(d) = &self.draining {
            let running = d.id;
            return reply(&self.metrics, reply_to, SwitchoverOutcome::Busy { running });
        }
        let id = self.barrier.next_id();
        let now = Instant::now();
        let drain_set = self.clients.live(now);
        info!(
            switchover = id,
            from = %from,
            to = %target.name,
            clients = ?drain_set,
            timeout = ?self.timeout,
            "switchover: draining (proxies hold new writes and acknowledge once their writes to the old writer are done)"
        );
        self.metrics
            .switchover_pending_clients
            .set(drain_set.len() as i64);
        self.barrier.begin(id, drain_set);
        self.metrics.switchover_draining.set(1);
        self.draining = Some(Draining {
            id,
            from,
            target,
            force,
            started: now,
            drained_in: None,
            deadline: now + self.timeout,
            reply: reply_to,
        });
    }

    /// What the barrier says at `now`. A drain that completes is marked drained (its time is
    /// kept for the history) but stays running until [`Switchovers::end`]: the proxies keep
    /// holding until the new writer is published.
    pub fn poll(&mut self, now: Instant) -> Step {
        let Some(d) = self.draining.as_mut() else {
            return Step::Idle;
        };
        let pending = self
            .barrier
            .current()
            .filter(|b| b.id == d.id)
            .map(|b| b.pending())
            .unwrap_or_default();
        self.metrics
            .switchover_pending_clients
            .set(pending.len() as i64);
        match drain_verdict(pending, now >= d.deadline, d.force) {
            DrainVerdict::Wait => Step::Wait,
            DrainVerdict::Abort { pending } => {
                self.metrics
                    .switchover_drain_seconds
                    .observe(d.started.elapsed().as_secs_f64());
                Step::Abort { id: d.id, pending }
            }
            DrainVerdict::Proceed { forced_past } => {
                let took = d.started.elapsed();
                self.metrics
                    .switchover_drain_seconds
                    .observe(took.as_secs_f64());
                d.drained_in = Some(took);
                Step::Promote {
                    id: d.id,
                    target: d.target.clone(),
                    forced_past,
                }
            }
        }
    }

    /// Ends the drain; the caller publishes the document without it, then answers the request
    /// with what is published then.
    pub fn end(&mut self) -> Option<oneshot::Sender<SwitchoverOutcome>> {
        let d = self.draining.take()?;
        self.barrier.end();
        self.metrics.switchover_draining.set(0);
        self.metrics.switchover_pending_clients.set(0);
        Some(d.reply)
    }

    /// Ends a drain that did not complete (the writer failed, leadership was lost) and answers
    /// its request at once.
    pub fn abandon(&mut self, why: &str, outcome: SwitchoverOutcome) {
        let Some(d) = &self.draining else { return };
        warn!(
            switchover = d.id,
            why, "switchover abandoned; the proxies stop holding"
        );
        self.metrics
            .switchover_drain_seconds
            .observe(d.started.elapsed().as_secs_f64());
        if let Some(to) = self.end() {
            reply(&self.metrics, to, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(name: &str) -> Holder {
        Holder {
            name: name.into(),
            address: format!("{name}:80"),
            uid: None,
        }
    }

    fn elect(name: &str) -> Decision {
        Decision::Elect {
            writer: holder(name),
            epoch: 8,
            reason: Reason::Switchover,
        }
    }

    #[test]
    fn a_request_drains_only_away_from_a_published_writer() {
        assert_eq!(
            plan_request(elect("n-2"), Some("n-1".into())),
            RequestPlan::Drain {
                from: "n-1".into(),
                target: holder("n-2")
            }
        );
        assert_eq!(
            plan_request(elect("n-2"), None),
            RequestPlan::ChangeNow {
                writer: holder("n-2"),
                epoch: 8,
                reason: Reason::Switchover
            }
        );
        assert_eq!(
            plan_request(
                Decision::Reinstate {
                    reason: Reason::Switchover
                },
                None
            ),
            RequestPlan::Reinstate {
                reason: Reason::Switchover
            }
        );
        assert_eq!(
            plan_request(Decision::Keep, Some("n-1".into())),
            RequestPlan::Unchanged
        );
        assert_eq!(
            plan_request(
                Decision::Rejected {
                    why: "unready".into()
                },
                None
            ),
            RequestPlan::Rejected("unready".into())
        );
        assert!(matches!(
            plan_request(Decision::Wait { why: "probing".into() }, Some("n-1".into())),
            RequestPlan::Impossible(why) if why.starts_with("cannot switch over now: Wait")
        ));
    }

    #[test]
    fn after_the_drain_only_an_election_changes_the_writer() {
        assert_eq!(
            plan_after_drain(elect("n-2")),
            AfterDrain::Change {
                writer: holder("n-2"),
                epoch: 8,
                reason: Reason::Switchover
            }
        );
        assert_eq!(plan_after_drain(Decision::Keep), AfterDrain::Unchanged);
        assert_eq!(
            plan_after_drain(Decision::Rejected { why: "gone".into() }),
            AfterDrain::Rejected("gone".into())
        );
        for other in [
            Decision::Reinstate {
                reason: Reason::WriterBack,
            },
            Decision::Suspend {
                reason: Reason::WriterGone,
            },
            Decision::Wait { why: "x".into() },
        ] {
            assert!(matches!(plan_after_drain(other), AfterDrain::Impossible(_)));
        }
    }

    #[test]
    fn every_decision_but_keep_abandons_the_drain() {
        assert!(!abandons_drain(&Decision::Keep));
        assert!(abandons_drain(&elect("n-3")));
        assert!(abandons_drain(&Decision::Suspend {
            reason: Reason::WriterUnready
        }));
        assert!(abandons_drain(&Decision::Wait { why: "x".into() }));
    }

    struct Rig {
        s: Switchovers,
        barrier: Arc<DrainBarrier>,
        clients: Arc<ClientRegistry>,
        metrics: Arc<Metrics>,
    }

    fn rig(timeout: Duration) -> Rig {
        let barrier = Arc::new(DrainBarrier::new());
        let clients = Arc::new(ClientRegistry::default());
        let metrics = Arc::new(Metrics::new());
        let s = Switchovers::new(barrier.clone(), clients.clone(), metrics.clone(), timeout);
        Rig {
            s,
            barrier,
            clients,
            metrics,
        }
    }

    /// The target every test drains towards.
    fn promote(id: u64, forced_past: &[&str]) -> Step {
        Step::Promote {
            id,
            target: holder("n-2"),
            forced_past: forced_past.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn begin(r: &mut Rig, force: bool) -> (u64, oneshot::Receiver<SwitchoverOutcome>) {
        let (tx, rx) = oneshot::channel();
        r.s.begin("n-1".into(), holder("n-2"), force, tx);
        let id = r.s.current().map(|d| d.id).unwrap();
        (id, rx)
    }

    #[test]
    fn a_drain_waits_for_every_ack_then_promotes_the_target() {
        let mut r = rig(Duration::from_secs(60));
        let _a = r.clients.visit("proxy-a", Duration::from_secs(10));
        let _b = r.clients.visit("proxy-b", Duration::from_secs(10));
        assert_eq!(r.s.poll(Instant::now()), Step::Idle);
        let (id, mut rx) = begin(&mut r, false);
        assert_eq!(
            r.s.document(),
            Some(Switchover {
                id,
                state: "draining".into(),
                from: "n-1".into(),
                to: "n-2".into()
            })
        );
        assert_eq!(r.metrics.switchover_draining.get(), 1);
        assert_eq!(r.metrics.switchover_pending_clients.get(), 2);

        r.barrier.ack(id, "proxy-a").unwrap();
        assert_eq!(r.s.poll(Instant::now()), Step::Wait);
        assert_eq!(r.metrics.switchover_pending_clients.get(), 1);
        assert_eq!(r.s.current().unwrap().drained_in(), None);

        r.barrier.ack(id, "proxy-b").unwrap();
        assert_eq!(r.s.poll(Instant::now()), promote(id, &[]));
        assert!(
            r.s.current().unwrap().drained_in().is_some(),
            "drain time kept"
        );
        assert!(r.s.document().is_some(), "still draining until the end");
        assert!(rx.try_recv().is_err(), "not answered before the end");

        let to = r.s.end().unwrap();
        assert!(r.s.current().is_none() && r.s.document().is_none());
        assert!(r.barrier.current().is_none());
        assert!(r.barrier.ack(id, "proxy-b").is_err(), "a late ack: 409");
        assert_eq!(r.metrics.switchover_draining.get(), 0);
        assert_eq!(r.metrics.switchover_pending_clients.get(), 0);
        reply(&r.metrics, to, SwitchoverOutcome::Failed("x".into()));
        assert!(matches!(rx.try_recv(), Ok(SwitchoverOutcome::Failed(_))));
        assert!(r.s.end().is_none(), "ends once");
    }

    #[test]
    fn no_proxy_to_wait_for_promotes_at_once() {
        let mut r = rig(Duration::from_secs(60));
        let (id, _rx) = begin(&mut r, false);
        assert_eq!(r.s.poll(Instant::now()), promote(id, &[]));
    }

    #[test]
    fn the_timeout_aborts_unless_forced() {
        for force in [false, true] {
            let mut r = rig(Duration::from_secs(5));
            let _a = r.clients.visit("proxy-a", Duration::from_secs(10));
            let (id, _rx) = begin(&mut r, force);
            let deadline = r.s.deadline().unwrap();
            assert_eq!(r.s.poll(deadline - Duration::from_millis(1)), Step::Wait);
            let expected = if force {
                promote(id, &["proxy-a"])
            } else {
                Step::Abort {
                    id,
                    pending: vec!["proxy-a".into()],
                }
            };
            assert_eq!(r.s.poll(deadline), expected, "force: {force}");
        }
    }

    #[test]
    fn one_switchover_at_a_time() {
        let mut r = rig(Duration::from_secs(60));
        let _a = r.clients.visit("proxy-a", Duration::from_secs(10));
        let (id, _rx) = begin(&mut r, false);
        let (tx, mut second) = oneshot::channel();
        r.s.begin("n-1".into(), holder("n-3"), true, tx);
        assert!(matches!(
            second.try_recv(),
            Ok(SwitchoverOutcome::Busy { running }) if running == id
        ));
        assert_eq!(r.s.current().unwrap().target, holder("n-2"));
        assert_eq!(r.barrier.current().unwrap().id, id);
    }

    #[test]
    fn abandoning_answers_at_once_and_releases_the_proxies() {
        let mut r = rig(Duration::from_secs(60));
        let _a = r.clients.visit("proxy-a", Duration::from_secs(10));
        let (_id, mut rx) = begin(&mut r, false);
        r.s.abandon("lost leadership", SwitchoverOutcome::NotLeader(None));
        assert!(matches!(
            rx.try_recv(),
            Ok(SwitchoverOutcome::NotLeader(None))
        ));
        assert!(r.s.current().is_none() && r.barrier.current().is_none());
        assert_eq!(r.metrics.switchover_draining.get(), 0);
        assert_eq!(r.s.poll(Instant::now()), Step::Idle);
        // Nothing running: nothing to answer.
        r.s.abandon("again", SwitchoverOutcome::NotLeader(None));
    }
}
