//! The election decision: one pure function, [`decide`].
//!
//! Input: what is recorded (the holder of the current epoch and whether it is active), what is
//! observed now (every discovered node with its probe verdict), the policy, and the request
//! (a periodic evaluation or an operator's switchover). Output: what to do. No I/O, no clock:
//! the engine does the fencing, promotion, recording and publishing the decision asks for.
//!
//! The rules:
//! - Sticky: an active holder stays the writer while it exists (same pod UID), runs, and is not
//!   over its failure threshold. `Unknown` health (not probed yet, e.g. right after a restart)
//!   keeps it: a restart never flips the writer by itself.
//! - The writer changes only to a ready, running, non-excluded node, chosen by
//!   `candidate_order`; every change takes the next epoch (`recorded.epoch + 1`), so an epoch
//!   names exactly one holder and is never reused or lowered.
//! - Holder lost and nobody to replace it: suspend (publish writer = null, epoch unchanged). The
//!   suspended holder is preferred when it comes back (it is already promoted; a MicroStream
//!   writer cannot be demoted, so electing another node would make a second writer).
//! - Before the first election, wait until every node has a verdict and `min_ready_nodes` are
//!   ready, so the choice by `candidate_order` is not decided by which probe answered first.
//! - A node that refuses to be promoted ([`promotion_refused`]: a backup or dev node of the node
//!   library) is no candidate for as long as [`refusal_span`] says; a published writer that lost
//!   its role and could not be promoted again is lost, like an unready one.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateOrder {
    /// Lowest name first, numbers compared as numbers (StatefulSet ordinal order).
    #[default]
    Name,
    /// Oldest node first (pod creationTimestamp; static mode: config order).
    Oldest,
    /// Highest replication offset first (read from each candidate before electing).
    MostCaughtUp,
}

/// A node name or a glob with `*` (matches any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn new(p: &str) -> Self {
        NamePattern(p.trim().to_string())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking to the last '*'.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, Default)]
pub struct ElectionPolicy {
    pub candidate_order: CandidateOrder,
    pub exclude: Vec<NamePattern>,
    pub min_ready_nodes: usize,
}

impl ElectionPolicy {
    pub fn is_excluded(&self, name: &str) -> bool {
        self.exclude.iter().any(|p| p.matches(name))
    }
}

/// The node that holds an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub name: String,
    pub address: String,
    /// Kubernetes pod UID; `None` in static and dns modes.
    #[serde(default)]
    pub uid: Option<String>,
}

/// The durable record (state file or writer Lease).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The fencing token of `holder`; 0 = nobody was ever elected.
    pub epoch: u64,
    /// The node elected at `epoch`.
    pub holder: Option<Holder>,
    /// false while the holder is lost and no node could replace it (published writer = null).
    pub active: bool,
    /// The last writer changes, oldest first (bounded by `topology::push_history`); written in
    /// the same write as the rest of the record, so a restart or a new leader keeps them.
    pub history: Vec<crate::topology::HistoryEntry>,
}

