//! `loadtest failover` end to end (real nodes, writer-election, rw-proxy), as CI runs it.

mod support;

use std::process::Command;

use support::*;

fn failover(fault: &[&str]) -> (i32, serde_json::Value) {
    short_failover(fault, 150, &[])
}

/// The invariants hold whatever the proxy can do: nothing acknowledged is lost, no epoch is
/// accepted by two nodes, the log's epochs never go back, and the election moved the writer.
fn assert_safe(report: &serde_json::Value) {
    let a = &report["analysis"];
    assert_eq!(a["lost_acked_writes"], 0, "{report:#}");
    assert_eq!(
        a["log"]["epochs_on_two_nodes"],
        serde_json::json!({}),
        "{report:#}"
    );
    assert_eq!(a["log"]["epoch_regressions"], 0, "{report:#}");
    assert_eq!(a["log"]["corrupt_lines"], 0, "{report:#}");
    assert!(a["writes"]["acked"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["new_writer"]["name"].is_string(),
        "no new writer: {report:#}"
    );
    assert_ne!(report["new_writer"]["name"], report["old_writer"]["name"]);
    for (node, missing) in report["read_back"]["missing_on_node"].as_object().unwrap() {
        assert_eq!(missing, 0, "{node}: {report:#}");
    }
    // Reads carrying the read-your-writes token, through the fault.
    assert_eq!(report["token_reads"]["stale"], 0, "{report:#}");
    assert!(
        report["token_reads"]["checked"].as_u64().unwrap() > 0,
        "{report:#}"
    );
}

/// Full pass (held writes, failover seen by the client, nothing failed beyond the rules)
/// needs rw-proxy to follow writer-election; with a static topology only the safety
/// invariants are meaningful, and the report says so.
fn assert_passed_if_live(code: i32, report: &serde_json::Value) {
    if report["topology_mode"] == "election" {
        assert_eq!(report["passed"], true, "{report:#}");
        assert_eq!(code, 0);
    } else {
        assert_eq!(
            report["passed"], false,
            "a static topology cannot pass: {report:#}"
        );
        assert_eq!(code, 1);
        eprintln!("NOTE: rw-proxy cannot follow writer-election yet; only the safety invariants were checked");
    }
}

#[test]
fn kill_writer_loses_no_acknowledged_write() {
    let (code, report) = failover(&["--kill", "writer"]);
    assert_eq!(report["scenario"], "kill");
    assert_safe(&report);
    assert_passed_if_live(code, &report);
}

#[test]
fn a_writer_that_loses_its_role_is_promoted_again_and_every_refused_write_lands_once() {
    let (code, report) = failover(&["--demote", "writer"]);
    assert_eq!(report["scenario"], "demote");
    let a = &report["analysis"];
    assert_eq!(a["lost_acked_writes"], 0, "{report:#}");
    assert_eq!(a["applied_twice"], 0, "{report:#}");
    assert_eq!(a["writes"]["failed"], 0, "{report:#}");
    assert!(
        report["new_writer"].is_null(),
        "the same writer, re-promoted: {report:#}"
    );
    // The proxy saw the refusals and held those writes instead of failing them.
    let held: f64 = report["proxy_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .filter(|l| l.starts_with(r#"rw_proxy_writer_refusals_total{outcome="held"}"#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(held >= 1.0, "no refusal seen: {report:#}");
    assert_passed_if_live(code, &report);
}

#[test]
fn switchover_loses_nothing() {
    let (code, report) = failover(&["--switchover"]);
    assert_eq!(report["scenario"], "switchover");
    assert!(
        report["fault_response"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 2"),
        "{report:#}"
    );
    assert_safe(&report);
    assert_passed_if_live(code, &report);
}

#[test]
fn exactly_one_fault_is_required() {
    let out = Command::new(loadtest_bin())
        .args(["failover", "--kill", "writer", "--switchover"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(loadtest_bin())
        .arg("failover")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kill"), "{err}");
}
