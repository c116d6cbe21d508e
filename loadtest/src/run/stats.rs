//! Latency histograms (HDR, microseconds) and outcome counters, per worker, merged at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::conn::ErrorKind;

/// One hour in µs: anything slower is clamped (and would be a timeout long before).
const MAX_US: u64 = 3_600_000_000;

fn hist() -> Histogram<u64> {
    // Bounds are constants, so this cannot fail; fall back to an auto-resizing one anyway.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("sigfig 3 is valid"));
        h.auto(true);
        h
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read,
    Write,
}

#[derive(Debug, Clone)]
pub struct Stats {
    /// From the intended send time (open loop) or the send time (closed loop) to the end of
    /// the response: what a client experiences.
    pub latency: Histogram<u64>,
    pub latency_read: Histogram<u64>,
    pub latency_write: Histogram<u64>,
    /// From the moment the request actually went out: what the server (+ proxy) took.
    pub service: Histogram<u64>,
    /// Open loop only: how late the generator started each request against its scheduled
    /// time (timer wake-up, waiting for a free connection). Every scheduled request counts,
    /// failed ones too: the lateness is the generator's, whatever the answer.
    pub schedule_lateness: Histogram<u64>,
    pub ok_reads: u64,
    pub ok_writes: u64,
    /// GETs of a key nobody wrote yet: a normal answer, not an error.
    pub not_found: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: hist(),
            latency_read: hist(),
            latency_write: hist(),
            service: hist(),
            schedule_lateness: hist(),
            ok_reads: 0,
            ok_writes: 0,
            not_found: 0,
            read_errors: 0,
            write_errors: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Records a completed request. Failed requests count in the error tables only: a fast
    /// refusal must not make the latency look better.
    pub fn record(&mut self, class: OpClass, latency_us: u64, service_us: u64) {
        let l = latency_us.clamp(1, MAX_US);
        self.latency.saturating_record(l);
        self.service.saturating_record(service_us.clamp(1, MAX_US));
        match class {
            OpClass::Read => {
                self.ok_reads += 1;
                self.latency_read.saturating_record(l)
            }
            OpClass::Write => {
                self.ok_writes += 1;
                self.latency_write.saturating_record(l)
            }
        }
    }

    /// A read of a key nobody wrote: a proper answer, timed like any read.
    pub fn record_not_found(&mut self, latency_us: u64, service_us: u64) {
        self.record(OpClass::Read, latency_us, service_us);
        self.ok_reads -= 1;
        self.not_found += 1;
    }

    /// 0 is a real value here (on time), so it is recorded as is.
    pub fn record_lateness(&mut self, lateness_us: u64) {
        self.schedule_lateness
            .saturating_record(lateness_us.min(MAX_US));
    }

    pub fn error(&mut self, class: OpClass, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
        match class {
            OpClass::Read => self.read_errors += 1,
            OpClass::Write => self.write_errors += 1,
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides: add cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.latency_read.add(&other.latency_read);
        let _ = self.latency_write.add(&other.latency_write);
        let _ = self.service.add(&other.service);
        let _ = self.schedule_lateness.add(&other.schedule_lateness);
        self.ok_reads += other.ok_reads;
        self.ok_writes += other.ok_writes;
        self.not_found += other.not_found;
        self.read_errors += other.read_errors;
        self.write_errors += other.write_errors;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }

    pub fn total_errors(&self) -> u64 {
        self.read_errors + self.write_errors
    }

    pub fn completed(&self) -> u64 {
        self.ok_reads + self.ok_writes + self.not_found + self.total_errors()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        mean_us: (h.mean() * 10.0).round() / 10.0,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// `1234` µs -> "1.23ms"; keeps tables narrow and readable.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_recorded_values_and_errors_stay_out() {
        let mut s = Stats::default();
        for us in 1..=1000 {
            s.record(OpClass::Read, us, us);
        }
        s.error(OpClass::Write, ErrorKind::Status(503));
        let sum = summarize(&s.latency);
        assert_eq!(sum.count, 1000);
        assert!((495..=505).contains(&sum.p50_us), "{sum:?}");
        assert!((985..=995).contains(&sum.p99_us), "{sum:?}");
        assert_eq!(sum.max_us, 1000);
        assert_eq!(summarize(&s.latency_write).count, 0);
        assert_eq!(s.total_errors(), 1);

        let mut t = Stats::default();
        t.record(OpClass::Write, 5_000_000, 10);
        t.error(OpClass::Write, ErrorKind::Status(503));
        s.merge(&t);
        assert_eq!(s.errors[&ErrorKind::Status(503)], 2);
        assert!(summarize(&s.latency).max_us >= 4_990_000);
        assert_eq!(s.completed(), 1003);
    }

    #[test]
    fn lateness_keeps_zero_and_merges() {
        let mut s = Stats::default();
        for _ in 0..9 {
            s.record_lateness(0);
        }
        let mut t = Stats::default();
        t.record_lateness(40);
        s.merge(&t);
        let l = summarize(&s.schedule_lateness);
        assert_eq!((l.count, l.p50_us, l.max_us), (10, 0, 40));
        assert_eq!(s.completed(), 0, "lateness is not an outcome");
    }

    #[test]
    fn formats_units() {
        assert_eq!(fmt_us(250), "250µs");
        assert_eq!(fmt_us(1_250), "1.25ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
