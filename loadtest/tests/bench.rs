//! The benchmark commands run and report sane numbers (no performance assertions: those are
//! measured with release builds, see README "Benchmarks").

mod support;

use std::process::Command;

use support::*;

fn json_of(args: &[&str]) -> serde_json::Value {
    let bin_dir = ensure_service_binaries();
    let out = Command::new(loadtest_bin())
        .args(args)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn compare_measures_every_target_and_method() {
    let r = json_of(&[
        "compare",
        "--targets",
        "rw-proxy,direct",
        "--methods",
        "GET,PUT",
        "--connections",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--keys",
        "50",
        "--no-wrk",
    ]);
    let summary = r["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 4, "{r:#}");
    for m in summary {
        assert_eq!(m["errors"], 0, "{m}");
        assert!(m["requests_per_s"].as_f64().unwrap() > 0.0, "{m}");
        assert!(
            m["p99_us"].as_u64().unwrap() >= m["p50_us"].as_u64().unwrap(),
            "{m}"
        );
    }
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    // No nginx in the run: no ratios.
    assert_eq!(r["ratios"], serde_json::json!([]));
}

#[test]
fn election_bench_reports_cpu_and_memory() {
    let r = json_of(&["election-bench", "--nodes", "5", "--duration", "1s"]);
    let run = &r[0];
    assert_eq!(run["nodes"], 5);
    assert!(run["rss_kib"].as_u64().unwrap() > 0, "{r:#}");
    assert!(run["cpu_percent"].as_f64().unwrap() >= 0.0, "{r:#}");
}
