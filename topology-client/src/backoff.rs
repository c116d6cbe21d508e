//! The retry delays every loop in the workspace uses after a failure, built on `backon`.
//!
//! A policy is a [`backon::ExponentialBuilder`]: build it for a fresh sequence (after a success),
//! take `next()` for the pause before the next try. The sequences never end: our loops retry
//! until they succeed or are stopped, so the caller decides when to give up.

use std::time::Duration;

pub use backon::{BackoffBuilder, ExponentialBuilder};

/// `initial`, then twice the last delay, up to `max`, without jitter: for a single caller whose
/// retries do not meet others' (a proxy acknowledging its own drain).
pub fn doubling(initial: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_factor(2.0)
        .with_min_delay(initial)
        .with_max_delay(max)
        .without_max_times()
}

/// The same doubling from `initial` to `max`, each delay drawn from its upper half
/// (`[d/2, d)`): many callers that failed together (every proxy when the election restarts) do
/// not retry in step, and no delay is longer than the unjittered one.
///
/// backon adds a random share of the delay on top (`[d, 2d)`), so the sequence it jitters starts
/// from half of each bound.
pub fn doubling_jittered(initial: Duration, max: Duration) -> ExponentialBuilder {
    doubling(initial / 2, max / 2).with_jitter()
}

/// The `n`-th delay (from 0) of [`doubling`], exactly: `initial * 2^n`, at most `max`. For state
/// kept between events rather than a retry loop (how long held writes wait after the `n`-th
/// refusal in a row, how long a failing URL is skipped), where a delay is looked up by count and
/// compared with exact figures; backon's sequence is computed in f32.
pub fn doubled(initial: Duration, max: Duration, n: u32) -> Duration {
    initial.saturating_mul(1u32 << n.min(31)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// backon computes in f32: a delay is a few nanoseconds off the round figure.
    fn millis(d: Duration) -> u64 {
        (d.as_secs_f64() * 1000.0).round() as u64
    }

    #[test]
    fn doubling_starts_at_initial_and_stays_at_max() {
        let delays: Vec<u64> = doubling(ms(50), ms(1000))
            .build()
            .take(8)
            .map(millis)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn doubled_is_the_nth_delay_of_doubling() {
        let seq: Vec<u64> = doubling(ms(50), ms(1000))
            .build()
            .take(40)
            .map(millis)
            .collect();
        let exact: Vec<u64> = (0..40)
            .map(|n| doubled(ms(50), ms(1000), n).as_millis() as u64)
            .collect();
        assert_eq!(seq, exact);
        assert_eq!(doubled(ms(50), ms(1000), 0), ms(50));
        assert_eq!(doubled(ms(50), ms(1000), u32::MAX), ms(1000));
        assert_eq!(doubled(Duration::MAX, Duration::MAX, 31), Duration::MAX);
    }

    #[test]
    fn doubling_does_not_run_out() {
        assert_eq!(doubling(ms(1), ms(2)).build().take(1000).count(), 1000);
        assert_eq!(
            doubling_jittered(ms(1), ms(2)).build().take(1000).count(),
            1000
        );
    }

    #[test]
    fn a_fresh_build_starts_over() {
        let policy = doubling(ms(50), ms(1000));
        let mut first = policy.build();
        first.next();
        first.next();
        assert_eq!(first.next().map(millis), Some(200));
        assert_eq!(policy.build().next().map(millis), Some(50));
    }

    #[test]
    fn jittered_delays_lie_in_the_upper_half_of_the_unjittered_ones() {
        for _ in 0..200 {
            let unjittered = doubling(ms(100), ms(5000)).build();
            for (i, (d, full)) in doubling_jittered(ms(100), ms(5000))
                .build()
                .zip(unjittered)
                .take(12)
                .enumerate()
            {
                let (d, full) = (millis(d), millis(full));
                assert!(d >= full / 2 && d <= full, "delay {i}: {d}ms for {full}ms");
            }
        }
    }

    #[test]
    fn jittered_delays_differ() {
        let a: Vec<Duration> = doubling_jittered(ms(100), ms(5000))
            .build()
            .take(8)
            .collect();
        let b: Vec<Duration> = doubling_jittered(ms(100), ms(5000))
            .build()
            .take(8)
            .collect();
        assert_ne!(a, b, "two followers must not retry in step");
    }
}
