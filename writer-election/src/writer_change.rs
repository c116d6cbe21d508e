//! **The order of actions for a writer change**: the safety argument of the whole service.
//!
//! A new writer ([`elect`]):
//! 1. only while leading (HA: before the renew deadline);
//! 2. re-read the record: it must answer (in Kubernetes mode this proves the API is reachable,
//!    so losing the API never causes a failover) and still be the one decided on;
//! 3. fence: delete the old writer pod and wait until it is gone (a writer can never be demoted,
//!    so it must not live on next to the new one), then re-read the record again, since fencing
//!    takes a while;
//! 4. promote the new writer;
//! 5. still leading? The promotion may have outlasted the leadership;
//! 6. record it (optimistic write: a conflict means somebody else decided);
//! 7. publish it.
//!
//! A step that fails stops the sequence: nothing after it happens, and the [`Failure`] says
//! which step it was. [`reinstate`], [`suspend`] and [`repromote`] are the shorter sequences of
//! the other decisions. Each step is behind a small trait (the record behind
//! [`RecordStore`]), so the order and every failure path are tested with fakes; the engine turns
//! a failure into its retry, log and metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tracing::info;

use crate::decision::{Holder, Recorded};
use crate::discovery::Membership;
use crate::kube_actions::KubeActions;
use crate::leader::LeaderState;
use crate::promotion::{Promoter, PromotionError};
use crate::publish::Publisher;
use crate::store::{RecordStore, StoreError};

/// Whether this replica may still decide.
pub trait Leadership: Sync {
    fn leading(&self) -> bool;
}

/// Removes the old writer pod for good.
#[async_trait]
pub trait Fence: Sync {
    /// Deletes the pod if it still is the incarnation `pod.uid`, and returns once it is gone.
    async fn fence(&self, pod: &Pod) -> Result<(), String>;
}

/// Tells a node it is the writer.
#[async_trait]
pub trait Promote: Sync {
    async fn promote(&self, address: &str) -> Result<(), PromotionError>;
}

/// Shows a recorded change to the proxies.
pub trait Publish: Send + Sync {
    fn publish(&mut self, rec: &Recorded);
}

/// What a writer change acts through.
pub struct Steps<'a> {
    pub leader: &'a dyn Leadership,
    pub store: &'a dyn RecordStore,
    /// `None`: fencing is off.
    pub fencer: Option<&'a dyn Fence>,
    pub promoter: &'a dyn Promote,
    pub publisher: &'a mut dyn Publish,
}

/// A pod incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub uid: String,
}

/// Where a writer change stopped.
#[derive(Debug)]
pub enum Failure {
    /// Not leading when the change began.
    NotLeader,
    /// The record is not the one decided on: decide again with this one.
    RecordChanged(Recorded),
    /// The record cannot be read, so nothing irreversible was done.
    RecordUnreadable(StoreError),
    /// The old writer pod is not confirmed gone: no promotion.
    Fencing(String),
    Promotion(PromotionError),
    /// Leadership ended during the promotion: not recorded.
    LostLeadership,
    /// The write was refused ([`StoreError::Conflict`]) or failed: nothing published.
    Write(StoreError),
}

/// The old writer pod to fence before `writer` is promoted: the record's holder (active or
/// not: a suspended holder was a writer too), if that very incarnation is still discovered and
/// is not the new writer itself. Without a pod UID (static and dns modes) there is no pod.
pub fn pod_to_fence(old: &Recorded, writer: &Holder, m: &Membership) -> Option<Pod> {
    let holder = old.holder.as_ref()?;
    let uid = holder.uid.as_ref()?;
    let alive = m
        .get(&holder.name)
        .is_some_and(|n| n.uid.as_ref() == Some(uid));
    (alive && writer.uid.as_ref() != Some(uid)).then(|| Pod {
        name: holder.name.clone(),
        uid: uid.clone(),
    })
}

/// Elects `writer`: steps 1-7 of the module documentation. `record` builds the record to write
/// once the promotion succeeded (its history entry is timed at the write). `Ok` is the record
/// written and published.
pub async fn elect(
    s: &mut Steps<'_>,
    old: &Recorded,
    writer: &Holder,
    fence: Option<&Pod>,
    record: impl FnOnce() -> Recorded + Send,
) -> Result<Recorded, Failure> {
    if !s.leader.leading() {
        return Err(Failure::NotLeader);
    }
    reread(s.store, old).await?;
    if let (Some(fencer), Some(pod)) = (s.fencer, fence) {
        fencer.fence(pod).await.map_err(Failure::Fencing)?;
        reread(s.store, old).await?;
    }
    promote_then_record(s, &writer.address, record).await
}

