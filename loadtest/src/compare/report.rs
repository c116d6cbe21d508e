//! What `loadtest compare` prints: the report (the same fields with `--json`) and its text form.

use serde::Serialize;

use super::stats::{Measurement, Ratio};
use crate::run::stats::fmt_us;

#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    pub target: String,
    pub connections_open: usize,
    pub rss_before_kib: u64,
    pub rss_with_idle_kib: u64,
    pub bytes_per_connection: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub nginx: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub machine: Machine,
    pub command: String,
    pub measurements: Vec<Measurement>,
    /// Median over rounds per (method, connections, target, tool).
    pub summary: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    pub idle: Vec<IdleMemory>,
}

/// The summary table, then the ratios and the idle memory when there are any.
pub fn render_text(r: &CompareReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores), kernel {}, {}, {}",
        m.cpu, m.cores, m.kernel, m.nginx, m.date
    );
    let _ = writeln!(
        s,
        "{:<6} {:>5}  {:<9} {:<9} {:>11} {:>9} {:>9} {:>7}",
        "method", "conns", "target", "tool", "req/s", "p50", "p99", "errors"
    );
    for x in &r.summary {
        let _ = writeln!(
            s,
            "{:<6} {:>5}  {:<9} {:<9} {:>11.0} {:>9} {:>9} {:>7}",
            x.method,
            x.connections,
            x.target,
            x.tool,
            x.requests_per_s,
            fmt_us(x.p50_us),
            fmt_us(x.p99_us),
            x.errors
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nrw-proxy vs nginx (req/s ratio >= 1.0 and p99 ratio <= 1.0 are the targets):"
        );
        for x in &r.ratios {
            let added = x
                .added_p50_us_over_direct
                .map(|v| format!(", p50 {v:+} µs over direct"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {} c={:<4} {:<9} req/s {:.2}x  p99 {:.2}x{added}",
                x.method, x.connections, x.tool, x.rps_ratio, x.p99_ratio
            );
        }
    }
    for i in &r.idle {
        let _ = writeln!(
            s,
            "idle: {} with {} connections: RSS {} KiB -> {} KiB ({:.0} bytes/connection)",
            i.target,
            i.connections_open,
            i.rss_before_kib,
            i.rss_with_idle_kib,
            i.bytes_per_connection
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::stats::tests::m;

    fn known_report() -> CompareReport {
        let mut put = m("PUT", 1, "rw-proxy", 123.45, 999, 1_500_000);
        put.tool = "wrk".into();
        put.errors = 2;
        let summary = vec![m("GET", 64, "nginx", 1000.0, 400, 2000), put];
        CompareReport {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                kernel: "6.1.0".into(),
                nginx: "nginx version: nginx/1.22.1".into(),
                date: "2026-01-01T00:00:00Z".into(),
            },
            command: "loadtest compare --idle 10".into(),
            measurements: summary.clone(),
            summary,
            ratios: vec![
                Ratio {
                    method: "GET".into(),
                    connections: 64,
                    tool: "loadtest".into(),
                    rps_ratio: 1.1,
                    p99_ratio: 0.95,
                    added_p50_us_over_direct: Some(-5),
                },
                Ratio {
                    method: "PUT".into(),
                    connections: 1,
                    tool: "wrk".into(),
                    rps_ratio: 0.5,
                    p99_ratio: 2.0,
                    added_p50_us_over_direct: None,
                },
            ],
            idle: vec![IdleMemory {
                target: "nginx".into(),
                connections_open: 10,
                rss_before_kib: 1000,
                rss_with_idle_kib: 1100,
                bytes_per_connection: 10240.0,
            }],
        }
    }

    #[test]
    fn renders_a_known_report_as_text() {
        assert_eq!(
            render_text(&known_report()),
            "machine: Test CPU (2 cores), kernel 6.1.0, nginx version: nginx/1.22.1, 2026-01-01T00:00:00Z\n\
             method conns  target    tool            req/s       p50       p99  errors\n\
             GET       64  nginx     loadtest         1000     400µs    2.00ms       0\n\
             PUT        1  rw-proxy  wrk               123     999µs     1.50s       2\n\
             \n\
             rw-proxy vs nginx (req/s ratio >= 1.0 and p99 ratio <= 1.0 are the targets):\n  \
             GET c=64   loadtest  req/s 1.10x  p99 0.95x, p50 -5 µs over direct\n  \
             PUT c=1    wrk       req/s 0.50x  p99 2.00x\n\
             idle: nginx with 10 connections: RSS 1000 KiB -> 1100 KiB (10240 bytes/connection)\n"
        );
    }

    #[test]
    fn renders_a_known_report_as_json() {
        let json = serde_json::to_string_pretty(&known_report()).unwrap();
        assert_eq!(json, include_str!("testdata/known-report.json").trim_end());
    }

    #[test]
    fn a_report_without_nginx_or_idle_is_the_table_alone() {
        let mut r = known_report();
        r.ratios.clear();
        r.idle.clear();
        let table: String = render_text(&known_report())
            .lines()
            .take(4)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(render_text(&r), table);
    }
}
