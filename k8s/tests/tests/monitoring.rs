//! k8s/monitoring/: the PrometheusRule with the real promtool (`check rules`, and `test rules`
//! with a unit test per alert), the runbook links into docs/failover.md, and every metric name
//! the rules and the Grafana dashboard use against the names the code registers.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

const RULES: &str = "monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "monitoring/grafana-dashboard.json";

fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"))
}

/// `promtool <args>` in `dir`: (success, stdout + stderr).
fn run_promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); Debian's prometheus package provides it \
                 (scripts/bootstrap.sh installs it), or set PROMTOOL",
                promtool().display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn prometheus_rule() -> PrometheusRule {
    let m = Manifests::load();
    m.get_optional::<PrometheusRule>("microstream-rw")
}

fn alerts(rule: &PrometheusRule) -> Vec<&AlertRule> {
    rule.spec.groups.iter().flat_map(|g| &g.rules).collect()
}

/// The PrometheusRule's spec as the plain rule file promtool reads.
fn write_rule_file(dir: &Path, spec: &RuleFile) {
    let text = serde_yaml::to_string(spec).unwrap_or_else(|e| panic!("rules to YAML: {e}"));
    std::fs::write(dir.join("rules.yaml"), text).unwrap_or_else(|e| panic!("rules.yaml: {e}"));
}

#[test]
fn promtool_accepts_the_rules_and_rejects_a_broken_one() {
    let rule = prometheus_rule();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    write_rule_file(dir.path(), &rule.spec);
    let (ok, out) = run_promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(ok, "promtool check rules:\n{out}");
    let count = alerts(&rule).len();
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );

    // The same check on a rule with a bad expression fails: the tool really looks.
    let mut broken = prometheus_rule();
    broken.spec.groups[0].rules[0].expr = "max by (namespace (writer_election_has_writer)".into();
    write_rule_file(dir.path(), &broken.spec);
    let (ok, out) = run_promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(
        !ok,
        "a broken expression passed promtool check rules:\n{out}"
    );
}

