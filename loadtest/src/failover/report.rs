//! What both failover reports print alike: the writer change, the rows of the write history,
//! the log and the read-back, the verdict, and the choice between text and JSON.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::check::{Analysis, ReadBack};
use crate::run::RunReport;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriterRef {
    pub name: String,
    pub epoch: u64,
}

/// `b - a` in milliseconds with one decimal; zero when `b` is before `a`.
pub fn ms_between(a: Instant, b: Instant) -> f64 {
    let d = if b >= a { b - a } else { Duration::ZERO };
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// `old (epoch N) -> new (epoch M)`, or `-> unchanged`.
pub fn writer_change(old: &WriterRef, new: Option<&WriterRef>) -> String {
    format!(
        "{} (epoch {}) -> {}",
        old.name,
        old.epoch,
        new.map(|n| format!("{} (epoch {})", n.name, n.epoch))
            .unwrap_or_else(|| "unchanged".into())
    )
}

/// `v ms`, or `-` when it was not measured.
pub fn opt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x} ms")).unwrap_or_else(|| "-".into())
}

/// One `  key  value` line of a report.
pub fn row(s: &mut String, k: &str, v: String) {
    let _ = writeln!(s, "  {k:<34} {v}");
}

/// The rows every failover report shares: the write history, the log and the read-back.
pub fn history_rows(
    s: &mut String,
    a: &Analysis,
    read_errors: &BTreeMap<String, u64>,
    read_back: &ReadBack,
    load: &RunReport,
) {
    let w = &a.writes;
    row(
        s,
        "writes sent / acked / failed",
        format!("{} / {} / {}", w.sent, w.acked, w.failed),
    );
    row(
        s,
        "failed writes by kind",
        format!("{:?}", w.failed_by_kind),
    );
    row(
        s,
        "writes in flight at the fault",
        w.in_flight_at_fault.to_string(),
    );
    row(
        s,
        "held writes (max hold)",
        format!("{} ({} ms)", w.held, w.max_held_ms),
    );
    row(s, "read errors by kind", format!("{read_errors:?}"));
    row(
        s,
        "acked writes lost (must be 0)",
        a.lost_acked_writes.to_string(),
    );
    row(
        s,
        "epochs on two nodes (must be 0)",
        a.log.epochs_on_two_nodes.len().to_string(),
    );
    row(
        s,
        "epoch regressions in log",
        a.log.epoch_regressions.to_string(),
    );
    row(s, "epochs by node", format!("{:?}", a.log.epochs_by_node));
    row(
        s,
        "read-back missing (nodes, proxy)",
        format!(
            "{:?}, {}",
            read_back.missing_on_node, read_back.missing_via_proxy
        ),
    );
    row(
        s,
        "load",
        format!(
            "{} requests, {:.0} req/s, write p99 {}, max {}",
            load.requests,
            load.requests_per_s,
            crate::run::stats::fmt_us(load.latency.write.p99_us),
            crate::run::stats::fmt_us(load.latency.write.max_us)
        ),
    );
}

/// The closing lines: where the files were kept, then PASS, or FAIL and one line per broken
/// rule.
pub fn verdict(s: &mut String, kept_dir: Option<&str>, passed: bool, failures: &[String]) {
    if let Some(k) = kept_dir {
        row(s, "cluster files", k.to_owned());
    }
    if passed {
        let _ = writeln!(s, "PASS");
    } else {
        let _ = writeln!(s, "FAIL");
        for f in failures {
            let _ = writeln!(s, "  - {f}");
        }
    }
}

/// Prints the report (JSON or text) and turns its verdict into the exit code.
pub fn print<R: Serialize>(
    json: bool,
    report: &R,
    passed: bool,
    text: impl FnOnce(&R) -> String,
) -> anyhow::Result<u8> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", text(report));
    }
    Ok(if passed { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_change_names_both_epochs_or_says_unchanged() {
        let old = WriterRef {
            name: "node-1".into(),
            epoch: 3,
        };
        let new = WriterRef {
            name: "node-2".into(),
            epoch: 4,
        };
        assert_eq!(
            writer_change(&old, Some(&new)),
            "node-1 (epoch 3) -> node-2 (epoch 4)"
        );
        assert_eq!(writer_change(&old, None), "node-1 (epoch 3) -> unchanged");
    }

    #[test]
    fn the_verdict_lists_every_failure_after_the_kept_directory() {
        let mut s = String::new();
        verdict(&mut s, Some("/tmp/x"), false, &["a".into(), "b".into()]);
        assert_eq!(
            s,
            format!("  {:<34} /tmp/x\nFAIL\n  - a\n  - b\n", "cluster files")
        );
        let mut s = String::new();
        verdict(&mut s, None, true, &[]);
        assert_eq!(s, "PASS\n");
    }

    #[test]
    fn milliseconds_keep_one_decimal_and_never_go_negative() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_micros(12_345);
        assert_eq!(ms_between(t0, t1), 12.3);
        assert_eq!(ms_between(t1, t0), 0.0);
        assert_eq!(opt_ms(Some(1.5)), "1.5 ms");
        assert_eq!(opt_ms(None), "-");
    }
}
