//! The numbers of a comparison: one measurement per (method, connections, target, tool, round),
//! their median over rounds, and rw-proxy's ratios to nginx and its latency over direct.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub method: String,
    pub connections: usize,
    pub target: String,
    pub tool: String,
    pub round: usize,
    pub requests_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub method: String,
    pub connections: usize,
    pub tool: String,
    /// rw-proxy req/s / nginx req/s (target >= 1.0).
    pub rps_ratio: f64,
    /// rw-proxy p99 / nginx p99 (target <= 1.0).
    pub p99_ratio: f64,
    /// rw-proxy p50 - direct p50, µs (target < 100).
    pub added_p50_us_over_direct: Option<i64>,
}

/// The upper median: with an even count it is a value that was measured, not a mean of two.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One row per (method, connections, target, tool): the medians over its rounds, the errors of
/// all of them, and in `round` how many rounds there were.
pub fn summarize(ms: &[Measurement]) -> Vec<Measurement> {
    let mut groups: BTreeMap<(String, usize, String, String), Vec<&Measurement>> = BTreeMap::new();
    for m in ms {
        groups
            .entry((
                m.method.clone(),
                m.connections,
                m.target.clone(),
                m.tool.clone(),
            ))
            .or_default()
            .push(m);
    }
    groups
        .into_iter()
        .map(|((method, connections, target, tool), v)| Measurement {
            method,
            connections,
            target,
            tool,
            round: v.len(),
            requests_per_s: median(v.iter().map(|m| m.requests_per_s).collect()),
            p50_us: median(v.iter().map(|m| m.p50_us as f64).collect()) as u64,
            p99_us: median(v.iter().map(|m| m.p99_us as f64).collect()) as u64,
            errors: v.iter().map(|m| m.errors).sum(),
        })
        .collect()
}

/// rw-proxy against nginx for every (method, connections, tool) both were measured at.
pub fn ratios(summary: &[Measurement]) -> Vec<Ratio> {
    let find = |method: &str, c: usize, target: &str, tool: &str| {
        summary.iter().find(|m| {
            m.method == method && m.connections == c && m.target == target && m.tool == tool
        })
    };
    let mut out = Vec::new();
    for m in summary.iter().filter(|m| m.target == "rw-proxy") {
        let Some(n) = find(&m.method, m.connections, "nginx", &m.tool) else {
            continue;
        };
        let direct = find(&m.method, m.connections, "direct", &m.tool);
        out.push(Ratio {
            method: m.method.clone(),
            connections: m.connections,
            tool: m.tool.clone(),
            rps_ratio: (m.requests_per_s / n.requests_per_s.max(1e-9) * 100.0).round() / 100.0,
            p99_ratio: (m.p99_us as f64 / (n.p99_us as f64).max(1.0) * 100.0).round() / 100.0,
            added_p50_us_over_direct: direct.map(|d| m.p50_us as i64 - d.p50_us as i64),
        });
    }
    out
}

/// What `n` idle connections added to a resident set, bytes each; nothing when none opened.
pub fn bytes_per_connection(before_kib: u64, with_kib: u64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (with_kib.saturating_sub(before_kib) as f64 * 1024.0 / n as f64).round()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::compare) fn m(
        method: &str,
        c: usize,
        target: &str,
        rps: f64,
        p50: u64,
        p99: u64,
    ) -> Measurement {
        Measurement {
            method: method.into(),
            connections: c,
            target: target.into(),
            tool: "loadtest".into(),
            round: 0,
            requests_per_s: rps,
            p50_us: p50,
            p99_us: p99,
            errors: 0,
        }
    }

    #[test]
    fn ratios_compare_rw_proxy_with_nginx_and_direct() {
        let s = summarize(&[
            m("GET", 64, "nginx", 1000.0, 400, 2000),
            m("GET", 64, "rw-proxy", 1100.0, 380, 1800),
            m("GET", 64, "rw-proxy", 900.0, 420, 2200),
            m("GET", 64, "rw-proxy", 1200.0, 390, 1900),
            m("GET", 64, "direct", 2000.0, 300, 900),
        ]);
        let rp = s.iter().find(|x| x.target == "rw-proxy").unwrap();
        assert_eq!(rp.requests_per_s, 1100.0, "median of 3 rounds");
        assert_eq!(rp.round, 3);
        let r = ratios(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rps_ratio, 1.1);
        assert_eq!(r[0].p99_ratio, 0.95);
        assert_eq!(r[0].added_p50_us_over_direct, Some(90));
    }

    #[test]
    fn summary_keeps_tools_apart_and_sums_the_errors_of_every_round() {
        let mut wrk = m("PUT", 16, "nginx", 500.0, 100, 700);
        wrk.tool = "wrk".into();
        let mut failing = m("PUT", 16, "nginx", 300.0, 200, 900);
        failing.errors = 4;
        let mut other = failing.clone();
        other.errors = 1;
        other.requests_per_s = 100.0;
        let s = summarize(&[failing, wrk, other]);
        assert_eq!(s.len(), 2, "{s:?}");
        let own = s.iter().find(|x| x.tool == "loadtest").unwrap();
        assert_eq!((own.round, own.errors), (2, 5));
        // Two rounds: the upper of the two, a value that was measured.
        assert_eq!(own.requests_per_s, 300.0);
        let wrk = s.iter().find(|x| x.tool == "wrk").unwrap();
        assert_eq!((wrk.round, wrk.requests_per_s, wrk.p99_us), (1, 500.0, 700));
    }

    #[test]
    fn no_ratio_without_nginx_and_no_added_latency_without_direct() {
        let s = summarize(&[
            m("GET", 1, "rw-proxy", 100.0, 50, 90),
            m("GET", 1, "direct", 200.0, 30, 60),
            m("PUT", 1, "rw-proxy", 100.0, 50, 90),
            m("PUT", 1, "nginx", 0.0, 40, 0),
        ]);
        let r = ratios(&s);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].method, "PUT");
        assert_eq!(r[0].added_p50_us_over_direct, None);
        // A nginx that answered nothing gives a large ratio, not a division by zero.
        assert!(r[0].rps_ratio > 1e6 && r[0].p99_ratio == 90.0, "{r:?}");
    }

    #[test]
    fn idle_memory_per_connection_in_bytes() {
        assert_eq!(bytes_per_connection(1000, 1100, 10), 10240.0);
        assert_eq!(bytes_per_connection(1000, 1001, 3), 341.0);
        // RSS that shrank while the connections were opened is no negative cost.
        assert_eq!(bytes_per_connection(1000, 900, 10), 0.0);
        assert_eq!(bytes_per_connection(1000, 1100, 0), 0.0);
    }
}
