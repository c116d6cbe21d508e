//! The history check of a failover run, as plain functions over the client's write history and
//! the shared log: what was acknowledged and lost, which epochs two nodes accepted, how long
//! the client saw no writer, which writes failed or were held; the rules both scenarios judge
//! the read-back and the failover time by; and the token-read rule of the process faults (the
//! partition scenario sends no token pairs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::node::log::{Line, Record};
use crate::run::history::WriteRecord;
use crate::run::pairs::PairStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Hang,
    Unready,
    Demote,
    Switchover,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Hang => "hang",
            Fault::Unready => "unready",
            Fault::Demote => "demote",
            Fault::Switchover => "switchover",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteSummary {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Answered (or failed) after the fault, and sent before the faulted process was gone: a
    /// killed process keeps its sockets until the kernel has torn it down, so a write sent in
    /// that window may have reached it and can neither be acknowledged nor safely replayed.
    pub in_flight_at_fault: u64,
    /// Acked by the new writer although sent between the fault and the new writer's first
    /// ack: the proxy held them through the failover.
    pub held: u64,
    pub max_held_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogSummary {
    pub records: u64,
    pub corrupt_lines: u64,
    /// Epochs in which more than one node appended: `epoch -> nodes`.
    pub epochs_on_two_nodes: BTreeMap<u64, Vec<String>>,
    /// Records with an epoch lower than one before them in the log.
    pub epoch_regressions: u64,
    /// `node -> epochs it appended`, for the report.
    pub epochs_by_node: BTreeMap<String, Vec<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analysis {
    pub writes: WriteSummary,
    pub log: LogSummary,
    /// Acknowledged writes whose key/value is not in the log (must be 0).
    pub lost_acked_writes: u64,
    pub lost_examples: Vec<String>,
    /// Acknowledged writes whose epoch differs from the one the log has for them.
    pub epoch_mismatches: u64,
    /// Writes in the log more than once (every write of a run has a key of its own, so a key
    /// and value logged twice is a write applied twice; must be 0).
    pub applied_twice: u64,
    /// Last ack from the old writer -> first ack from a new writer, as the client saw it.
    pub client_failover_ms: Option<f64>,
    pub last_old_ack_ms: Option<f64>,
    pub first_new_ack_ms: Option<f64>,
    /// Nodes that acknowledged writes after the fault, in order of first ack.
    pub writers_after_fault: Vec<String>,
}

/// Every acknowledged write read back after catch-up, from each live node and through the
/// proxy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadBack {
    /// Acknowledged writes checked.
    pub checked: u64,
    /// node -> acknowledged writes missing or different there after catch-up.
    pub missing_on_node: BTreeMap<String, u64>,
    /// Acknowledged writes the proxy could not return (with X-Consistency: strong).
    pub missing_via_proxy: u64,
    pub examples: Vec<String>,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 10.0).round() / 10.0
}

pub fn summarize_log(lines: &[Line]) -> LogSummary {
    let mut s = LogSummary::default();
    let mut by_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut by_node: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut highest = 0;
    for l in lines {
        match l {
            Line::Record(r) => {
                s.records += 1;
                if r.epoch < highest {
                    s.epoch_regressions += 1;
                }
                highest = highest.max(r.epoch);
                by_epoch.entry(r.epoch).or_default().insert(r.node.clone());
                by_node.entry(r.node.clone()).or_default().insert(r.epoch);
            }
            Line::Corrupt { .. } => s.corrupt_lines += 1,
        }
    }
    s.epochs_on_two_nodes = by_epoch
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(e, n)| (e, n.into_iter().collect()))
        .collect();
    s.epochs_by_node = by_node
        .into_iter()
        .map(|(n, e)| (n, e.into_iter().collect()))
        .collect();
    s
}