impl Recorded {
    /// The writer to publish.
    pub fn writer(&self) -> Option<&Holder> {
        if self.active {
            self.holder.as_ref()
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet (fewer results than either threshold since the node appeared).
    Unknown,
    Ready,
    Unready,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not read (the engine reads it when [`Decision::NeedProgress`] asks).
    NotFetched,
    /// Read failed: such a candidate comes after every one with a known offset.
    Unavailable,
    Offset(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedNode {
    pub name: String,
    pub address: String,
    pub uid: Option<String>,
    /// false: the pod is terminating or its container is not running. Out at once.
    pub running: bool,
    pub health: Health,
    /// Ordering key for `oldest` (smaller = older); `None` sorts last.
    pub created: Option<i64>,
    pub progress: Progress,
    /// A promotion of this node failed recently: not chosen automatically for a while.
    pub penalized: bool,
    /// The node refused promotion (a backup or dev node): never a candidate, not even by name.
    pub promotion_refused: bool,
    /// The published writer said it is not the writer any more and could not be promoted again.
    pub lost_role: bool,
}

/// The promotion call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionStep {
    Start,
    Finish,
}

/// Whether a failed promotion means the node can never be the writer. The node library answers
/// 400 to the activation call on nodes that have no distributor role (backup and dev nodes);
/// anything else (an error status, a timeout, `finish` never answering true) may pass, so it
/// only costs the short promotion-failure penalty.
pub fn promotion_refused(step: PromotionStep, status: Option<u16>) -> bool {
    step == PromotionStep::Start && status == Some(400)
}

/// Without pod identities (static and dns modes) a node that refused promotion is tried again
/// after this long: the same address may have been redeployed as a storage node.
pub const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long a refusal keeps a node out of candidacy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalSpan {
    /// Kubernetes: as long as the pod with this UID exists (a pod does not change its role).
    WhilePodExists(String),
    /// No pod identity: for this long.
    For(Duration),
}

pub fn refusal_span(uid: Option<&str>) -> RefusalSpan {
    match uid {
        Some(uid) => RefusalSpan::WhilePodExists(uid.to_string()),
        None => RefusalSpan::For(REFUSED_RETRY_AFTER),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Periodic or event-driven: keep, fail over, or elect the first writer.
    Evaluate,
    /// Planned switchover to `to`, or to the best candidate other than the writer.
    Switchover { to: Option<&'a str> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// First writer of the cluster.
    Initial,
    /// The writer is over its failure threshold.
    WriterUnready,
    /// The writer's pod is deleted, terminating, not running, or no longer discovered.
    WriterGone,
    /// A pod with the writer's name but another UID: a new node, not the writer.
    WriterRecreated,
    /// Operator request.
    Switchover,
    /// The suspended holder is ready again.
    WriterBack,
    /// The writer says it is not the writer any more (e.g. restarted) and re-promotion failed.
    WriterLostRole,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::WriterUnready => "writer-unready",
            Reason::WriterGone => "writer-gone",
            Reason::WriterRecreated => "writer-recreated",
            Reason::Switchover => "switchover",
            Reason::WriterBack => "writer-back",
            Reason::WriterLostRole => "writer-lost-role",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to change.
    Keep,
    /// No writer can be elected yet (the reason is for logs and the API).
    Wait { why: String },
    /// `most_caught_up`: read the offsets of these nodes, then decide again.
    NeedProgress { nodes: Vec<String> },
    /// Promote `writer`, record it at `epoch`, publish it.
    Elect {
        writer: Holder,
        epoch: u64,
        reason: Reason,
    },
    /// The recorded holder becomes active again at its own epoch (promote again, record, publish).
    Reinstate { reason: Reason },
    /// The holder is lost and no node can replace it: record inactive, publish writer = null.
    Suspend { reason: Reason },
    /// A switchover that cannot be done (-> 409).
    Rejected { why: String },
}

/// What became of the recorded holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HolderState {
    Healthy,
    Unknown,
    Lost(Reason),
}

fn holder_state(holder: &Holder, observed: &[ObservedNode]) -> HolderState {
    let Some(node) = observed.iter().find(|n| n.name == holder.name) else {
        return HolderState::Lost(Reason::WriterGone);
    };
    if let (Some(recorded), Some(seen)) = (&holder.uid, &node.uid) {
        if recorded != seen {
            return HolderState::Lost(Reason::WriterRecreated);
        }
    }
    if !node.running {
        return HolderState::Lost(Reason::WriterGone);
    }
    if node.lost_role {
        return HolderState::Lost(Reason::WriterLostRole);
    }
    match node.health {
        Health::Ready => HolderState::Healthy,
        Health::Unknown => HolderState::Unknown,
        Health::Unready => HolderState::Lost(Reason::WriterUnready),
    }
}

fn is_holder(node: &ObservedNode, holder: Option<&Holder>) -> bool {
    match holder {
        Some(h) => {
            node.name == h.name && (h.uid.is_none() || node.uid.is_none() || h.uid == node.uid)
        }
        None => false,
    }
}

/// Natural order: digit runs compare as numbers, so node-2 < node-10.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let ta = trim_zeros(na);
                let tb = trim_zeros(nb);
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then(da.cmp(&db));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|c| **c == b'0').count();
    &d[z.min(d.len().saturating_sub(1))..]
}

/// The candidates ranked best first.
/// Candidate order: best first.
fn cmp_candidates(a: &ObservedNode, b: &ObservedNode, order: CandidateOrder) -> Ordering {
    let primary = match order {
        CandidateOrder::Name => Ordering::Equal,
        CandidateOrder::Oldest => match (a.created, b.created) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        },
        CandidateOrder::MostCaughtUp => {
            let key = |n: &ObservedNode| match n.progress {
                Progress::Offset(o) => Some(o),
                _ => None,
            };
            match (key(a), key(b)) {
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
    };
    primary.then_with(|| natural_cmp(&a.name, &b.name))
}

fn rank(mut c: Vec<&ObservedNode>, order: CandidateOrder) -> Vec<&ObservedNode> {
    c.sort_by(|a, b| cmp_candidates(a, b, order));
    c
}

fn progress_needed(c: &[&ObservedNode], policy: &ElectionPolicy) -> Option<Decision> {
    if policy.candidate_order != CandidateOrder::MostCaughtUp {
        return None;
    }
    let nodes: Vec<String> = c
        .iter()
        .filter(|n| n.progress == Progress::NotFetched)
        .map(|n| n.name.clone())
        .collect();
    if nodes.is_empty() {
        None
    } else {
        Some(Decision::NeedProgress { nodes })
    }
}

fn to_holder(n: &ObservedNode) -> Holder {
    Holder {
        name: n.name.clone(),
        address: n.address.clone(),
        uid: n.uid.clone(),
    }
}

/// Elects the best automatic candidate (not the recorded holder), or `None`.
fn choose<'a>(
    recorded: &Recorded,
    observed: &'a [ObservedNode],
    policy: &ElectionPolicy,
) -> Result<Option<&'a ObservedNode>, Decision> {
    let possible = |n: &&ObservedNode| {
        n.running
            && !policy.is_excluded(&n.name)
            && !n.penalized
            && !n.promotion_refused
            && !is_holder(n, recorded.holder.as_ref())
    };
    let candidates: Vec<&ObservedNode> = observed
        .iter()
        .filter(possible)
        .filter(|n| n.health == Health::Ready)
        .collect();
    // Nodes without a verdict yet (right after a restart or a change of leader, or just
    // discovered). One that could rank first is waited for (until its first verdict, bounded by
    // the probe thresholds), so the choice does not depend on which probe answered first.
    let pending: Vec<&ObservedNode> = observed
        .iter()
        .filter(possible)
        .filter(|n| n.health == Health::Unknown)
        .collect();
    if let Some(need) = progress_needed(&candidates, policy) {
        return Err(need);
    }
    let best = rank(candidates, policy.candidate_order).into_iter().next();
    let wait_for = pending.iter().find(|p| match best {
        None => true,
        // An unknown node's offset is unknown: it could be the most caught up.
        Some(_) if policy.candidate_order == CandidateOrder::MostCaughtUp => true,
        Some(b) => cmp_candidates(p, b, policy.candidate_order) == Ordering::Less,
    });
    if let Some(p) = wait_for {
        return Err(Decision::Wait {
            why: format!(
                "waiting for the first probe verdict of candidate {}",
                p.name
            ),
        });
    }
    Ok(best)
}

/// The election decision. See the module documentation for the rules.
pub fn decide(
    recorded: &Recorded,
    observed: &[ObservedNode],
    policy: &ElectionPolicy,
    request: Request<'_>,
) -> Decision {
    match request {
        Request::Switchover { to } => switchover(recorded, observed, policy, to),
        Request::Evaluate => evaluate(recorded, observed, policy),
    }
}

fn evaluate(recorded: &Recorded, observed: &[ObservedNode], policy: &ElectionPolicy) -> Decision {
    let Some(holder) = &recorded.holder else {
        return first_election(recorded, observed, policy);
    };
    let state = holder_state(holder, observed);
    if recorded.active {
        let reason = match state {
            HolderState::Healthy | HolderState::Unknown => return Decision::Keep,
            HolderState::Lost(reason) => reason,
        };
        match choose(recorded, observed, policy) {
            Err(need) => need,
            Ok(Some(n)) => Decision::Elect {
                writer: to_holder(n),
                epoch: recorded.epoch + 1,
                reason,
            },
            Ok(None) => Decision::Suspend { reason },
        }
    } else {
        match state {
            HolderState::Healthy => Decision::Reinstate {
                reason: Reason::WriterBack,
            },
            // Not probed yet: give it the chance to come back before electing another node.
            HolderState::Unknown => Decision::Keep,
            HolderState::Lost(reason) => match choose(recorded, observed, policy) {
                Err(need) => need,
                Ok(Some(n)) => Decision::Elect {
                    writer: to_holder(n),
                    epoch: recorded.epoch + 1,
                    reason,
                },
                Ok(None) => Decision::Keep,
            },
        }
    }
}

fn first_election(
    recorded: &Recorded,
    observed: &[ObservedNode],
    policy: &ElectionPolicy,
) -> Decision {
    let pending = observed
        .iter()
        .filter(|n| {
            n.running
                && n.health == Health::Unknown
                && !policy.is_excluded(&n.name)
                && !n.promotion_refused
        })
        .count();
    if pending > 0 {
        return Decision::Wait {
            why: format!("waiting for the first probe verdict of {pending} node(s)"),
        };
    }
    let ready = observed
        .iter()
        .filter(|n| n.running && n.health == Health::Ready)
        .count();
    if ready < policy.min_ready_nodes {
        return Decision::Wait {
            why: format!(
                "{ready} ready node(s), election.min_ready_nodes is {}",
                policy.min_ready_nodes
            ),
        };
    }
    match choose(recorded, observed, policy) {
        Err(need) => need,
        Ok(Some(n)) => Decision::Elect {
            writer: to_holder(n),
            epoch: recorded.epoch + 1,
            reason: Reason::Initial,
        },
        Ok(None) => Decision::Wait {
            why: "no ready node is eligible (all excluded or recently failed promotion)".into(),
        },
    }
}

fn switchover(
    recorded: &Recorded,
    observed: &[ObservedNode],
    policy: &ElectionPolicy,
    to: Option<&str>,
) -> Decision {
    let holder = recorded.holder.as_ref();
    let target = match to {
        Some(name) => {
            let Some(node) = observed.iter().find(|n| n.name == name) else {
                return Decision::Rejected {
                    why: format!("{name} is not a known node"),
                };
            };
            if !node.running {
                return Decision::Rejected {
                    why: format!("{name} is not running"),
                };
            }
            if node.health != Health::Ready {
                return Decision::Rejected {
                    why: format!("{name} is not ready"),
                };
            }
            if policy.is_excluded(name) {
                return Decision::Rejected {
                    why: format!("{name} is excluded from election (election.exclude)"),
                };
            }
            if node.promotion_refused {
                return Decision::Rejected {
                    why: format!("{name} refused promotion (a backup or dev node)"),
                };
            }
            if is_holder(node, holder) {
                return if recorded.active {
                    Decision::Keep
                } else {
                    Decision::Reinstate {
                        reason: Reason::Switchover,
                    }
                };
            }
            node
        }
        None => {
            // An operator's explicit request overrides nothing but the automatic choice, so
            // penalized nodes stay out here as in failovers.
            match choose(recorded, observed, policy) {
                Err(need) => return need,
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Decision::Rejected {
                        why: "no ready candidate other than the current writer".into(),
                    }
                }
            }
        }
    };
    Decision::Elect {
        writer: to_holder(target),
        epoch: recorded.epoch + 1,
        reason: Reason::Switchover,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, health: Health) -> ObservedNode {
        ObservedNode {
            name: name.into(),
            address: format!("{name}:8080"),
            uid: None,
            running: true,
            health,
            created: None,
            progress: Progress::NotFetched,
            penalized: false,
            promotion_refused: false,
            lost_role: false,
        }
    }

