//! Runs wrk (when installed) as a cross-check of our own generator, and parses its report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// "335.00us" / "1.20ms" / "2.00s" -> µs.
fn parse_latency(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|v| (v * mult).round() as u64)
}

pub fn parse(output: &str) -> anyhow::Result<WrkResult> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in output.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = parse_latency(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = parse_latency(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (rps, p50, p99) {
        (Some(requests_per_s), Some(p50_us), Some(p99_us)) => Ok(WrkResult {
            requests_per_s,
            p50_us,
            p99_us,
            errors,
        }),
        _ => bail!("cannot read wrk's report:\n{output}"),
    }
}

/// The Lua script: random keys like our generator; PUT bodies of `value_size` bytes.
pub fn script(method: &str, keys: u64, value_size: usize, headers: &[(String, String)]) -> String {
    let hdrs: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("[\"{k}\"] = \"{v}\""))
        .collect();
    let body = if method == "PUT" {
        format!("string.rep(\"x\", {value_size})")
    } else {
        "nil".into()
    };
    format!(
        "local headers = {{ {} }}\nlocal body = {body}\nrequest = function()\n  \
         return wrk.format(\"{method}\", \"/kv/k\" .. math.random(0, {}), headers, body)\nend\n",
        hdrs.join(", "),
        keys.saturating_sub(1)
    )
}

pub fn run(
    wrk: &Path,
    script_path: &Path,
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let threads = connections.clamp(1, 2);
    let out = Command::new(wrk)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script_path)
        .arg(url)
        .output()
        .with_context(|| format!("running {}", wrk.display()))?;
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:8080/\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   512.33us  200.10us   5.00ms   90.00%\n    Req/Sec    15.00k     1.00k   17.00k    70.00%\n  Latency Distribution\n     50%  480.00us\n     75%  600.00us\n     90%  750.00us\n     99%    1.25ms\n  30000 requests in 2.00s, 4.00MB read\n  Non-2xx or 3xx responses: 3\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  14999.50\nTransfer/sec:      2.00MB\n";

    #[test]
    fn parses_a_wrk_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests_per_s, 14999.5);
        assert_eq!(r.p50_us, 480);
        assert_eq!(r.p99_us, 1250);
        assert_eq!(r.errors, 6);
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn latency_units() {
        assert_eq!(parse_latency("2.00s"), Some(2_000_000));
        assert_eq!(parse_latency(" 12.5ms"), Some(12_500));
        assert_eq!(parse_latency("7us"), Some(7));
        assert_eq!(parse_latency("7"), None);
    }

    #[test]
    fn script_has_method_keys_and_headers() {
        let s = script("PUT", 100, 8, &[("X-Writer-Epoch".into(), "1".into())]);
        assert!(s.contains("wrk.format(\"PUT\""), "{s}");
        assert!(s.contains("math.random(0, 99)"), "{s}");
        assert!(s.contains("[\"X-Writer-Epoch\"] = \"1\""), "{s}");
        assert!(s.contains("string.rep(\"x\", 8)"), "{s}");
    }
}
