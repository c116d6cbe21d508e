//! Reader balancing: `round_robin`, `least_conn`, `p2c_ewma`. Lock-free: each pick reads a
//! few atomics, never allocates.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::config::Balancing;

/// Live numbers about one upstream that the balancers read. Shared between snapshots (matched
/// by address) so that a topology change does not forget in-flight counts or latency.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    in_flight: AtomicU32,
    /// EWMA of time to first response byte, microseconds, as f64 bits (0 = no sample yet).
    ewma_micros: AtomicU64,
}

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.2;
/// Latency charged to an upstream that failed, so p2c_ewma steers away from it until real
/// samples pull the average back down.
pub const FAILURE_PENALTY_MICROS: f64 = 1_000_000.0;

impl UpstreamStats {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma_micros(&self) -> f64 {
        f64::from_bits(self.ewma_micros.load(Ordering::Relaxed))
    }

    /// Marks one more request in flight; the guard takes it back when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn observe_latency_micros(&self, sample: f64) {
        let _ = self
            .ewma_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old == 0.0 {
                    sample
                } else {
                    old + EWMA_ALPHA * (sample - old)
                };
                Some(new.to_bits())
            });
    }

    pub fn observe_failure(&self) {
        let _ = self
            .ewma_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(f64::from_bits(bits).max(FAILURE_PENALTY_MICROS).to_bits())
            });
    }
}

/// One request in flight on an upstream (see [`UpstreamStats::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<UpstreamStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Anything in a pool the balancer can look at.
pub trait HasStats {
    fn stats(&self) -> &UpstreamStats;
}

impl HasStats for UpstreamStats {
    fn stats(&self) -> &UpstreamStats {
        self
    }
}

/// Pool positions a request must not be sent to: tried already (retries skip them), or left
/// out beforehand (a read-your-writes read skips the readers that lack the write). Positions
/// past 63 are tracked together, as one: a retry may land on one of them tried before, and
/// leaving out any one of them leaves out all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    first: u64,
    /// Every position past 63 counts as tried.
    rest: bool,
}

/// Positions [`Tried`] tells apart.
pub const TRIED_POSITIONS: usize = 64;

impl Tried {
    pub fn contains(self, i: usize) -> bool {
        if i < TRIED_POSITIONS {
            self.first & (1 << i) != 0
        } else {
            self.rest
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i < TRIED_POSITIONS {
            self.first |= 1 << i;
        }
    }

    /// Counts every position past 63 as tried.
    pub fn insert_rest(&mut self) {
        self.rest = true;
    }

    pub fn is_empty(self) -> bool {
        self.first == 0 && !self.rest
    }
}

/// A balancer for one pool. Its counter is per pool snapshot; that a topology change resets
/// the round-robin position is harmless.
#[derive(Debug)]
pub struct Balancer {
    strategy: Balancing,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(strategy: Balancing) -> Self {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a position in `pool` that is not in `tried`; `None` when all are tried.
    pub fn pick<T: HasStats>(&self, pool: &[T], tried: Tried) -> Option<usize> {
        let n = pool.len();
        if n == 0 {
            return None;
        }
        match self.strategy {
            Balancing::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| !tried.contains(i))
            }
            Balancing::LeastConn => {
                // Scan from a rotating start so that ties (an idle pool) still spread.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| !tried.contains(i))
                    .min_by_key(|&i| pool[i].stats().in_flight())
            }
            Balancing::P2cEwma => pick_p2c(pool, tried, &mut rand::rng()),
        }
    }
}

/// Cost of sending one more request: expected latency times the queue it would join.
fn p2c_cost(s: &UpstreamStats) -> f64 {
    (s.ewma_micros() + 1.0) * (f64::from(s.in_flight()) + 1.0)
}

