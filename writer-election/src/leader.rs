//! HA: replicas compete for a leader Lease with the client-go leader-election protocol.
//!
//! kube 5 has no leader election of its own, and the small crates that add one either patch
//! without a resourceVersion or take over on the holder's own `renewTime` (trusting clocks across
//! machines). This is the client-go algorithm (`tryAcquireOrRenew`), in full:
//! - read the Lease; remember *when we saw it change* (our monotonic clock, not its timestamps);
//! - a Lease held by somebody else is taken only after it was seen unchanged for its whole
//!   `leaseDurationSeconds` (an empty holder, as left by a released lease, at once);
//! - every write is a replace with the resourceVersion just read (409 = lost the race);
//! - the leader renews every `retry_period`; if it cannot renew within `renew_deadline` of its last
//!   successful renewal it stops leading. `renew_deadline < lease_duration`, so a leader stops
//!   deciding before anyone else may start.
//!
//! [`LeaderState::valid_until`] carries that deadline to the engine, which checks it right before
//! every promotion and record write, so a stuck elector task cannot extend a leadership either.
//!
//! The leader also writes its own URL into the Lease (annotation [`URL_ANNOTATION`], in the same
//! write as the holder, so the two always belong together). Followers read it from there and
//! forward to the leader what only the leader can do with (see `api`: topology queries and drain
//! acknowledgements, for the switchover drain barrier).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

/// The leader's URL in the leader Lease (`http://<pod IP>:<port>`).
pub const URL_ANNOTATION: &str = "writer-election.microstream.one/url";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    pub is_leader: bool,
    /// Deciding is safe until then; `None` = no HA, always.
    pub valid_until: Option<Instant>,
    /// The holder as last observed (for /health/ready and 503 answers of followers).
    pub leader: Option<String>,
    /// The holder's URL as written in the Lease by the holder itself (followers forward there).
    pub leader_url: Option<String>,
}

impl LeaderState {
    /// Without HA the single replica always decides.
    pub fn always(identity: &str) -> Self {
        LeaderState {
            is_leader: true,
            valid_until: None,
            leader: Some(identity.to_string()),
            leader_url: None,
        }
    }

    pub fn follower(leader: Option<String>, leader_url: Option<String>) -> Self {
        LeaderState {
            is_leader: false,
            valid_until: None,
            leader,
            leader_url,
        }
    }

    /// Leading, and safe to decide until `valid_until` (the renew deadline).
    fn leading(identity: &str, url: Option<String>, valid_until: Instant) -> Self {
        LeaderState {
            is_leader: true,
            valid_until: Some(valid_until),
            leader: Some(identity.to_string()),
            leader_url: url,
        }
    }

    pub fn leading_now(&self) -> bool {
        self.leading_at(Instant::now())
    }

    /// Deciding is safe at `now`: leading, and the renew deadline has not passed.
    pub fn leading_at(&self, now: Instant) -> bool {
        self.is_leader && self.valid_until.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Written into the Lease while leading; `None`: followers cannot forward to us.
    pub url: Option<String>,
}

/// The fields of the record that matter for "did it change" (client-go compares the raw record).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    duration_secs: i32,
    acquire: Option<String>,
    renew: Option<String>,
    transitions: i32,
}

/// What a replica does with the leader Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeOver {
    /// Somebody else holds it and may still be renewing it: leave it alone.
    Follow,
    /// It is ours: write it again, same acquire time, same transitions.
    Renew,
    /// Free, released, or its holder stopped renewing: take it, one more transition.
    Acquire,
}

/// **The take-over rule.** `seen_since`: when this replica first saw `rec` as it is now, on its
/// own monotonic clock. A holder is presumed alive until its record stayed unchanged for the
/// whole duration it asked for (ours when it asked for none); the timestamps inside the record
/// are never compared with our clock, so clock skew between replicas cannot hand the Lease over
/// early or keep it late.
fn take_over(
    rec: &Record,
    seen_since: Instant,
    now: Instant,
    identity: &str,
    default_duration: Duration,
) -> TakeOver {
    if rec.holder == identity {
        return TakeOver::Renew;
    }
    // An empty holder is what a released Lease leaves: nobody to wait for.
    if rec.holder.is_empty() {
        return TakeOver::Acquire;
    }
    let duration = u64::try_from(rec.duration_secs)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    if seen_since + duration > now {
        TakeOver::Follow
    } else {
        TakeOver::Acquire
    }
}