/// The suspended holder is back: promoted again, then recorded active at its own epoch.
pub async fn reinstate(
    s: &mut Steps<'_>,
    old: &Recorded,
    holder: &Holder,
    record: impl FnOnce() -> Recorded + Send,
) -> Result<Recorded, Failure> {
    reread(s.store, old).await?;
    promote_then_record(s, &holder.address, record).await
}

/// No node can replace the lost holder: recorded inactive (nothing to promote, nothing to
/// fence: no new writer).
pub async fn suspend(s: &mut Steps<'_>, new: Recorded) -> Result<Recorded, Failure> {
    write(s, new).await
}

/// The published writer says it is not the writer: promoted again at its own epoch. The record
/// does not change, so nothing is written.
pub async fn repromote(s: &Steps<'_>, old: &Recorded, holder: &Holder) -> Result<(), Failure> {
    reread(s.store, old).await?;
    if !s.leader.leading() {
        return Err(Failure::NotLeader);
    }
    s.promoter
        .promote(&holder.address)
        .await
        .map_err(Failure::Promotion)
}

async fn promote_then_record(
    s: &mut Steps<'_>,
    address: &str,
    record: impl FnOnce() -> Recorded + Send,
) -> Result<Recorded, Failure> {
    // Asked again right before the node is told: the re-reads and the fencing before this are
    // calls to the API that can take seconds, long enough for the lease to run out.
    if !s.leader.leading() {
        return Err(Failure::NotLeader);
    }
    s.promoter
        .promote(address)
        .await
        .map_err(Failure::Promotion)?;
    if !s.leader.leading() {
        return Err(Failure::LostLeadership);
    }
    write(s, record()).await
}

/// The record must be the one the decision was made on.
async fn reread(store: &dyn RecordStore, old: &Recorded) -> Result<(), Failure> {
    match store.load().await {
        Ok(fresh) if &fresh == old => Ok(()),
        Ok(fresh) => Err(Failure::RecordChanged(fresh)),
        Err(e) => Err(Failure::RecordUnreadable(e)),
    }
}

async fn write(s: &mut Steps<'_>, new: Recorded) -> Result<Recorded, Failure> {
    s.store.save(&new).await.map_err(Failure::Write)?;
    s.publisher.publish(&new);
    Ok(new)
}

/// Changes are made by the leader, and a writer just recorded ends any switchover.
impl Publish for Publisher {
    fn publish(&mut self, rec: &Recorded) {
        Publisher::publish(self, rec, true, None);
    }
}

impl Leadership for watch::Receiver<LeaderState> {
    fn leading(&self) -> bool {
        self.borrow().leading_now()
    }
}

#[async_trait]
impl Promote for Promoter {
    async fn promote(&self, address: &str) -> Result<(), PromotionError> {
        Promoter::promote(self, address).await
    }
}

/// Fencing through the Kubernetes API, `fencing.timeout` to see the pod gone.
pub struct PodFencer {
    pub kube: Arc<KubeActions>,
    pub timeout: Duration,
    /// For the log: whom the old writer makes way for.
    pub for_writer: String,
}

