//! The lag gate: whether a reader stays out of the read pool for lagging
//! (`routing.max_reader_lag`). One pure function, [`excluded`], applied when a topology or a
//! configuration arrives (never per request) by `state::Active::build`.
//!
//! A reader leaves when its published lag is over a limit and comes back only once it is under
//! half of every limit that is set, so a reader hovering at a limit does not flap in and out
//! with each progress round.

use std::time::Duration;

use crate::config::MaxReaderLag;
use crate::topology::Progress;

/// `routing.max_reader_lag` in the units the topology document publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub offsets: Option<u64>,
    pub duration_ms: Option<u64>,
}

impl Limits {
    pub fn new(cfg: &MaxReaderLag) -> Limits {
        Limits {
            offsets: cfg.offsets,
            // Rounded up: a limit under a millisecond still allows no lag of one.
            duration_ms: cfg.duration.map(|d| ceil_ms(d).max(1)),
        }
    }
}

fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Whether a reader is out of the read pool after this round.
///
/// `was_excluded`: its state before. `progress`: what the round published for it (`None`: it
/// could not be read, and the reader keeps its state). A lag is over a limit when it is
/// certainly past it, and under half of it when it certainly is; a `lag_at_least` duration is
/// only a lower bound, so it can show a reader over the duration limit but never under half
/// of it. In between, the reader keeps its state.
pub fn excluded(was_excluded: bool, progress: Option<&Progress>, limits: &Limits) -> bool {
    let Some(p) = progress else {
        return was_excluded;
    };
    let over_offsets = limits.offsets.is_some_and(|l| p.lag_offsets > l);
    let over_duration = limits.duration_ms.is_some_and(|l| p.lag_ms > l);
    if over_offsets || over_duration {
        return true;
    }
    // Strictly under half (`2 * lag < limit`) without overflow.
    let under_half = |lag: u64, limit: u64| lag < limit.div_ceil(2);
    let offsets_fine = limits.offsets.is_none_or(|l| under_half(p.lag_offsets, l));
    let duration_fine = limits
        .duration_ms
        .is_none_or(|l| !p.lag_at_least && under_half(p.lag_ms, l));
    if offsets_fine && duration_fine {
        return false;
    }
    was_excluded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lag_offsets: u64, lag_ms: u64) -> Progress {
        Progress {
            offset: 1_000_000u64.saturating_sub(lag_offsets),
            lag_offsets,
            lag_ms,
            lag_at_least: false,
        }
    }

    fn at_least(lag_offsets: u64, lag_ms: u64) -> Progress {
        Progress {
            lag_at_least: true,
            ..p(lag_offsets, lag_ms)
        }
    }

    const OFFSETS: Limits = Limits {
        offsets: Some(100),
        duration_ms: None,
    };
    const DURATION: Limits = Limits {
        offsets: None,
        duration_ms: Some(5000),
    };
    const BOTH: Limits = Limits {
        offsets: Some(100),
        duration_ms: Some(5000),
    };

    #[test]
    fn a_reader_leaves_when_over_either_limit() {
        for was in [false, true] {
            assert!(excluded(was, Some(&p(101, 0)), &OFFSETS));
            assert!(excluded(was, Some(&p(0, 5001)), &DURATION));
            assert!(excluded(was, Some(&p(101, 0)), &BOTH));
            assert!(excluded(was, Some(&p(0, 5001)), &BOTH));
        }
        // At the limit is not over it.
        assert!(!excluded(false, Some(&p(100, 0)), &OFFSETS));
        assert!(!excluded(false, Some(&p(0, 5000)), &DURATION));
        // A limit that is not set is never over.
        assert!(!excluded(false, Some(&p(1_000_000, 0)), &DURATION));
        assert!(!excluded(false, Some(&p(0, u64::MAX)), &OFFSETS));
    }

    #[test]
    fn it_comes_back_only_under_half_of_every_limit_that_is_set() {
        // Out, then just under the limit: stays out.
        assert!(excluded(true, Some(&p(99, 0)), &OFFSETS));
        assert!(
            excluded(true, Some(&p(50, 0)), &OFFSETS),
            "half is not under half"
        );
        assert!(!excluded(true, Some(&p(49, 0)), &OFFSETS));
        assert!(excluded(true, Some(&p(0, 2500)), &DURATION));
        assert!(!excluded(true, Some(&p(0, 2499)), &DURATION));
        // Both set: under half of each.
        assert!(excluded(true, Some(&p(10, 2600)), &BOTH));
        assert!(excluded(true, Some(&p(60, 10)), &BOTH));
        assert!(!excluded(true, Some(&p(10, 10)), &BOTH));
        // In, between half and the limit: stays in.
        assert!(!excluded(false, Some(&p(99, 4999)), &BOTH));
        // An odd limit: half of 5 is 2.5, so 2 is under it and 3 is not.
        let odd = Limits {
            offsets: Some(5),
            duration_ms: None,
        };
        assert!(!excluded(true, Some(&p(2, 0)), &odd));
        assert!(excluded(true, Some(&p(3, 0)), &odd));
        let one = Limits {
            offsets: Some(1),
            duration_ms: None,
        };
        assert!(!excluded(true, Some(&p(0, 0)), &one));
        let huge = Limits {
            offsets: Some(u64::MAX),
            duration_ms: None,
        };
        assert!(!excluded(true, Some(&p(u64::MAX / 2 - 1, 0)), &huge));
        assert!(excluded(true, Some(&p(u64::MAX / 2 + 1, 0)), &huge));
    }

    #[test]
    fn without_published_progress_a_reader_keeps_its_state() {
        assert!(excluded(true, None, &BOTH));
        assert!(!excluded(false, None, &BOTH));
    }

    #[test]
    fn a_lower_bound_duration_shows_over_but_never_under_half() {
        // At least 6 s behind: certainly over 5 s.
        assert!(excluded(false, Some(&at_least(0, 6000)), &DURATION));
        // At least 1 s: maybe far more. Neither leaves nor comes back on it.
        assert!(!excluded(false, Some(&at_least(0, 1000)), &DURATION));
        assert!(excluded(true, Some(&at_least(0, 1000)), &DURATION));
        // The offsets limit is exact and still decides alone.
        assert!(!excluded(true, Some(&at_least(10, 1000)), &OFFSETS));
        assert!(excluded(false, Some(&at_least(500, 1000)), &BOTH));
    }

    #[test]
    fn limits_from_the_config_round_up_to_milliseconds() {
        let l = Limits::new(&MaxReaderLag {
            offsets: Some(7),
            duration: Some(Duration::from_micros(1500)),
        });
        assert_eq!((l.offsets, l.duration_ms), (Some(7), Some(2)));
        let l = Limits::new(&MaxReaderLag {
            offsets: None,
            duration: Some(Duration::from_secs(5)),
        });
        assert_eq!(l.duration_ms, Some(5000));
        let l = Limits::new(&MaxReaderLag {
            offsets: None,
            duration: Some(Duration::from_nanos(10)),
        });
        assert_eq!(l.duration_ms, Some(1));
    }
}