    fn ready(name: &str) -> ObservedNode {
        node(name, Health::Ready)
    }

    fn holder(name: &str) -> Holder {
        Holder {
            name: name.into(),
            address: format!("{name}:8080"),
            uid: None,
        }
    }

    fn rec(epoch: u64, name: &str) -> Recorded {
        Recorded {
            epoch,
            holder: Some(holder(name)),
            active: true,
            history: Vec::new(),
        }
    }

    fn policy() -> ElectionPolicy {
        ElectionPolicy {
            candidate_order: CandidateOrder::Name,
            exclude: vec![],
            min_ready_nodes: 1,
        }
    }

    fn eval(r: &Recorded, o: &[ObservedNode], p: &ElectionPolicy) -> Decision {
        decide(r, o, p, Request::Evaluate)
    }

    fn elected(d: &Decision) -> (&str, u64, Reason) {
        match d {
            Decision::Elect {
                writer,
                epoch,
                reason,
            } => (writer.name.as_str(), *epoch, *reason),
            other => panic!("expected an election, got {other:?}"),
        }
    }

    // --- first election ---

    #[test]
    fn first_election_picks_the_lowest_name_in_natural_order() {
        let o = [ready("node-10"), ready("node-2"), ready("node-3")];
        let d = eval(&Recorded::default(), &o, &policy());
        assert_eq!(elected(&d), ("node-2", 1, Reason::Initial));
    }