/// `fault_us` is on the history's clock (µs since the load started). `old_writer` is the
/// writer when the fault was injected.
pub fn analyze(
    history: &[WriteRecord],
    lines: &[Line],
    fault_us: u64,
    gone_us: u64,
    old_writer: &str,
) -> Analysis {
    let mut a = Analysis {
        log: summarize_log(lines),
        ..Analysis::default()
    };
    let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
    for l in lines {
        if let Line::Record(r) = l {
            *seen
                .entry((r.key.as_str(), r.value.as_deref().unwrap_or("")))
                .or_default() += 1;
        }
    }
    a.applied_twice = seen.values().filter(|n| **n > 1).count() as u64;
    let logged: HashMap<(&str, &str), &Record> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Record(r) => Some(((r.key.as_str(), r.value.as_deref().unwrap_or("")), r)),
            Line::Corrupt { .. } => None,
        })
        .collect();

    let w = &mut a.writes;
    for h in history {
        w.sent += 1;
        if h.acked() {
            w.acked += 1;
        } else {
            w.failed += 1;
            *w.failed_by_kind.entry(h.outcome.clone()).or_default() += 1;
        }
        if h.sent_us <= gone_us.max(fault_us) && h.ack_us > fault_us {
            w.in_flight_at_fault += 1;
        }
    }
    for h in history.iter().filter(|h| h.acked()) {
        match logged.get(&(h.key.as_str(), h.value.as_str())) {
            None => {
                a.lost_acked_writes += 1;
                if a.lost_examples.len() < 10 {
                    a.lost_examples.push(format!(
                        "{} (acked at {} ms by {})",
                        h.key,
                        ms(h.ack_us),
                        h.node.as_deref().unwrap_or("?")
                    ));
                }
            }
            Some(r) => {
                if h.epoch.is_some_and(|e| e != r.epoch) {
                    a.epoch_mismatches += 1;
                }
            }
        }
    }

    // Who acknowledged: the node header if the path kept it, else the log's record.
    let acked_by = |h: &WriteRecord| -> Option<String> {
        h.node.clone().or_else(|| {
            logged
                .get(&(h.key.as_str(), h.value.as_str()))
                .map(|r| r.node.clone())
        })
    };
    let mut acks: Vec<(u64, String, &WriteRecord)> = history
        .iter()
        .filter(|h| h.acked())
        .filter_map(|h| acked_by(h).map(|n| (h.ack_us, n, h)))
        .collect();
    acks.sort_by_key(|(t, _, _)| *t);
    let last_old = acks
        .iter()
        .filter(|(_, n, _)| n == old_writer)
        .map(|(t, _, _)| *t)
        .max();
    let first_new = acks
        .iter()
        .find(|(t, n, _)| n != old_writer && *t >= fault_us)
        .map(|(t, _, _)| *t);
    for (t, n, _) in &acks {
        if *t >= fault_us && !a.writers_after_fault.contains(n) {
            a.writers_after_fault.push(n.clone());
        }
    }
    a.last_old_ack_ms = last_old.map(ms);
    a.first_new_ack_ms = first_new.map(ms);
    if let (Some(o), Some(n)) = (last_old, first_new) {
        a.client_failover_ms = Some(ms(n.saturating_sub(o)));
    }
    if let Some(first_new) = first_new {
        for (_, n, h) in &acks {
            if n != old_writer && h.sent_us >= fault_us && h.sent_us < first_new {
                a.writes.held += 1;
                a.writes.max_held_ms = a.writes.max_held_ms.max(ms(h.ack_us - h.sent_us));
            }
        }
    }
    a
}

/// The rules every fault must keep, whatever it does to availability: nothing acknowledged is
/// lost, no epoch is accepted by two nodes, the log's epochs never go back, nothing is applied
/// twice.
pub fn safety_failures(a: &Analysis) -> Vec<String> {
    let mut f = Vec::new();
    if a.lost_acked_writes > 0 {
        f.push(format!(
            "{} acknowledged writes are not in the log (e.g. {})",
            a.lost_acked_writes,
            a.lost_examples.join(", ")
        ));
    }
    if !a.log.epochs_on_two_nodes.is_empty() {
        f.push(format!(
            "epochs accepted by two nodes: {:?}",
            a.log.epochs_on_two_nodes
        ));
    }
    if a.log.epoch_regressions > 0 {
        f.push(format!(
            "{} log records have a lower epoch than an earlier record",
            a.log.epoch_regressions
        ));
    }
    if a.epoch_mismatches > 0 {
        f.push(format!(
            "{} acknowledged writes report another epoch than the log has",
            a.epoch_mismatches
        ));
    }
    if a.applied_twice > 0 {
        f.push(format!(
            "{} writes were applied more than once",
            a.applied_twice
        ));
    }
    f
}

