//! The distributor role, modelled on the storage node library's activate-distributor: `start`
//! begins the switch to writer, `finish` answers `false` until it is done and then `true`, the
//! legacy single call does both, `distributor` says whether this node is the writer. A backup
//! node refuses every one of these calls and is never the distributor.
//!
//! A real node never turns back into a reader while it runs; it comes back as one after a
//! restart. [`Promotion::demote`] (`POST /admin/demote`) stands in for that restart, so tests can
//! show the election what a writer that restarted unpromoted looks like.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Reader,
    Promoting { done_at: Instant },
    Writer,
}

/// An activation call on a node that can never be promoted (a backup node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPromotable;

/// `finish` at `now`: the new state and the answer (`true` = promotion complete).
pub fn finish_step(state: State, now: Instant) -> (State, bool) {
    match state {
        State::Writer => (State::Writer, true),
        State::Promoting { done_at } if now >= done_at => (State::Writer, true),
        other => (other, false),
    }
}

/// `start` at `now`: starting twice does not restart the clock, a writer stays a writer.
pub fn start_step(state: State, now: Instant, delay: Duration) -> State {
    match state {
        State::Reader => State::Promoting {
            done_at: now + delay,
        },
        other => other,
    }
}

#[derive(Debug)]
pub struct Promotion {
    require: bool,
    backup: bool,
    delay: Duration,
    state: Mutex<State>,
    /// Mirrors `state == Writer` for the write path, which must not wait for the state lock
    /// while a finish catches up with the log.
    promoted: AtomicBool,
}

impl Promotion {
    /// `require`: writes are refused until promoted. `backup`: never promoted.
    pub fn new(require: bool, backup: bool, delay: Duration) -> Self {
        Promotion {
            require,
            backup,
            delay,
            state: Mutex::new(State::Reader),
            promoted: AtomicBool::new(false),
        }
    }

    pub fn required(&self) -> bool {
        self.require
    }

    pub fn is_backup(&self) -> bool {
        self.backup
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self) -> Result<State, NotPromotable> {
        if self.backup {
            return Err(NotPromotable);
        }
        let mut s = self.lock();
        *s = start_step(*s, Instant::now(), self.delay);
        Ok(*s)
    }

    /// Ok(true) once promoted. `catch_up` runs once, just before the node becomes the writer:
    /// a new writer must have applied the whole stream first.
    pub fn finish(&self, catch_up: impl FnOnce()) -> Result<bool, NotPromotable> {
        if self.backup {
            return Err(NotPromotable);
        }
        let mut s = self.lock();
        let was_writer = *s == State::Writer;
        let (next, done) = finish_step(*s, Instant::now());
        if done && !was_writer {
            catch_up();
            self.promoted.store(true, Ordering::Release);
            tracing::info!("promoted to writer");
        }
        *s = next;
        Ok(done)
    }

    /// The legacy single call: start, wait out the promotion, finish. Blocks the calling
    /// thread. Ok(false) when a demotion came in between.
    pub fn activate(&self, catch_up: impl FnOnce()) -> Result<bool, NotPromotable> {
        if let State::Promoting { done_at } = self.start()? {
            std::thread::sleep(done_at.saturating_duration_since(Instant::now()));
        }
        self.finish(catch_up)
    }

    /// Drops the distributor role (what a restart does). Returns whether the node had it.
    pub fn demote(&self) -> bool {
        let mut s = self.lock();
        let was = *s == State::Writer;
        *s = State::Reader;
        self.promoted.store(false, Ordering::Release);
        if was {
            tracing::info!("demoted: no longer the distributor");
        }
        was
    }

    pub fn is_promoted(&self) -> bool {
        self.promoted.load(Ordering::Acquire)
    }

    pub fn may_write(&self) -> bool {
        !self.require || self.is_promoted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_is_false_until_the_delay_has_passed_then_true_forever() {
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        assert_eq!(finish_step(State::Reader, t0), (State::Reader, false));
        let s = start_step(State::Reader, t0, d);
        assert!(!finish_step(s, t0 + Duration::from_millis(50)).1);
        let (s, done) = finish_step(s, t0 + d);
        assert!(done);
        assert_eq!(s, State::Writer);
        assert_eq!(
            start_step(s, t0, d),
            State::Writer,
            "a start never restarts"
        );
        assert_eq!(finish_step(s, t0), (State::Writer, true));
    }

    #[test]
    fn starting_twice_keeps_the_first_deadline() {
        let t0 = Instant::now();
        let d = Duration::from_millis(100);
        let s = start_step(State::Reader, t0, d);
        assert_eq!(start_step(s, t0 + d, d), s);
    }

    #[test]
    fn promotion_catches_up_once_and_allows_writes() {
        let p = Promotion::new(true, false, Duration::ZERO);
        assert!(!p.may_write());
        let mut calls = 0;
        assert_eq!(p.finish(|| calls += 1), Ok(false), "finish before start");
        assert!(!p.may_write());
        p.start().unwrap();
        assert!(!p.may_write(), "started is not promoted");
        assert_eq!(p.finish(|| calls += 1), Ok(true));
        assert_eq!(p.finish(|| calls += 1), Ok(true));
        assert_eq!(calls, 1);
        assert!(p.may_write());
        assert!(p.is_promoted());
    }

    #[test]
    fn without_the_requirement_writes_are_allowed_but_the_role_is_still_earned() {
        let p = Promotion::new(false, false, Duration::ZERO);
        assert!(p.may_write());
        assert!(!p.is_promoted());
    }

    #[test]
    fn a_backup_refuses_every_activation_call_and_never_writes() {
        let p = Promotion::new(true, true, Duration::ZERO);
        assert_eq!(p.start(), Err(NotPromotable));
        let mut caught_up = false;
        assert_eq!(p.finish(|| caught_up = true), Err(NotPromotable));
        assert_eq!(p.activate(|| caught_up = true), Err(NotPromotable));
        assert!(!caught_up);
        assert!(!p.is_promoted());
        assert!(!p.may_write());
    }

    #[test]
    fn the_legacy_call_waits_out_the_delay_and_promotes() {
        let d = Duration::from_millis(30);
        let p = Promotion::new(true, false, d);
        let t0 = Instant::now();
        let mut calls = 0;
        assert_eq!(p.activate(|| calls += 1), Ok(true));
        assert!(
            t0.elapsed() >= d,
            "answered before the promotion took place"
        );
        assert!(p.may_write());
        assert_eq!(
            p.activate(|| calls += 1),
            Ok(true),
            "again: still the writer"
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn demotion_refuses_writes_until_promoted_again() {
        let p = Promotion::new(true, false, Duration::ZERO);
        assert!(!p.demote(), "a reader had no role to drop");
        p.start().unwrap();
        assert_eq!(p.finish(|| ()), Ok(true));
        assert!(p.demote());
        assert!(!p.is_promoted());
        assert!(!p.may_write());
        assert_eq!(
            p.finish(|| ()),
            Ok(false),
            "a demoted node needs a new start"
        );
        let mut calls = 0;
        p.start().unwrap();
        assert_eq!(p.finish(|| calls += 1), Ok(true));
        assert_eq!(calls, 1, "a second promotion catches up again");
        assert!(p.may_write());
    }

    #[test]
    fn a_demotion_during_a_promotion_cancels_it() {
        let p = Promotion::new(true, false, Duration::ZERO);
        p.start().unwrap();
        p.demote();
        assert_eq!(p.finish(|| ()), Ok(false));
        assert!(!p.may_write());
    }
}