    #[test]
    fn first_election_waits_for_every_verdict() {
        let o = [ready("node-1"), node("node-0", Health::Unknown)];
        assert!(matches!(
            eval(&Recorded::default(), &o, &policy()),
            Decision::Wait { .. }
        ));
        // An unready node has a verdict: no need to wait for it.
        let o = [ready("node-1"), node("node-0", Health::Unready)];
        assert_eq!(
            elected(&eval(&Recorded::default(), &o, &policy())).0,
            "node-1"
        );
        // An excluded or non-running node is not waited for either.
        let mut p = policy();
        p.exclude = vec![NamePattern::new("backup-*")];
        let mut stopped = node("node-0", Health::Unknown);
        stopped.running = false;
        let o = [ready("node-1"), node("backup-0", Health::Unknown), stopped];
        assert_eq!(elected(&eval(&Recorded::default(), &o, &p)).0, "node-1");
    }

    #[test]
    fn first_election_needs_min_ready_nodes() {
        let mut p = policy();
        p.min_ready_nodes = 3;
        let o = [ready("a"), ready("b"), node("c", Health::Unready)];
        match eval(&Recorded::default(), &o, &p) {
            Decision::Wait { why } => assert!(why.contains("min_ready_nodes"), "{why}"),
            d => panic!("{d:?}"),
        }
        let o = [ready("a"), ready("b"), ready("c")];
        assert_eq!(
            elected(&eval(&Recorded::default(), &o, &p)),
            ("a", 1, Reason::Initial)
        );
    }