/// The pass/fail rules of a process fault. Returns one sentence per failed check.
pub fn failures(fault: Fault, a: &Analysis, old_writer: &str) -> Vec<String> {
    let mut f = safety_failures(a);
    if fault == Fault::Demote {
        // The writer lost its role and keeps it back: no failover, only a re-promotion.
        if !a.writers_after_fault.iter().any(|n| n == old_writer) {
            f.push(format!(
                "no write was acknowledged by {old_writer} after it lost its role: not promoted again"
            ));
        }
    } else if a.first_new_ack_ms.is_none() {
        f.push(format!(
            "no write was acknowledged by a node other than {old_writer} after the fault: no failover seen"
        ));
    }
    match fault {
        Fault::Demote if a.writes.failed > 0 => f.push(format!(
            "writes refused by a writer that lost its role must be held, not failed: {} failed: {:?}",
            a.writes.failed, a.writes.failed_by_kind
        )),
        Fault::Switchover if a.writes.failed > 0 => f.push(format!(
            "a planned switchover must fail no request, {} writes failed: {:?}",
            a.writes.failed, a.writes.failed_by_kind
        )),
        Fault::Kill if a.writes.failed > a.writes.in_flight_at_fault => f.push(format!(
            "{} writes failed but only {} were in flight at the kill",
            a.writes.failed, a.writes.in_flight_at_fault
        )),
        _ => {}
    }
    f
}

/// An acknowledged write that a live node or the proxy does not return after catch-up is lost
/// to its readers: one sentence per node that misses some, one for the proxy.
pub fn read_back_failures(rb: &ReadBack) -> Vec<String> {
    let mut f = Vec::new();
    for (node, missing) in &rb.missing_on_node {
        if *missing > 0 {
            f.push(format!(
                "{missing} acknowledged writes missing or different on {node} after catch-up"
            ));
        }
    }
    if rb.missing_via_proxy > 0 {
        f.push(format!(
            "{} acknowledged writes not returned through rw-proxy",
            rb.missing_via_proxy
        ));
    }
    f
}

