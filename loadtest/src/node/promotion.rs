//! The promotion endpoints of SPEC.md ("Election config", `promotion`), modelled on Eclipse
//! DataGrid's activate-distributor: `start` begins the switch to writer, `finish` answers
//! `false` until it is done and then `true`, `distributor` says whether this node is the writer.
//! Like the real thing, a promoted node never turns back into a reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Reader,
    Promoting { done_at: Instant },
    Writer,
}

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
    delay: Duration,
    state: Mutex<State>,
    promoted: AtomicBool,
}

impl Promotion {
    pub fn new(require: bool, delay: Duration) -> Self {
        Promotion {
            require,
            delay,
            state: Mutex::new(State::Reader),
            promoted: AtomicBool::new(false),
        }
    }

    pub fn required(&self) -> bool {
        self.require
    }

    pub fn start(&self) -> State {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = start_step(*s, Instant::now(), self.delay);
        *s
    }

    /// Returns true once promoted. `catch_up` runs once, just before the node becomes the
    /// writer: a new writer must have applied the whole stream first.
    pub fn finish(&self, catch_up: impl FnOnce()) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was_writer = *s == State::Writer;
        let (next, done) = finish_step(*s, Instant::now());
        if done && !was_writer {
            catch_up();
            self.promoted.store(true, Ordering::Release);
            tracing::info!("promoted to writer");
        }
        *s = next;
        done
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
            "never demoted or restarted"
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
        let p = Promotion::new(true, Duration::ZERO);
        assert!(!p.may_write());
        let mut calls = 0;
        assert!(!p.finish(|| calls += 1), "finish before start");
        p.start();
        assert!(p.finish(|| calls += 1));
        assert!(p.finish(|| calls += 1));
        assert_eq!(calls, 1);
        assert!(p.may_write());
        assert!(Promotion::new(false, Duration::ZERO).may_write());
    }
}