/// The alert names each unit test case expects to fire.
fn alerts_tested(test_file: &Value) -> BTreeMap<String, (usize, usize)> {
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in test_file["tests"].as_array().into_iter().flatten() {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap_or_default().to_string();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let e = seen.entry(name).or_default();
            if fires {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    seen
}

#[test]
fn every_alert_has_a_unit_test_that_passes_in_promtool() {
    let rule = prometheus_rule();
    let test_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("promtool/rules_test.yaml");
    let test_text = read(&test_path);
    let test_file: Value =
        serde_yaml::from_str(&test_text).unwrap_or_else(|e| panic!("{}: {e}", test_path.display()));

    // Each alert fires in one case and stays silent in another.
    let tested = alerts_tested(&test_file);
    for a in alerts(&rule) {
        let (fires, silent) = tested.get(&a.alert).copied().unwrap_or_default();
        assert!(
            fires > 0 && silent > 0,
            "{}: {fires} case(s) where it fires, {silent} where it must not; need both",
            a.alert
        );
    }
    let names: BTreeSet<&str> = alerts(&rule).iter().map(|a| a.alert.as_str()).collect();
    for t in tested.keys() {
        assert!(
            names.contains(t.as_str()),
            "the tests name an unknown alert {t}"
        );
    }

    // The unit tests check expressions, `for` and labels. promtool compares annotations
    // exactly, so they are left out of the copy the tests run against; `check rules` above
    // parses their templates.
    let mut spec = prometheus_rule().spec;
    for r in spec.groups.iter_mut().flat_map(|g| &mut g.rules) {
        r.annotations.clear();
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    write_rule_file(dir.path(), &spec);
    std::fs::write(dir.path().join("rules_test.yaml"), &test_text)
        .unwrap_or_else(|e| panic!("rules_test.yaml: {e}"));
    let (ok, out) = run_promtool(dir.path(), &["test", "rules", "rules_test.yaml"]);
    assert!(ok, "promtool test rules:\n{out}");

    // And the unit tests can fail: a threshold moved past the test's series breaks one.
    for r in spec.groups.iter_mut().flat_map(|g| &mut g.rules) {
        if r.alert == "RwProxyHeldWritesPilingUp" {
            r.expr = r.expr.replace("> 100", "> 1000");
        }
    }
    write_rule_file(dir.path(), &spec);
    let (ok, out) = run_promtool(dir.path(), &["test", "rules", "rules_test.yaml"]);
    assert!(
        !ok,
        "a changed threshold still passed the unit tests:\n{out}"
    );
    assert!(out.contains("RwProxyHeldWritesPilingUp"), "{out}");
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_says_what_to_check_first_and_links_its_runbook_section() {
    let docs = read(&repo_root().join("docs/failover.md"));
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for a in alerts(&prometheus_rule()) {
        let desc = a
            .annotations
            .get("description")
            .cloned()
            .unwrap_or_default();
        assert!(desc.contains("Check first"), "{}: {desc:?}", a.alert);
        assert!(a.annotations.contains_key("summary"), "{}", a.alert);
        assert!(
            ["critical", "warning", "info"].contains(&a.labels.get("severity").map_or("", |s| s)),
            "{}: severity {:?}",
            a.alert,
            a.labels.get("severity")
        );
        let url = a
            .annotations
            .get("runbook_url")
            .cloned()
            .unwrap_or_default();
        let Some(section) = url.strip_prefix("docs/failover.md#") else {
            panic!(
                "{}: runbook_url {url:?} is not a docs/failover.md section",
                a.alert
            );
        };
        assert!(
            anchors.contains(section),
            "{}: docs/failover.md has no section #{section}",
            a.alert
        );
        assert_eq!(
            section,
            format!("alert-{}", a.alert.to_lowercase()),
            "one section per alert, named after it"
        );
    }
}

/// Metric names registered in a metrics.rs: the string literals in the service's namespace.
fn registered(source: &str, prefix: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with(prefix)
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// The standard series of prometheus' ProcessCollector (registered by both services).
const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Metric names in a PromQL expression: identifiers in our namespaces (labels, functions and
/// keywords are in none of them).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            t.starts_with("rw_proxy_")
                || t.starts_with("writer_election_")
                || t.starts_with("process_")
        })
        .map(str::to_string)
        .collect()
}

/// The names of `used` that no code registers (histograms also give `_bucket`, `_sum`,
/// `_count`).
fn unknown_metrics(used: &BTreeSet<String>, known: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !known.contains(name.as_str()) && !known.contains(base)
        })
        .cloned()
        .collect()
}

fn known_metrics() -> BTreeSet<String> {
    let root = repo_root();
    let proxy = read(&root.join("proxy/src/metrics.rs"));
    let election = read(&root.join("writer-election/src/metrics.rs"));
    let mut known = registered(&proxy, "rw_proxy_");
    known.extend(registered(&election, "writer_election_"));
    if proxy.contains("ProcessCollector") && election.contains("ProcessCollector") {
        known.extend(PROCESS_METRICS.iter().map(|s| s.to_string()));
    }
    known
}

/// Every `expr` and `query` string in the dashboard (panels, annotations, variables).
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[test]
fn every_metric_the_dashboard_and_the_rules_use_exists_in_the_code() {
    let known = known_metrics();
    assert!(
        known.contains("rw_proxy_held_writes") && known.contains("writer_election_epoch"),
        "the scan of metrics.rs found {known:?}"
    );

    let rules: BTreeSet<String> = alerts(&prometheus_rule())
        .iter()
        .flat_map(|a| metric_names(&a.expr))
        .collect();
    let dashboard: Value = serde_json::from_str(&read(&k8s_dir().join(DASHBOARD)))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let used_by_dashboard: BTreeSet<String> =
        queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(rules.len() >= 8, "{rules:?}");
    assert!(used_by_dashboard.len() >= 15, "{used_by_dashboard:?}");

    assert_eq!(
        unknown_metrics(&rules, &known),
        Vec::<String>::new(),
        "in {RULES}"
    );
    assert_eq!(
        unknown_metrics(&used_by_dashboard, &known),
        Vec::<String>::new(),
        "in {DASHBOARD}"
    );

    // The check itself: a misspelt name and a histogram suffix of a non-histogram are caught.
    let wrong: BTreeSet<String> = [
        "rw_proxy_held_write".to_string(),
        "writer_election_epoch".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        unknown_metrics(&wrong, &known),
        vec!["rw_proxy_held_write".to_string()]
    );
}

#[test]
fn the_dashboard_is_importable_as_is() {
    let d: Value = serde_json::from_str(&read(&k8s_dir().join(DASHBOARD)))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    // Import gives it a new id; a fixed uid keeps re-imports updating the same dashboard.
    assert!(d["id"].is_null(), "id must be null for import");
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["schemaVersion"].as_u64().is_some());
    // No datasource of the author's Grafana: every query uses the ${datasource} variable.
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{vars:?}"
    );
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    assert!(!panels.is_empty());
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64()),
            "panel id of {title} is used twice"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in &targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }

    // Every query is valid PromQL: promtool parses them as recording rules, with Grafana's
    // variables replaced by what Grafana would put there.
    let mut queries = Vec::new();
    dashboard_queries(&d, &mut queries);
    let exprs: Vec<String> = queries
        .iter()
        .filter(|q| !q.starts_with("label_values(") && q.as_str() != "prometheus")
        .map(|q| {
            q.replace("$__rate_interval", "1m")
                .replace("$namespace", ".*")
        })
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string())
        .unwrap_or_else(|e| panic!("dashboard.yaml: {e}"));
    let (ok, out) = run_promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(ok, "dashboard queries are not valid PromQL:\n{out}");
}