    #[test]
    fn no_nodes_no_writer() {
        assert!(matches!(
            eval(&Recorded::default(), &[], &policy()),
            Decision::Wait { .. }
        ));
        let o = [node("a", Health::Unready)];
        assert!(matches!(
            eval(&Recorded::default(), &o, &policy()),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn excluded_nodes_are_never_elected() {
        let mut p = policy();
        p.exclude = vec![NamePattern::new("node-0"), NamePattern::new("*-backup")];
        let o = [ready("node-0"), ready("node-1"), ready("a-backup")];
        assert_eq!(elected(&eval(&Recorded::default(), &o, &p)).0, "node-1");
        // Writer node-1 lost: excluded ones are still not candidates -> suspend.
        let o = [
            ready("node-0"),
            node("node-1", Health::Unready),
            ready("a-backup"),
        ];
        assert_eq!(
            eval(&rec(4, "node-1"), &o, &p),
            Decision::Suspend {
                reason: Reason::WriterUnready
            }
        );
        // Only excluded nodes are ready at the start: no writer.
        let o = [ready("node-0")];
        assert!(matches!(
            eval(&Recorded::default(), &o, &p),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn an_excluded_writer_stays_sticky() {
        // exclude governs new elections; the recorded writer is not flipped by a config change.
        let mut p = policy();
        p.exclude = vec![NamePattern::new("node-0")];
        let o = [ready("node-0"), ready("node-1")];
        assert_eq!(eval(&rec(2, "node-0"), &o, &p), Decision::Keep);
    }

    // --- sticky writer ---

    #[test]
    fn sticky_writer_is_kept_even_when_a_better_candidate_exists() {
        let o = [ready("node-0"), ready("node-1"), ready("node-2")];
        assert_eq!(eval(&rec(7, "node-2"), &o, &policy()), Decision::Keep);
    }

    #[test]
    fn writer_with_unknown_health_is_kept() {
        // Right after a restart nothing has been probed: never flip the writer by itself.
        let o = [ready("node-0"), node("node-2", Health::Unknown)];
        assert_eq!(eval(&rec(7, "node-2"), &o, &policy()), Decision::Keep);
    }

    // --- failover ---

    #[test]
    fn failover_on_unready_writer_takes_the_next_epoch() {
        let o = [
            ready("node-0"),
            node("node-1", Health::Unready),
            ready("node-2"),
        ];
        let d = eval(&rec(7, "node-1"), &o, &policy());
        assert_eq!(elected(&d), ("node-0", 8, Reason::WriterUnready));
    }

    #[test]
    fn failover_when_the_writer_disappears_or_stops_running() {
        let o = [ready("node-0"), ready("node-2")];
        assert_eq!(
            elected(&eval(&rec(7, "node-1"), &o, &policy())),
            ("node-0", 8, Reason::WriterGone)
        );
        let mut w = ready("node-1");
        w.running = false;
        let o = [w, ready("node-2")];
        assert_eq!(
            elected(&eval(&rec(7, "node-1"), &o, &policy())),
            ("node-2", 8, Reason::WriterGone)
        );
    }

    #[test]
    fn a_recreated_pod_under_the_writers_name_is_a_new_node() {
        let r = Recorded {
            epoch: 3,
            holder: Some(Holder {
                name: "node-1".into(),
                address: "10.0.0.1:8080".into(),
                uid: Some("uid-old".into()),
            }),
            active: true,
            history: Vec::new(),
        };
        let mut recreated = ready("node-1");
        recreated.uid = Some("uid-new".into());
        let mut other = ready("node-2");
        other.uid = Some("uid-2".into());
        let d = eval(&r, &[recreated.clone(), other], &policy());
        assert_eq!(elected(&d), ("node-1", 4, Reason::WriterRecreated));
        // It may itself be the best candidate, but only as a new node with a new epoch and UID.
        if let Decision::Elect { writer, .. } = d {
            assert_eq!(writer.uid.as_deref(), Some("uid-new"));
        }
        // With the same UID it is the writer: kept.
        let mut same = recreated;
        same.uid = Some("uid-old".into());
        assert_eq!(eval(&r, &[same], &policy()), Decision::Keep);
    }

    #[test]
    fn the_old_writer_coming_back_stays_a_reader() {
        let o = [ready("node-0"), ready("node-1")];
        // node-0 was the writer at epoch 7, node-1 took over at epoch 8; node-0 is back and
        // would win by name, but the writer is sticky.
        assert_eq!(eval(&rec(8, "node-1"), &o, &policy()), Decision::Keep);
    }

    #[test]
    fn writer_lost_without_candidate_suspends_and_keeps_the_epoch() {
        let o = [
            node("node-0", Health::Unready),
            node("node-1", Health::Unready),
        ];
        assert_eq!(
            eval(&rec(5, "node-0"), &o, &policy()),
            Decision::Suspend {
                reason: Reason::WriterUnready
            }
        );
        // A candidate without a verdict yet is waited for, not given up on.
        let o = [
            node("node-0", Health::Unready),
            node("node-1", Health::Unknown),
        ];
        assert!(matches!(
            eval(&rec(5, "node-0"), &o, &policy()),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn failover_waits_only_for_unprobed_nodes_that_could_win() {
        // Right after a change of leader: node-0 not probed yet would win by name -> wait.
        let o = [
            node("node-0", Health::Unknown),
            ready("node-1"),
            node("node-2", Health::Unready),
        ];
        assert!(matches!(
            eval(&rec(3, "node-2"), &o, &policy()),
            Decision::Wait { .. }
        ));
        // An unprobed node that would rank after the best ready one does not delay the failover.
        let o = [
            ready("node-0"),
            node("node-1", Health::Unknown),
            node("node-2", Health::Unready),
        ];
        assert_eq!(elected(&eval(&rec(3, "node-2"), &o, &policy())).0, "node-0");
        // Excluded unprobed nodes are never waited for.
        let mut p = policy();
        p.exclude = vec![NamePattern::new("node-0")];
        let o = [
            node("node-0", Health::Unknown),
            ready("node-1"),
            node("node-2", Health::Unready),
        ];
        assert_eq!(elected(&eval(&rec(3, "node-2"), &o, &p)).0, "node-1");
        // most_caught_up: any unprobed candidate could be ahead.
        let mut p = policy();
        p.candidate_order = CandidateOrder::MostCaughtUp;
        let mut r1 = ready("node-0");
        r1.progress = Progress::Offset(9);
        let o = [
            r1,
            node("node-1", Health::Unknown),
            node("node-2", Health::Unready),
        ];
        assert!(matches!(
            eval(&rec(3, "node-2"), &o, &p),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn suspended_holder_is_reinstated_when_back() {
        let r = Recorded {
            active: false,
            ..rec(5, "node-1")
        };
        // Back and ready: reinstated even though node-0 would win by name.
        let o = [ready("node-0"), ready("node-1")];
        assert_eq!(
            eval(&r, &o, &policy()),
            Decision::Reinstate {
                reason: Reason::WriterBack
            }
        );
        // Holder not probed yet: wait for it.
        let o = [ready("node-0"), node("node-1", Health::Unknown)];
        assert_eq!(eval(&r, &o, &policy()), Decision::Keep);
        // Holder still down, another node is ready: elect it with the next epoch.
        let o = [ready("node-0"), node("node-1", Health::Unready)];
        assert_eq!(
            elected(&eval(&r, &o, &policy())),
            ("node-0", 6, Reason::WriterUnready)
        );
        // Nobody: stay suspended.
        let o = [node("node-1", Health::Unready)];
        assert_eq!(eval(&r, &o, &policy()), Decision::Keep);
    }

    #[test]
    fn penalized_nodes_are_skipped_automatically() {
        let mut bad = ready("node-0");
        bad.penalized = true;
        let o = [
            bad.clone(),
            ready("node-2"),
            node("node-1", Health::Unready),
        ];
        assert_eq!(elected(&eval(&rec(1, "node-1"), &o, &policy())).0, "node-2");
        let o = [bad, node("node-1", Health::Unready)];
        assert!(matches!(
            eval(&rec(1, "node-1"), &o, &policy()),
            Decision::Suspend { .. }
        ));
    }

    // --- nodes that refuse promotion, writers that lose their role ---

    #[test]
    fn only_a_400_to_start_is_a_refusal() {
        assert!(promotion_refused(PromotionStep::Start, Some(400)));
        for status in [None, Some(404), Some(409), Some(500), Some(503)] {
            assert!(
                !promotion_refused(PromotionStep::Start, status),
                "{status:?}"
            );
        }
        // `finish` answers 400 ("not a distributor") when called without a running switch: a
        // failed attempt, not a node that can never be the writer.
        assert!(!promotion_refused(PromotionStep::Finish, Some(400)));
    }

    #[test]
    fn a_refusal_lasts_while_the_pod_exists_or_for_a_while_without_pods() {
        assert_eq!(
            refusal_span(Some("uid-1")),
            RefusalSpan::WhilePodExists("uid-1".into())
        );
        assert_eq!(refusal_span(None), RefusalSpan::For(REFUSED_RETRY_AFTER));
        assert!(REFUSED_RETRY_AFTER >= Duration::from_secs(60));
    }

    #[test]
    fn a_node_that_refused_promotion_is_never_elected_even_ranked_first() {
        let mut backup = ready("node-0");
        backup.promotion_refused = true;
        // First election: node-0 would rank first by name.
        let o = [backup.clone(), ready("node-1")];
        assert_eq!(
            elected(&eval(&Recorded::default(), &o, &policy())),
            ("node-1", 1, Reason::Initial)
        );
        // Failover.
        let o = [
            backup.clone(),
            node("node-1", Health::Unready),
            ready("node-2"),
        ];
        assert_eq!(elected(&eval(&rec(4, "node-1"), &o, &policy())).0, "node-2");
        // Nobody else: suspend rather than elect it.
        let o = [backup.clone(), node("node-1", Health::Unready)];
        assert!(matches!(
            eval(&rec(4, "node-1"), &o, &policy()),
            Decision::Suspend { .. }
        ));
        // Named in a switchover: rejected, with the reason.
        let o = [backup.clone(), ready("node-1")];
        match decide(
            &rec(4, "node-1"),
            &o,
            &policy(),
            Request::Switchover { to: Some("node-0") },
        ) {
            Decision::Rejected { why } => assert!(why.contains("refused promotion"), "{why}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn an_unprobed_node_that_refused_promotion_does_not_hold_up_the_first_election() {
        let mut backup = node("node-0", Health::Unknown);
        backup.promotion_refused = true;
        let o = [backup, ready("node-1")];
        assert_eq!(
            elected(&eval(&Recorded::default(), &o, &policy())).0,
            "node-1"
        );
    }

    #[test]
    fn a_writer_that_lost_its_role_is_replaced_with_the_next_epoch() {
        let mut w = ready("node-0");
        w.lost_role = true;
        let o = [w.clone(), ready("node-1")];
        assert_eq!(
            elected(&eval(&rec(3, "node-0"), &o, &policy())),
            ("node-1", 4, Reason::WriterLostRole)
        );
        // Without it the same observation keeps the writer.
        let o = [ready("node-0"), ready("node-1")];
        assert_eq!(eval(&rec(3, "node-0"), &o, &policy()), Decision::Keep);
        // No other candidate: no writer is published (one that refuses every write is none).
        let o = [w.clone(), node("node-1", Health::Unready)];
        assert_eq!(
            eval(&rec(3, "node-0"), &o, &policy()),
            Decision::Suspend {
                reason: Reason::WriterLostRole
            }
        );
        assert_eq!(Reason::WriterLostRole.as_str(), "writer-lost-role");
    }

    // --- candidate order ---

    #[test]
    fn oldest_order_uses_creation_time_then_name() {
        let mut p = policy();
        p.candidate_order = CandidateOrder::Oldest;
        let mut a = ready("node-0");
        a.created = Some(300);
        let mut b = ready("node-1");
        b.created = Some(100);
        let mut c = ready("node-2");
        c.created = Some(100);
        let d = ready("node-3"); // unknown age: last
        let o = [a, b, c, d];
        assert_eq!(elected(&eval(&Recorded::default(), &o, &p)).0, "node-1");
    }

    #[test]
    fn most_caught_up_asks_for_progress_then_picks_the_highest_offset() {
        let mut p = policy();
        p.candidate_order = CandidateOrder::MostCaughtUp;
        let mut o = vec![
            node("node-0", Health::Unready),
            ready("node-1"),
            ready("node-2"),
            ready("node-3"),
        ];
        let r = rec(9, "node-0");
        match eval(&r, &o, &p) {
            Decision::NeedProgress { nodes } => {
                assert_eq!(nodes, vec!["node-1", "node-2", "node-3"]);
            }
            d => panic!("{d:?}"),
        }
        o[1].progress = Progress::Offset(40);
        o[2].progress = Progress::Offset(42);
        o[3].progress = Progress::Unavailable;
        assert_eq!(
            elected(&eval(&r, &o, &p)),
            ("node-2", 10, Reason::WriterUnready)
        );
        // Ties go by name; unavailable offsets come last.
        o[1].progress = Progress::Offset(42);
        assert_eq!(elected(&eval(&r, &o, &p)).0, "node-1");
        o[1].progress = Progress::Unavailable;
        o[2].progress = Progress::Unavailable;
        assert_eq!(elected(&eval(&r, &o, &p)).0, "node-1");
    }

    #[test]
    fn most_caught_up_does_not_read_progress_while_the_writer_is_healthy() {
        let mut p = policy();
        p.candidate_order = CandidateOrder::MostCaughtUp;
        let o = [ready("node-0"), ready("node-1")];
        assert_eq!(eval(&rec(1, "node-0"), &o, &p), Decision::Keep);
    }

    // --- epochs ---

    #[test]
    fn epoch_grows_by_one_per_change_and_never_reuses() {
        // A chain of failovers: each takes exactly the next epoch.
        let mut r = Recorded::default();
        let mut o = vec![ready("a"), ready("b"), ready("c")];
        let mut seen = vec![];
        for round in 0..3 {
            let (name, epoch, _) = match eval(&r, &o, &policy()) {
                Decision::Elect {
                    writer,
                    epoch,
                    reason,
                } => (writer.name.clone(), epoch, reason),
                d => panic!("round {round}: {d:?}"),
            };
            assert_eq!(epoch, r.epoch + 1);
            seen.push(epoch);
            r = rec(epoch, &name);
            let i = o.iter().position(|n| n.name == name).unwrap();
            o[i].health = Health::Unready;
        }
        assert_eq!(seen, vec![1, 2, 3]);
        // Suspend and reinstate keep the epoch; a later election still takes the next one.
        let suspended = Recorded {
            active: false,
            ..r.clone()
        };
        o[2].health = Health::Unready;
        assert_eq!(
            eval(&r, &o, &policy()),
            Decision::Suspend {
                reason: Reason::WriterUnready
            }
        );
        o[0].health = Health::Ready;
        assert_eq!(
            elected(&eval(&suspended, &o, &policy())),
            ("a", 4, Reason::WriterUnready)
        );
    }

    #[test]
    fn epoch_continues_from_the_record_after_a_restart() {
        // A record from an earlier run at epoch 41 with its holder gone: next is 42, never 1.
        let r = Recorded {
            epoch: 41,
            holder: Some(holder("old")),
            active: true,
            history: Vec::new(),
        };
        assert_eq!(elected(&eval(&r, &[ready("x")], &policy())).1, 42);
    }

    // --- switchover ---

    #[test]
    fn switchover_to_a_named_ready_node() {
        let o = [ready("node-0"), ready("node-1"), ready("node-2")];
        let d = decide(
            &rec(3, "node-0"),
            &o,
            &policy(),
            Request::Switchover { to: Some("node-2") },
        );
        assert_eq!(elected(&d), ("node-2", 4, Reason::Switchover));
    }

    #[test]
    fn switchover_to_the_best_candidate() {
        let o = [ready("node-0"), ready("node-1"), ready("node-2")];
        let d = decide(
            &rec(3, "node-0"),
            &o,
            &policy(),
            Request::Switchover { to: None },
        );
        assert_eq!(elected(&d), ("node-1", 4, Reason::Switchover));
        let o = [ready("node-0"), node("node-1", Health::Unready)];
        assert!(matches!(
            decide(
                &rec(3, "node-0"),
                &o,
                &policy(),
                Request::Switchover { to: None }
            ),
            Decision::Rejected { .. }
        ));
    }

    #[test]
    fn switchover_rejects_unfit_targets() {
        let mut p = policy();
        p.exclude = vec![NamePattern::new("node-3")];
        let mut stopped = ready("node-4");
        stopped.running = false;
        let o = [
            ready("node-0"),
            node("node-1", Health::Unready),
            node("node-2", Health::Unknown),
            ready("node-3"),
            stopped,
        ];
        for to in ["node-1", "node-2", "node-3", "node-4", "nope"] {
            let d = decide(
                &rec(3, "node-0"),
                &o,
                &p,
                Request::Switchover { to: Some(to) },
            );
            assert!(matches!(d, Decision::Rejected { .. }), "{to}: {d:?}");
        }
    }

    #[test]
    fn switchover_to_the_current_writer_is_a_no_op() {
        let o = [ready("node-0"), ready("node-1")];
        assert_eq!(
            decide(
                &rec(3, "node-0"),
                &o,
                &policy(),
                Request::Switchover { to: Some("node-0") }
            ),
            Decision::Keep
        );
    }

    #[test]
    fn switchover_names_a_penalized_node_explicitly() {
        let mut n = ready("node-1");
        n.penalized = true;
        let o = [ready("node-0"), n];
        let d = decide(
            &rec(3, "node-0"),
            &o,
            &policy(),
            Request::Switchover { to: Some("node-1") },
        );
        assert_eq!(elected(&d).0, "node-1");
    }

    // --- helpers ---

    #[test]
    fn natural_order() {
        let mut v = vec!["node-10", "node-2", "node-1", "node-02", "a", "node-"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec!["a", "node-", "node-1", "node-2", "node-02", "node-10"]
        );
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
    }

    #[test]
    fn glob_patterns() {
        assert!(NamePattern::new("node-*").matches("node-1"));
        assert!(NamePattern::new("*backup*").matches("storage-backup-0"));
        assert!(NamePattern::new("exact").matches("exact"));
        assert!(!NamePattern::new("exact").matches("exact-1"));
        assert!(!NamePattern::new("a*c").matches("abd"));
        assert!(NamePattern::new("*").matches(""));
    }
}