#[async_trait]
impl Fence for PodFencer {
    async fn fence(&self, pod: &Pod) -> Result<(), String> {
        info!(pod = %pod.name, "fencing: deleting the old writer pod before promoting {}", self.for_writer);
        self.kube
            .delete_pod_and_confirm(&pod.name, &pod.uid, self.timeout)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::decision::PromotionStep;
    use crate::discovery::DiscoveredNode;

    type Calls = Arc<Mutex<Vec<String>>>;

    fn log(calls: &Calls, call: impl Into<String>) {
        calls.lock().unwrap().push(call.into());
    }

    struct FakeLeader {
        calls: Calls,
        /// Answers in turn; leading once they run out.
        answers: Mutex<VecDeque<bool>>,
    }

    impl Leadership for FakeLeader {
        fn leading(&self) -> bool {
            log(&self.calls, "leading?");
            self.answers.lock().unwrap().pop_front().unwrap_or(true)
        }
    }

    struct FakeStore {
        calls: Calls,
        /// Answers of `load` in turn; the record decided on once they run out.
        loads: Mutex<VecDeque<Result<Recorded, StoreError>>>,
        current: Recorded,
        save: Mutex<Option<StoreError>>,
    }

    #[async_trait]
    impl RecordStore for FakeStore {
        async fn load(&self) -> Result<Recorded, StoreError> {
            log(&self.calls, "load");
            self.loads
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(self.current.clone()))
        }
        async fn save(&self, rec: &Recorded) -> Result<(), StoreError> {
            log(&self.calls, format!("save epoch {}", rec.epoch));
            self.save.lock().unwrap().take().map_or(Ok(()), Err)
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    struct FakeFencer {
        calls: Calls,
        fails: bool,
    }

    #[async_trait]
    impl Fence for FakeFencer {
        async fn fence(&self, pod: &Pod) -> Result<(), String> {
            log(&self.calls, format!("fence {}", pod.name));
            if self.fails {
                Err("still there".into())
            } else {
                Ok(())
            }
        }
    }

    struct FakePromoter {
        calls: Calls,
        fails: bool,
    }

    #[async_trait]
    impl Promote for FakePromoter {
        async fn promote(&self, address: &str) -> Result<(), PromotionError> {
            log(&self.calls, format!("promote {address}"));
            if self.fails {
                Err(PromotionError {
                    step: PromotionStep::Start,
                    status: Some(500),
                    message: "boom".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    struct FakePublisher {
        calls: Calls,
    }

    impl Publish for FakePublisher {
        fn publish(&mut self, rec: &Recorded) {
            log(&self.calls, format!("publish epoch {}", rec.epoch));
        }
    }

    fn holder(name: &str, uid: &str) -> Holder {
        Holder {
            name: name.into(),
            address: format!("{name}:80"),
            uid: Some(uid.into()),
        }
    }

    fn recorded(epoch: u64, h: Holder, active: bool) -> Recorded {
        Recorded {
            epoch,
            holder: Some(h),
            active,
            history: Vec::new(),
        }
    }

    fn old() -> Recorded {
        recorded(7, holder("n-1", "uid-1"), true)
    }

    fn new_writer() -> Holder {
        holder("n-2", "uid-2")
    }

    fn pod() -> Pod {
        Pod {
            name: "n-1".into(),
            uid: "uid-1".into(),
        }
    }

    /// The fakes; `set` changes what they answer before a run.
    struct World {
        calls: Calls,
        leader: FakeLeader,
        store: FakeStore,
        fencer: FakeFencer,
        promoter: FakePromoter,
        publisher: FakePublisher,
    }

    impl World {
        fn new() -> Self {
            let calls = Calls::default();
            World {
                leader: FakeLeader {
                    calls: calls.clone(),
                    answers: Mutex::new(VecDeque::new()),
                },
                store: FakeStore {
                    calls: calls.clone(),
                    loads: Mutex::new(VecDeque::new()),
                    current: old(),
                    save: Mutex::new(None),
                },
                fencer: FakeFencer {
                    calls: calls.clone(),
                    fails: false,
                },
                promoter: FakePromoter {
                    calls: calls.clone(),
                    fails: false,
                },
                publisher: FakePublisher {
                    calls: calls.clone(),
                },
                calls,
            }
        }

        fn leading(self, answers: &[bool]) -> Self {
            *self.leader.answers.lock().unwrap() = answers.iter().copied().collect();
            self
        }

        fn loads(self, answers: Vec<Result<Recorded, StoreError>>) -> Self {
            *self.store.loads.lock().unwrap() = answers.into();
            self
        }

        fn save_fails(self, e: StoreError) -> Self {
            *self.store.save.lock().unwrap() = Some(e);
            self
        }

        fn steps(&mut self, fencing: bool) -> Steps<'_> {
            Steps {
                leader: &self.leader,
                store: &self.store,
                fencer: fencing.then_some(&self.fencer as &dyn Fence),
                promoter: &self.promoter,
                publisher: &mut self.publisher,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        /// Elects n-2 at epoch 8 with the old writer pod to fence.
        async fn elect(&mut self) -> Result<Recorded, Failure> {
            let calls = self.calls.clone();
            let (old, writer) = (old(), new_writer());
            let mut steps = self.steps(true);
            elect(&mut steps, &old, &writer, Some(&pod()), || {
                log(&calls, "build record");
                recorded(8, new_writer(), true)
            })
            .await
        }
    }

    const ELECTED: [&str; 10] = [
        "leading?",
        "load",
        "fence n-1",
        "load",
        "leading?",
        "promote n-2:80",
        "leading?",
        "build record",
        "save epoch 8",
        "publish epoch 8",
    ];

    #[tokio::test]
    async fn an_election_fences_promotes_records_then_publishes() {
        let mut w = World::new();
        let rec = w.elect().await.unwrap();
        assert_eq!(rec, recorded(8, new_writer(), true));
        assert_eq!(w.calls(), ELECTED);
    }

    #[tokio::test]
    async fn without_fencing_or_a_pod_to_fence_nothing_is_deleted() {
        let mut w = World::new();
        let (old, writer) = (old(), new_writer());
        let mut steps = w.steps(false);
        elect(&mut steps, &old, &writer, Some(&pod()), || {
            recorded(8, new_writer(), true)
        })
        .await
        .unwrap();
        let mut steps = w.steps(true);
        elect(&mut steps, &old, &writer, None, || {
            recorded(8, new_writer(), true)
        })
        .await
        .unwrap();
        let once = [
            "leading?",
            "load",
            "leading?",
            "promote n-2:80",
            "leading?",
            "save epoch 8",
            "publish epoch 8",
        ];
        assert_eq!(w.calls(), [once, once].concat());
    }

    #[tokio::test]
    async fn not_leading_does_nothing() {
        let mut w = World::new().leading(&[false]);
        assert!(matches!(w.elect().await, Err(Failure::NotLeader)));
        assert_eq!(w.calls(), ["leading?"]);
    }

    #[tokio::test]
    async fn a_record_of_another_epoch_fences_nothing() {
        let other = recorded(9, holder("n-3", "uid-3"), true);
        let mut w = World::new().loads(vec![Ok(other.clone())]);
        assert!(matches!(w.elect().await, Err(Failure::RecordChanged(r)) if r == other));
        assert_eq!(w.calls(), ["leading?", "load"]);
    }

    #[tokio::test]
    async fn an_unreadable_record_fences_nothing() {
        let mut w = World::new().loads(vec![Err(StoreError::Unavailable("down".into()))]);
        assert!(matches!(
            w.elect().await,
            Err(Failure::RecordUnreadable(StoreError::Unavailable(_)))
        ));
        assert_eq!(w.calls(), ["leading?", "load"]);
    }

    #[tokio::test]
    async fn a_failed_fencing_promotes_nothing() {
        let mut w = World::new();
        w.fencer.fails = true;
        assert!(matches!(w.elect().await, Err(Failure::Fencing(_))));
        assert_eq!(w.calls(), ELECTED[..3]);
    }

    #[tokio::test]
    async fn a_record_changed_during_fencing_promotes_nothing() {
        let other = recorded(9, holder("n-3", "uid-3"), true);
        let mut w = World::new().loads(vec![Ok(old()), Ok(other)]);
        assert!(matches!(w.elect().await, Err(Failure::RecordChanged(_))));
        assert_eq!(w.calls(), ELECTED[..4]);
    }

    #[tokio::test]
    async fn a_failed_promotion_records_nothing() {
        let mut w = World::new();
        w.promoter.fails = true;
        assert!(matches!(w.elect().await, Err(Failure::Promotion(_))));
        assert_eq!(w.calls(), ELECTED[..6]);
    }

    #[tokio::test]
    async fn leadership_lost_while_fencing_promotes_nothing() {
        let mut w = World::new().leading(&[true, false]);
        assert!(matches!(w.elect().await, Err(Failure::NotLeader)));
        assert_eq!(w.calls(), ELECTED[..5]);
    }

    #[tokio::test]
    async fn leadership_lost_during_the_promotion_records_nothing() {
        let mut w = World::new().leading(&[true, true, false]);
        assert!(matches!(w.elect().await, Err(Failure::LostLeadership)));
        assert_eq!(w.calls(), ELECTED[..7]);
    }

    #[tokio::test]
    async fn a_refused_or_failed_write_publishes_nothing() {
        for e in [
            StoreError::Conflict("409".into()),
            StoreError::Unavailable("down".into()),
        ] {
            let mut w = World::new().save_fails(e);
            assert!(matches!(w.elect().await, Err(Failure::Write(_))));
            assert_eq!(w.calls(), ELECTED[..9]);
        }
    }

    #[tokio::test]
    async fn a_reinstatement_promotes_records_and_publishes_without_fencing() {
        let suspended = recorded(7, holder("n-1", "uid-1"), false);
        let back = recorded(7, holder("n-1", "uid-1"), true);
        let mut w = World::new().loads(vec![Ok(suspended.clone())]);
        let h = holder("n-1", "uid-1");
        let rec = reinstate(&mut w.steps(true), &suspended, &h, || back.clone())
            .await
            .unwrap();
        assert_eq!(rec, back);
        let order = [
            "load",
            "leading?",
            "promote n-1:80",
            "leading?",
            "save epoch 7",
            "publish epoch 7",
        ];
        assert_eq!(w.calls(), order);

        let mut w = World::new().loads(vec![Ok(suspended.clone())]);
        w.promoter.fails = true;
        let r = reinstate(&mut w.steps(true), &suspended, &h, || back.clone()).await;
        assert!(matches!(r, Err(Failure::Promotion(_))));
        assert_eq!(w.calls(), order[..3]);

        let mut w = World::new();
        let r = reinstate(&mut w.steps(true), &suspended, &h, || back.clone()).await;
        assert!(matches!(r, Err(Failure::RecordChanged(_))));
        assert_eq!(w.calls(), ["load"]);
    }

    #[tokio::test]
    async fn a_suspension_records_then_publishes() {
        let mut w = World::new();
        let inactive = recorded(7, holder("n-1", "uid-1"), false);
        suspend(&mut w.steps(true), inactive.clone()).await.unwrap();
        assert_eq!(w.calls(), ["save epoch 7", "publish epoch 7"]);

        let mut w = World::new().save_fails(StoreError::Unavailable("down".into()));
        assert!(suspend(&mut w.steps(true), inactive).await.is_err());
        assert_eq!(w.calls(), ["save epoch 7"]);
    }

    #[tokio::test]
    async fn a_repromotion_rereads_then_promotes_and_writes_nothing() {
        let h = holder("n-1", "uid-1");
        let mut w = World::new();
        repromote(&w.steps(true), &old(), &h).await.unwrap();
        assert_eq!(w.calls(), ["load", "leading?", "promote n-1:80"]);

        let mut w = World::new().loads(vec![Ok(Recorded::default())]);
        let r = repromote(&w.steps(true), &old(), &h).await;
        assert!(matches!(r, Err(Failure::RecordChanged(_))));
        assert_eq!(w.calls(), ["load"]);

        let mut w = World::new().leading(&[false]);
        let r = repromote(&w.steps(true), &old(), &h).await;
        assert!(matches!(r, Err(Failure::NotLeader)));
        assert_eq!(w.calls(), ["load", "leading?"]);
    }

    fn discovered(name: &str, uid: &str) -> DiscoveredNode {
        DiscoveredNode {
            name: name.into(),
            address: format!("{name}:80"),
            uid: Some(uid.into()),
            running: true,
            created: None,
            pod_ready: None,
            role_label: None,
        }
    }

    #[test]
    fn the_pod_to_fence_is_the_holders_incarnation_while_it_exists() {
        let m = Membership::new(vec![discovered("n-1", "uid-1"), discovered("n-2", "uid-2")]);
        assert_eq!(pod_to_fence(&old(), &new_writer(), &m), Some(pod()));
        let suspended = recorded(7, holder("n-1", "uid-1"), false);
        assert_eq!(
            pod_to_fence(&suspended, &new_writer(), &m),
            Some(pod()),
            "a suspended holder was a writer too"
        );
        let recreated = Membership::new(vec![discovered("n-1", "uid-9")]);
        assert_eq!(pod_to_fence(&old(), &new_writer(), &recreated), None);
        assert_eq!(
            pod_to_fence(&old(), &new_writer(), &Membership::default()),
            None,
            "gone already"
        );
        assert_eq!(
            pod_to_fence(&old(), &holder("n-1", "uid-1"), &m),
            None,
            "the holder itself is elected again"
        );
        let mut no_uid = old();
        if let Some(h) = no_uid.holder.as_mut() {
            h.uid = None;
        }
        assert_eq!(pod_to_fence(&no_uid, &new_writer(), &m), None);
        assert_eq!(pod_to_fence(&Recorded::default(), &new_writer(), &m), None);
    }
}