/// When `rec` was first seen as it is: kept while the record is unchanged, `now` on any change
/// (a renewal by the holder restarts the wait).
fn seen_since(observed: Option<&(Record, Instant)>, rec: &Record, now: Instant) -> Instant {
    match observed {
        Some((seen, at)) if seen == rec => *at,
        _ => now,
    }
}

/// The acquire time and transitions count to write: a renewal keeps them, a take-over starts a
/// new term (`leaseTransitions` counts leader changes).
fn term(
    renewing: bool,
    acquired: Option<MicroTime>,
    transitions: i32,
    now: MicroTime,
) -> (MicroTime, i32) {
    if renewing {
        (acquired.unwrap_or(now), transitions)
    } else {
        (now, transitions.saturating_add(1))
    }
}

fn record_of(lease: &Lease) -> Record {
    let s = lease.spec.clone().unwrap_or_default();
    Record {
        holder: s.holder_identity.unwrap_or_default(),
        duration_secs: s.lease_duration_seconds.unwrap_or(0),
        acquire: s.acquire_time.map(|t| t.0.to_string()),
        renew: s.renew_time.map(|t| t.0.to_string()),
        transitions: s.lease_transitions.unwrap_or(0),
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    observed: Option<(Record, Instant)>,
}

enum Attempt {
    Leader,
    /// The holder and its URL.
    Follower(Option<String>, Option<String>),
}

fn url_of(lease: &Lease) -> Option<String> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(URL_ANNOTATION))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// Sets (or, for `None`, removes) our URL annotation.
fn set_url(meta: &mut ObjectMeta, url: Option<&str>) {
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    match url {
        Some(u) => {
            annotations.insert(URL_ANNOTATION.to_string(), u.to_string());
        }
        None => {
            annotations.remove(URL_ANNOTATION);
        }
    }
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, cfg: LeaderConfig) -> Self {
        LeaderElector {
            api,
            cfg,
            observed: None,
        }
    }

    fn spec(&self, acquire: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, String> {
        let name = &self.cfg.lease_name;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| format!("get leader Lease {name}: {e}"))?;
        let Some(mut lease) = current else {
            let mut metadata = ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            };
            set_url(&mut metadata, self.cfg.url.as_deref());
            let lease = Lease {
                metadata,
                spec: Some(self.spec(now, 0)),
            };
            let created = self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(|e| format!("create leader Lease {name}: {e}"))?;
            self.observed = Some((record_of(&created), Instant::now()));
            return Ok(Attempt::Leader);
        };
        let old = record_of(&lease);
        let read_at = Instant::now();
        let since = seen_since(self.observed.as_ref(), &old, read_at);
        self.observed = Some((old.clone(), since));
        let rule = take_over(
            &old,
            since,
            read_at,
            &self.cfg.identity,
            self.cfg.lease_duration,
        );
        if rule == TakeOver::Follow {
            return Ok(Attempt::Follower(Some(old.holder), url_of(&lease)));
        }
        let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
        let (acquire, transitions) = term(rule == TakeOver::Renew, acquired, old.transitions, now);
        lease.spec = Some(self.spec(acquire, transitions));
        set_url(&mut lease.metadata, self.cfg.url.as_deref());
        // `lease.metadata.resourceVersion` is the one just read: a concurrent writer gets 409.
        let written = self
            .api
            .replace(name, &PostParams::default(), &lease)
            .await
            .map_err(|e| format!("update leader Lease {name}: {e}"))?;
        self.observed = Some((record_of(&written), Instant::now()));
        if rule == TakeOver::Acquire {
            info!(identity = %self.cfg.identity, previous = %old.holder, "acquired the leader Lease");
        }
        Ok(Attempt::Leader)
    }

    /// Gives the lease up on shutdown so another replica takes over at once (client-go's
    /// ReleaseOnCancel): empty holder, 1 s duration.
    async fn release(&mut self) {
        let name = &self.cfg.lease_name;
        let Ok(Some(mut lease)) = self.api.get_opt(name).await else {
            return;
        };
        let old = record_of(&lease);
        if old.holder != self.cfg.identity {
            return;
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        set_url(&mut lease.metadata, None);
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(old.transitions),
            ..Default::default()
        });
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => info!(identity = %self.cfg.identity, "released the leader Lease"),
            Err(e) => warn!(error = %e, "could not release the leader Lease"),
        }
    }

    /// The renew deadline counts from the start of the renewal that succeeded: the write may
    /// have landed at any moment of the call, and no other replica can have seen it earlier, so
    /// we stop leading before any of them may take over.
    fn leading_since(&self, renewed_at: Instant) -> LeaderState {
        LeaderState::leading(
            &self.cfg.identity,
            self.cfg.url.clone(),
            renewed_at + self.cfg.renew_deadline,
        )
    }

    fn jittered(&self) -> Duration {
        let f: f64 = rand::rng().random_range(1.0..1.2);
        self.cfg.retry_period.mul_f64(f)
    }

    /// Runs until `stop` fires; publishes every change of leadership on `tx`.
    pub async fn run(mut self, tx: watch::Sender<LeaderState>, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            // Candidate: try every retry_period (with jitter) until we hold the lease.
            let mut renewed_at;
            loop {
                if *stop.borrow() {
                    return;
                }
                let started = Instant::now();
                let attempt = match tokio::time::timeout(
                    self.cfg.renew_deadline,
                    self.try_acquire_or_renew(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err("no answer from the API".to_string()),
                };
                match attempt {
                    Ok(Attempt::Leader) => {
                        renewed_at = started;
                        failing = false;
                        break;
                    }
                    Ok(Attempt::Follower(leader, url)) => {
                        failing = false;
                        tx.send_if_modified(|s| {
                            let new = LeaderState::follower(leader, url);
                            let changed = *s != new;
                            *s = new;
                            changed
                        });
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "leader election: cannot reach the leader Lease");
                            failing = true;
                        }
                    }
                }
                let wait = self.jittered();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
            info!(identity = %self.cfg.identity, "leading");
            tx.send_replace(self.leading_since(renewed_at));
            // Leader: renew every retry_period; give up once renew_deadline passed without one.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.retry_period) => {}
                    _ = stop.changed() => {
                        tx.send_replace(LeaderState::follower(None, None));
                        let _ = tokio::time::timeout(Duration::from_secs(2), self.release()).await;
                        return;
                    }
                }
                let deadline = renewed_at + self.cfg.renew_deadline;
                let started = Instant::now();
                match tokio::time::timeout_at(deadline.into(), self.try_acquire_or_renew()).await {
                    Ok(Ok(Attempt::Leader)) => {
                        renewed_at = started;
                        tx.send_replace(self.leading_since(renewed_at));
                    }
                    Ok(Ok(Attempt::Follower(leader, url))) => {
                        warn!(new_leader = ?leader, "leader Lease taken by another replica");
                        tx.send_replace(LeaderState::follower(leader, url));
                        break;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "could not renew the leader Lease");
                        if Instant::now() >= deadline {
                            tx.send_replace(LeaderState::follower(None, None));
                            warn!("renew deadline passed: stopped leading");
                            break;
                        }
                    }
                    Err(_) => {
                        tx.send_replace(LeaderState::follower(None, None));
                        warn!("renew deadline passed: stopped leading");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, duration_secs: i32) -> Record {
        Record {
            holder: holder.into(),
            duration_secs,
            acquire: Some("2026-01-01T00:00:00Z".into()),
            renew: Some("2026-01-01T00:00:05Z".into()),
            transitions: 3,
        }
    }

    fn rule(rec: &Record, unchanged_for: Duration) -> TakeOver {
        let now = Instant::now() + Duration::from_secs(3600);
        take_over(rec, now - unchanged_for, now, "me", DURATION)
    }

    #[test]
    fn another_holders_lease_is_taken_once_seen_unchanged_for_its_duration() {
        let rec = held_by("other", 15);
        for (unchanged_ms, expected) in [
            (0, TakeOver::Follow),
            (14_999, TakeOver::Follow),
            (15_000, TakeOver::Acquire),
            (600_000, TakeOver::Acquire),
        ] {
            let got = rule(&rec, Duration::from_millis(unchanged_ms));
            assert_eq!(got, expected, "unchanged for {unchanged_ms} ms");
        }
    }

    #[test]
    fn the_holders_own_duration_counts_and_ours_when_it_has_none() {
        let short = held_by("other", 2);
        assert_eq!(rule(&short, Duration::from_secs(2)), TakeOver::Acquire);
        for unset in [0, -5] {
            let rec = held_by("other", unset);
            assert_eq!(rule(&rec, Duration::from_secs(14)), TakeOver::Follow);
            assert_eq!(rule(&rec, DURATION), TakeOver::Acquire);
        }
    }

    #[test]
    fn our_own_lease_is_renewed_however_old() {
        for unchanged_for in [Duration::ZERO, Duration::from_secs(600)] {
            assert_eq!(rule(&held_by("me", 15), unchanged_for), TakeOver::Renew);
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let rec = held_by("", 1);
        assert_eq!(rule(&rec, Duration::ZERO), TakeOver::Acquire);
    }

    #[test]
    fn the_holders_timestamps_are_not_compared_with_our_clock() {
        // A holder whose clock runs far behind (renewTime years ago) but that renews is alive...
        let mut behind = held_by("other", 15);
        behind.renew = Some("2001-01-01T00:00:00Z".into());
        assert_eq!(rule(&behind, Duration::from_secs(1)), TakeOver::Follow);
        // ...and one whose clock runs ahead (renewTime in the future) but stopped is not.
        let mut ahead = held_by("other", 15);
        ahead.renew = Some("2099-01-01T00:00:00Z".into());
        assert_eq!(rule(&ahead, Duration::from_secs(15)), TakeOver::Acquire);
    }

    #[test]
    fn the_wait_restarts_on_every_change_of_the_record() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let rec = held_by("other", 15);
        assert_eq!(seen_since(None, &rec, t0), t0);
        let observed = (rec.clone(), t0);
        assert_eq!(seen_since(Some(&observed), &rec, later), t0, "unchanged");
        let mut renewed = rec.clone();
        renewed.renew = Some("2026-01-01T00:00:07Z".into());
        assert_eq!(seen_since(Some(&observed), &renewed, later), later);
        let mut transferred = rec;
        transferred.transitions += 1;
        assert_eq!(seen_since(Some(&observed), &transferred, later), later);
    }

    #[test]
    fn a_renewal_keeps_the_term_and_a_take_over_starts_one() {
        let then = MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        assert_eq!(
            term(true, Some(then.clone()), 4, now.clone()),
            (then.clone(), 4)
        );
        assert_eq!(term(true, None, 4, now.clone()), (now.clone(), 4));
        assert_eq!(term(false, Some(then), 4, now.clone()), (now.clone(), 5));
        assert_eq!(term(false, None, i32::MAX, now.clone()), (now, i32::MAX));
    }

    #[test]
    fn leading_ends_at_the_renew_deadline() {
        let t0 = Instant::now();
        let leader = LeaderState::leading("me", None, t0 + Duration::from_secs(10));
        assert!(leader.leading_at(t0));
        assert!(leader.leading_at(t0 + Duration::from_millis(9_999)));
        assert!(!leader.leading_at(t0 + Duration::from_secs(10)));
        assert!(LeaderState::always("me").leading_at(t0 + Duration::from_secs(3600)));
        assert!(!LeaderState::follower(Some("other".into()), None).leading_at(t0));
    }
}