/// Power of two random choices: two distinct random candidates, the cheaper one wins.
fn pick_p2c<T: HasStats, R: Rng>(pool: &[T], tried: Tried, rng: &mut R) -> Option<usize> {
    let n = pool.len();
    let allowed = if tried.is_empty() {
        n
    } else {
        (0..n).filter(|&i| !tried.contains(i)).count()
    };
    let nth_allowed = |k: usize| -> usize {
        if tried.is_empty() {
            k
        } else {
            (0..n).filter(|&i| !tried.contains(i)).nth(k).unwrap_or(0)
        }
    };
    match allowed {
        0 => None,
        1 => Some(nth_allowed(0)),
        _ => {
            let a = rng.random_range(0..allowed);
            let mut b = rng.random_range(0..allowed - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth_allowed(a), nth_allowed(b));
            if p2c_cost(pool[b].stats()) < p2c_cost(pool[a].stats()) {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_and_in_flight() {
        let s = Arc::new(UpstreamStats::default());
        assert_eq!(s.ewma_micros(), 0.0);
        s.observe_latency_micros(100.0);
        assert_eq!(s.ewma_micros(), 100.0);
        s.observe_latency_micros(200.0);
        assert!((s.ewma_micros() - 120.0).abs() < 1e-9);
        s.observe_failure();
        assert_eq!(s.ewma_micros(), FAILURE_PENALTY_MICROS);
        let g1 = s.begin();
        let g2 = s.begin();
        assert_eq!(s.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(s.in_flight(), 0);
    }
    use std::sync::Arc;

    fn pool(n: usize) -> Vec<Arc<UpstreamStats>> {
        (0..n).map(|_| Arc::new(UpstreamStats::default())).collect()
    }

    impl HasStats for Arc<UpstreamStats> {
        fn stats(&self) -> &UpstreamStats {
            self
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let b = Balancer::new(Balancing::RoundRobin);
        let p = pool(3);
        let picks: Vec<usize> = (0..7)
            .map(|_| b.pick(&p, Tried::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_skips_tried_and_gives_up_when_all_are() {
        let b = Balancer::new(Balancing::RoundRobin);
        let p = pool(3);
        let mut tried = Tried::default();
        tried.insert(1);
        for _ in 0..6 {
            assert_ne!(b.pick(&p, tried), Some(1));
        }
        tried.insert(0);
        tried.insert(2);
        assert_eq!(b.pick(&p, tried), None);
        assert_eq!(b.pick::<Arc<UpstreamStats>>(&[], Tried::default()), None);
    }

    #[test]
    fn least_conn_picks_the_least_busy() {
        let b = Balancer::new(Balancing::LeastConn);
        let p = pool(3);
        let _g0 = [p[0].begin(), p[0].begin()];
        let _g2 = p[2].begin();
        for _ in 0..5 {
            assert_eq!(b.pick(&p, Tried::default()), Some(1));
        }
        let _g1 = [p[1].begin(), p[1].begin(), p[1].begin()];
        // Now 2 has one in flight, 0 two, 1 three.
        assert_eq!(b.pick(&p, Tried::default()), Some(2));
        let mut tried = Tried::default();
        tried.insert(2);
        assert_eq!(b.pick(&p, tried), Some(0));
    }

    #[test]
    fn least_conn_spreads_ties() {
        let b = Balancer::new(Balancing::LeastConn);
        let p = pool(2);
        let picks: Vec<usize> = (0..4)
            .map(|_| b.pick(&p, Tried::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn p2c_ewma_prefers_the_fast_upstream() {
        let b = Balancer::new(Balancing::P2cEwma);
        let p = pool(2);
        p[0].observe_latency_micros(50_000.0);
        p[1].observe_latency_micros(500.0);
        let fast = (0..1000)
            .filter(|_| b.pick(&p, Tried::default()) == Some(1))
            .count();
        // With two upstreams both are always the candidates, so the cheaper one always wins.
        assert_eq!(fast, 1000);
    }

    #[test]
    fn p2c_ewma_weighs_in_flight_against_latency() {
        let b = Balancer::new(Balancing::P2cEwma);
        let p = pool(2);
        p[0].observe_latency_micros(1000.0);
        p[1].observe_latency_micros(1000.0);
        // Same latency: the one with fewer requests in flight wins.
        let _busy: Vec<_> = (0..5).map(|_| p[0].begin()).collect();
        assert!((0..100).all(|_| b.pick(&p, Tried::default()) == Some(1)));
        // Much faster but queued: 100us * 11 = 1.1ms beats 1ms * 6 = 6ms.
        p[1].observe_latency_micros(100.0);
        for _ in 0..30 {
            p[1].observe_latency_micros(100.0);
        }
        let _q: Vec<_> = (0..10).map(|_| p[1].begin()).collect();
        assert!((0..100).all(|_| b.pick(&p, Tried::default()) == Some(1)));
    }

    #[test]
    fn p2c_ewma_spreads_over_a_large_pool_and_avoids_the_slowest() {
        let b = Balancer::new(Balancing::P2cEwma);
        let p = pool(4);
        for (i, s) in p.iter().enumerate() {
            s.observe_latency_micros(if i == 3 { 1e6 } else { 1000.0 });
        }
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[b.pick(&p, Tried::default()).unwrap()] += 1;
        }
        // The slow one only wins when both choices are it, which p2c never draws twice.
        assert_eq!(counts[3], 0, "{counts:?}");
        for c in &counts[..3] {
            assert!(*c > 500, "{counts:?}");
        }
    }

    #[test]
    fn p2c_ewma_respects_tried() {
        let b = Balancer::new(Balancing::P2cEwma);
        let p = pool(3);
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        assert!((0..50).all(|_| b.pick(&p, tried) == Some(1)));
        tried.insert(1);
        assert_eq!(b.pick(&p, tried), None);
    }

    #[test]
    fn positions_past_the_first_64_count_as_one() {
        let mut tried = Tried::default();
        tried.insert(70);
        assert!(!tried.contains(70), "a retry may land there again");
        assert!(tried.is_empty());
        tried.insert_rest();
        assert!(tried.contains(64) && tried.contains(500));
        assert!(!tried.contains(63));
        assert!(!tried.is_empty());
        let p = pool(100);
        for strategy in [
            Balancing::RoundRobin,
            Balancing::LeastConn,
            Balancing::P2cEwma,
        ] {
            let b = Balancer::new(strategy);
            let mut only_5 = Tried::default();
            only_5.insert_rest();
            (0..64).filter(|&i| i != 5).for_each(|i| only_5.insert(i));
            assert!(
                (0..50).all(|_| b.pick(&p, only_5) == Some(5)),
                "{strategy:?}"
            );
            only_5.insert(5);
            assert_eq!(b.pick(&p, only_5), None, "{strategy:?}");
        }
    }

    #[test]
    fn a_failure_penalty_steers_p2c_away() {
        let b = Balancer::new(Balancing::P2cEwma);
        let p = pool(2);
        p[0].observe_latency_micros(1000.0);
        p[1].observe_latency_micros(1000.0);
        p[0].observe_failure();
        assert!((0..100).all(|_| b.pick(&p, Tried::default()) == Some(1)));
    }
}