/// A token read that misses the write before it breaks read-your-writes; so does a run whose
/// token pairs checked nothing (then the check proved nothing).
pub fn token_read_failures(p: &PairStats) -> Vec<String> {
    let mut f = Vec::new();
    if p.stale > 0 {
        f.push(format!(
            "{} of {} reads carrying a read-your-writes token did not return the write before \
             them (e.g. {})",
            p.stale,
            p.checked,
            p.stale_examples
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if p.checked == 0 {
        f.push("no read carrying a read-your-writes token was answered: nothing checked".into());
    }
    f
}

/// `--max-failover-time` broken: the client saw no writer for longer.
pub fn failover_time_failure(max: Option<Duration>, got_ms: Option<f64>) -> Option<String> {
    let (max, got) = (max?, got_ms?);
    (got > max.as_secs_f64() * 1000.0)
        .then(|| format!("client-seen failover took {got} ms, over --max-failover-time {max:?}"))
}

/// The run counts errors of reads and writes together (`run_errors`, by kind); the history has
/// the write ones.
pub fn read_errors(run_errors: &BTreeMap<String, u64>, a: &Analysis) -> BTreeMap<String, u64> {
    run_errors
        .iter()
        .map(|(k, v)| {
            let writes = a.writes.failed_by_kind.get(k).copied().unwrap_or(0);
            (k.clone(), v.saturating_sub(writes))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_logged_twice_is_a_failure_and_a_demotion_needs_the_writer_back() {
        let lines = vec![
            rec(1, "node-1", 1, "a", "1"),
            rec(2, "node-1", 1, "b", "1"),
            rec(3, "node-1", 1, "b", "1"),
        ];
        let a = analyze(&[], &lines, 0, 0, "node-1");
        assert_eq!(a.applied_twice, 1);
        let f = failures(Fault::Demote, &a, "node-1");
        assert!(f.iter().any(|m| m.contains("more than once")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("not promoted again")), "{f:?}");
        assert!(!f.iter().any(|m| m.contains("no failover")), "{f:?}");
    }

    fn rec(seq: u64, node: &str, epoch: u64, key: &str, value: &str) -> Line {
        Line::Record(crate::node::log::record(
            seq,
            0,
            node,
            epoch,
            key,
            Some(value),
        ))
    }

    fn w(
        key: &str,
        sent: u64,
        ack: u64,
        outcome: &str,
        node: Option<&str>,
        epoch: u64,
    ) -> WriteRecord {
        WriteRecord {
            worker: 0,
            key: key.into(),
            value: format!("v-{key}"),
            intended_us: sent,
            sent_us: sent,
            ack_us: ack,
            status: Some(if outcome == "ok" { 200 } else { 503 }),
            outcome: outcome.into(),
            epoch: Some(epoch),
            node: node.map(str::to_owned),
        }
    }

    fn scenario() -> (Vec<WriteRecord>, Vec<Line>) {
        // Fault at 1000 µs. a: acked by the old writer before; b: in flight at the kill,
        // failed; c: sent after the fault, held, acked by the new writer; d: normal after.
        let history = vec![
            w("a", 100, 400, "ok", Some("node-1"), 1),
            w("b", 900, 1200, "io", None, 0),
            w("c", 1100, 250_000, "ok", Some("node-2"), 2),
            w("d", 260_000, 260_500, "ok", Some("node-2"), 2),
        ];
        let log = vec![
            rec(1, "node-1", 1, "a", "v-a"),
            rec(2, "node-2", 2, "c", "v-c"),
            rec(3, "node-2", 2, "d", "v-d"),
        ];
        (history, log)
    }

    #[test]
    fn a_write_sent_while_the_killed_writer_dies_counts_as_in_flight() {
        let (mut h, l) = scenario();
        // Sent 0.2 ms after SIGKILL, reset by the dying process 0.5 ms later.
        h.push(w("e", 1200, 1700, "io", None, 0));
        let a = analyze(&h, &l, 1000, 1500, "node-1");
        // b (sent before the signal), c and e (sent before the process was gone).
        assert_eq!(a.writes.in_flight_at_fault, 3);
        assert!(failures(Fault::Kill, &a, "node-1").is_empty());
        // Had the process been gone at the signal, that write would be a failure after the kill.
        let a = analyze(&h, &l, 1000, 1000, "node-1");
        assert_eq!(a.writes.in_flight_at_fault, 1);
        assert!(!failures(Fault::Kill, &a, "node-1").is_empty());
    }

    #[test]
    fn a_clean_kill_passes_and_measures_the_gap() {
        let (h, l) = scenario();
        let a = analyze(&h, &l, 1000, 1000, "node-1");
        assert_eq!(a.lost_acked_writes, 0);
        assert_eq!(a.writes.sent, 4);
        assert_eq!(a.writes.acked, 3);
        assert_eq!(a.writes.failed_by_kind.get("io"), Some(&1));
        assert_eq!(a.writes.in_flight_at_fault, 1);
        assert_eq!(a.writes.held, 1);
        assert_eq!(a.writes.max_held_ms, 248.9);
        assert_eq!(a.last_old_ack_ms, Some(0.4));
        assert_eq!(a.first_new_ack_ms, Some(250.0));
        assert_eq!(a.client_failover_ms, Some(249.6));
        assert_eq!(a.writers_after_fault, vec!["node-2".to_owned()]);
        assert!(failures(Fault::Kill, &a, "node-1").is_empty());
        // The same history is a failure for a planned switchover: one write failed.
        assert_eq!(failures(Fault::Switchover, &a, "node-1").len(), 1);
    }

    #[test]
    fn a_lost_ack_and_a_shared_epoch_fail() {
        let (h, mut l) = scenario();
        l.remove(1); // c was acked but is not in the log
        l.push(rec(4, "node-1", 2, "zombie", "x")); // old writer accepted epoch 2 as well
        l.push(rec(5, "node-2", 1, "late", "x")); // and an epoch went backwards
        let a = analyze(&h, &l, 1000, 1000, "node-1");
        assert_eq!(a.lost_acked_writes, 1);
        assert!(
            a.lost_examples[0].starts_with("c "),
            "{:?}",
            a.lost_examples
        );
        assert_eq!(
            a.log.epochs_on_two_nodes.get(&2),
            Some(&vec!["node-1".to_owned(), "node-2".to_owned()])
        );
        assert_eq!(a.log.epoch_regressions, 1);
        let f = failures(Fault::Kill, &a, "node-1");
        assert_eq!(f.len(), 3, "{f:?}");
    }

    #[test]
    fn no_new_writer_is_a_failure_and_node_falls_back_to_the_log() {
        let history = vec![
            w("a", 100, 400, "ok", None, 1),
            w("b", 2000, 2400, "ok", None, 1),
        ];
        let log = vec![
            rec(1, "node-1", 1, "a", "v-a"),
            rec(2, "node-1", 1, "b", "v-b"),
        ];
        let a = analyze(&history, &log, 1000, 1000, "node-1");
        assert_eq!(a.last_old_ack_ms, Some(2.4));
        assert_eq!(a.first_new_ack_ms, None);
        let f = failures(Fault::Unready, &a, "node-1");
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("no failover"), "{f:?}");
    }

    #[test]
    fn too_many_failures_for_a_kill() {
        let (mut h, l) = scenario();
        h.push(w("e", 5000, 5001, "http_503", None, 0));
        let a = analyze(&h, &l, 1000, 1000, "node-1");
        let f = failures(Fault::Kill, &a, "node-1");
        assert!(f.iter().any(|s| s.contains("in flight")), "{f:?}");
    }

    #[test]
    fn a_write_missing_on_a_node_or_through_the_proxy_fails() {
        let clean = ReadBack {
            checked: 5,
            missing_on_node: BTreeMap::from([("node-2".into(), 0), ("node-3".into(), 0)]),
            ..ReadBack::default()
        };
        assert!(read_back_failures(&clean).is_empty());
        let bad = ReadBack {
            checked: 5,
            missing_on_node: BTreeMap::from([("node-2".into(), 0), ("node-3".into(), 2)]),
            missing_via_proxy: 1,
            examples: vec![],
        };
        let f = read_back_failures(&bad);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].starts_with("2 ") && f[0].contains("node-3"), "{f:?}");
        assert!(f[1].starts_with("1 ") && f[1].contains("rw-proxy"), "{f:?}");
    }

    #[test]
    fn a_stale_token_read_or_none_checked_fails_the_run() {
        let clean = PairStats {
            checked: 10,
            fresh: 10,
            ..Default::default()
        };
        assert!(token_read_failures(&clean).is_empty());
        let stale = PairStats {
            checked: 10,
            fresh: 9,
            stale: 1,
            stale_examples: vec!["p1: node-2 answered 404".into()],
            ..Default::default()
        };
        let f = token_read_failures(&stale);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("1 of 10") && f[0].contains("node-2"), "{f:?}");
        let none = PairStats::default();
        assert!(token_read_failures(&none)[0].contains("nothing checked"));
    }

    #[test]
    fn only_a_measured_failover_longer_than_the_limit_fails() {
        let max = Some(Duration::from_millis(500));
        assert_eq!(failover_time_failure(max, Some(500.0)), None);
        let f = failover_time_failure(max, Some(500.1)).unwrap();
        assert!(
            f.contains("500.1 ms") && f.contains("--max-failover-time"),
            "{f}"
        );
        assert_eq!(failover_time_failure(None, Some(9e9)), None);
        assert_eq!(failover_time_failure(max, None), None);
    }

    #[test]
    fn read_errors_are_the_run_errors_less_the_failed_writes() {
        let (mut h, l) = scenario();
        h.push(w("e", 5000, 5001, "http_503", None, 0));
        let a = analyze(&h, &l, 1000, 1000, "node-1");
        let run = BTreeMap::from([
            ("io".into(), 3),
            ("http_503".into(), 1),
            ("timeout".into(), 2),
        ]);
        assert_eq!(
            read_errors(&run, &a),
            BTreeMap::from([("io".into(), 2), ("timeout".into(), 2)])
        );
    }
}
