//! How current the topology is known to be: the follower's contact with writer-election
//! (reachable or not, and since when the topology was last known current), and the age that
//! `rw_proxy_topology_age_seconds` reports from it.
//!
//! Pure: every moment is passed in, so the transitions are tested without waiting. The shared
//! state (`state::Shared`) holds one [`Contact`] behind a mutex while the proxy follows the
//! election, none for a static topology, and sets the metrics.

use std::time::{Duration, Instant};

/// What one topology source that talks to something knows about its contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Contact {
    reachable: bool,
    /// The last moment the topology was known to be current: the last success, or the moment
    /// contact was lost (the open blocking query was fine until then). `None`: never reached.
    current_at: Option<Instant>,
}

impl Contact {
    /// A source that has just started: not reachable, nothing known yet.
    pub fn new() -> Contact {
        Contact::default()
    }

    /// Records the outcome of one contact with the election at `now`: it answered (or a
    /// blocking query is open and fine), or a request failed. Only the first failure after a
    /// success moves `current_at`: until that moment the open query would have brought any
    /// change.
    pub fn record(&mut self, ok: bool, now: Instant) {
        if ok || self.reachable {
            self.current_at = Some(now);
        }
        self.reachable = ok;
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable
    }

    /// How long before `now` the topology was last known current: zero while reachable (a
    /// change would arrive at once), else the time since contact was lost; `None` if the
    /// election was never reached.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        if self.reachable {
            return Some(Duration::ZERO);
        }
        self.current_at.map(|t| now.saturating_duration_since(t))
    }
}

/// `rw_proxy_topology_age_seconds`: following writer-election, the age its [`Contact`] reports;
/// a static topology (no contact) is as old as the moment it was loaded, `received_at`.
pub fn topology_age(
    contact: Option<&Contact>,
    received_at: Option<Instant>,
    now: Instant,
) -> Option<Duration> {
    match contact {
        Some(c) => c.age(now),
        None => received_at.map(|t| now.saturating_duration_since(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_new_contact_knows_nothing_yet() {
        let c = Contact::new();
        assert!(!c.is_reachable());
        assert_eq!(c.age(Instant::now()), None);
    }

    #[test]
    fn reachable_is_age_zero_however_long_ago_it_was_reached() {
        let t0 = Instant::now();
        let mut c = Contact::new();
        c.record(true, t0);
        assert!(c.is_reachable());
        assert_eq!(c.age(t0), Some(Duration::ZERO));
        assert_eq!(c.age(t0 + 60 * S), Some(Duration::ZERO));
    }

    #[test]
    fn the_age_counts_from_the_first_failure_after_a_success() {
        let t0 = Instant::now();
        let mut c = Contact::new();
        c.record(true, t0);
        c.record(false, t0 + 2 * S);
        assert!(!c.is_reachable());
        assert_eq!(c.age(t0 + 5 * S), Some(3 * S));
        // Further failures do not restart the clock: the topology is no more current for them.
        c.record(false, t0 + 4 * S);
        c.record(false, t0 + 9 * S);
        assert_eq!(c.age(t0 + 10 * S), Some(8 * S));
    }

    #[test]
    fn failures_before_any_success_leave_the_age_unknown() {
        let t0 = Instant::now();
        let mut c = Contact::new();
        c.record(false, t0);
        c.record(false, t0 + S);
        assert!(!c.is_reachable());
        assert_eq!(c.age(t0 + 2 * S), None);
    }

    #[test]
    fn reaching_it_again_makes_it_current() {
        let t0 = Instant::now();
        let mut c = Contact::new();
        c.record(true, t0);
        c.record(false, t0 + S);
        c.record(true, t0 + 7 * S);
        assert!(c.is_reachable());
        assert_eq!(c.age(t0 + 8 * S), Some(Duration::ZERO));
        // Lost again: counted from this loss, not the first one.
        c.record(false, t0 + 10 * S);
        assert_eq!(c.age(t0 + 12 * S), Some(2 * S));
    }

    #[test]
    fn an_earlier_now_is_age_zero_not_a_panic() {
        let t0 = Instant::now();
        let mut c = Contact::new();
        c.record(true, t0 + S);
        c.record(false, t0 + 2 * S);
        assert_eq!(c.age(t0), Some(Duration::ZERO));
    }

    #[test]
    fn a_static_topology_is_as_old_as_its_loading() {
        let t0 = Instant::now();
        assert_eq!(topology_age(None, None, t0), None);
        assert_eq!(topology_age(None, Some(t0), t0 + 3 * S), Some(3 * S));
        // Following the election, the contact decides, not when the last topology came.
        let mut c = Contact::new();
        assert_eq!(topology_age(Some(&c), Some(t0), t0 + 3 * S), None);
        c.record(true, t0 + S);
        assert_eq!(
            topology_age(Some(&c), Some(t0), t0 + 3 * S),
            Some(Duration::ZERO)
        );
    }
}
