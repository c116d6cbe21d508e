//! Loading and checking helpers for the manifest tests: YAML documents -> typed k8s-openapi
//! objects with a strict round trip, label selector matching, small parsers for the Dockerfile
//! and the config values the manifests must agree with.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `kustomization.yaml`, with unknown keys rejected (a misspelt `resource:` would otherwise
/// silently apply nothing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub resources: Vec<String>,
    #[serde(default)]
    pub images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeImage {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

/// Prometheus Operator CRDs are not in k8s-openapi: the subset of their schema we use, strict.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<MonitorEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<MonitorEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MonitorEndpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
}

/// The Prometheus Operator's PrometheusRule: `spec` is a Prometheus rule file (`groups:`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RuleFile,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<AlertRule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Prometheus Operator kinds (monitoring.coreos.com/v1) as k8s-openapi resources.
macro_rules! monitoring_resource {
    ($($ty:ident => $plural:literal),* $(,)?) => {$(
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = "monitoring.coreos.com/v1";
            const GROUP: &'static str = "monitoring.coreos.com";
            const KIND: &'static str = stringify!($ty);
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }
    )*};
}

monitoring_resource!(
    ServiceMonitor => "servicemonitors",
    PodMonitor => "podmonitors",
    PrometheusRule => "prometheusrules",
);

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Path relative to k8s/ (or to the fixtures dir).
    pub file: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub value: Value,
}

impl Doc {
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{} ({})",
            self.api_version, self.kind, self.name, self.file
        )
    }
}

/// Every YAML document of one file, as JSON values. Empty documents (a trailing `---`) are skipped.
pub fn load_docs(dir: &Path, rel: &str) -> Vec<Doc> {
    let text = read(&dir.join(rel));
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{rel}: document {i} is not valid YAML: {e}"));
        if value.is_null() {
            continue;
        }
        let field = |p: &str| {
            value
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{rel}: document {i} has no string {p}"))
        };
        docs.push(Doc {
            file: rel.to_owned(),
            api_version: field("/apiVersion"),
            kind: field("/kind"),
            name: field("/metadata/name"),
            value: value.clone(),
        });
    }
    docs
}

/// Deserialises `value` into `T` and serialises it back; any difference means the document holds a
/// key the typed object does not know (k8s-openapi types ignore unknown fields, the API server with
/// strict field validation rejects them) or a value of the wrong shape.
pub fn strict_typed<T: DeserializeOwned + Serialize>(
    value: &Value,
    what: &str,
) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| format!("{what}: {e}"))?;
    let back =
        serde_json::to_value(&typed).map_err(|e| format!("{what}: cannot serialise: {e}"))?;
    let mut diffs = Vec::new();
    diff_values("", value, &back, &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "{what}: not kept by a typed round trip (unknown or misspelt key, or wrong type): {}",
            diffs.join("; ")
        ))
    }
}

/// Paths where `before` and `after` differ.
pub fn diff_values(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => diff_values(&p, va, vb, out),
                    None => out.push(format!("{p} dropped")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k} added"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff_values(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if before == after => {}
        _ => out.push(format!("{path}: {before} became {after}")),
    }
}

/// The manifests `kubectl apply -k k8s/` applies, plus the optional files kept beside them.
pub struct Manifests {
    pub kustomization: Kustomization,
    /// Documents of the files listed in kustomization.yaml `resources`.
    pub docs: Vec<Doc>,
    /// Documents of the optional files (not in the kustomization).
    pub optional_docs: Vec<Doc>,
}

/// Manifests under k8s/ that are deliberately not in kustomization.yaml.
pub const OPTIONAL_FILES: &[&str] = &[
    "monitoring/servicemonitor.yaml",
    "monitoring/prometheusrule.yaml",
];

impl Manifests {
    pub fn load() -> Self {
        let dir = k8s_dir();
        let text = read(&dir.join("kustomization.yaml"));
        let kustomization: Kustomization =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("k8s/kustomization.yaml: {e}"));
        let docs = kustomization
            .resources
            .iter()
            .flat_map(|rel| load_docs(&dir, rel))
            .collect();
        let optional_docs = OPTIONAL_FILES
            .iter()
            .flat_map(|rel| load_docs(&dir, rel))
            .collect();
        Manifests {
            kustomization,
            docs,
            optional_docs,
        }
    }

    pub fn all_docs(&self) -> impl Iterator<Item = &Doc> {
        self.docs.iter().chain(&self.optional_docs)
    }

    /// The one object of type `T` named `name` among the applied manifests, strictly typed.
    pub fn get<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(&self, name: &str) -> T {
        find_typed(&self.docs, name)
    }

    pub fn get_optional<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(
        &self,
        name: &str,
    ) -> T {
        find_typed(&self.optional_docs, name)
    }

    pub fn all_of<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(&self) -> Vec<T> {
        self.docs
            .iter()
            .filter(|d| d.api_version == T::API_VERSION && d.kind == T::KIND)
            .map(|d| strict_typed(&d.value, &d.describe()).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }
}

pub fn find_typed<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(
    docs: &[Doc],
    name: &str,
) -> T {
    let mut found = docs
        .iter()
        .filter(|d| d.api_version == T::API_VERSION && d.kind == T::KIND && d.name == name);
    let doc = found.next().unwrap_or_else(|| {
        panic!(
            "no {} {}/{} in the manifests",
            T::API_VERSION,
            T::KIND,
            name
        )
    });
    assert!(
        found.next().is_none(),
        "{}/{name} is defined twice",
        T::KIND
    );
    strict_typed(&doc.value, &doc.describe()).unwrap_or_else(|e| panic!("{e}"))
}

/// Does `selector` select an object with `labels`? (matchLabels and matchExpressions, all ANDed.)
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => panic!("unknown label selector operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

/// A selector that selects nothing-in-particular (empty) selects everything: never what we want.
pub fn assert_selector_not_empty(selector: &LabelSelector, what: &str) {
    let n = selector.match_labels.as_ref().map_or(0, BTreeMap::len)
        + selector.match_expressions.as_ref().map_or(0, Vec::len);
    assert!(n > 0, "{what}: empty selector selects every pod");
}

/// A Service's plain map selector (equality on every key).
pub fn map_selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An equality-based label selector string, as writer-election's config takes it:
/// `k=v,k2==v2,k3!=v3`. Set-based syntax is not used by our configs and fails the test.
pub fn string_selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        !selector.trim().is_empty(),
        "empty label selector selects every pod"
    );
    selector.split(',').map(str::trim).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else {
            panic!("label selector term {term:?}: only k=v, k==v, k!=v are understood here")
        }
    })
}

pub fn pod_template(d: &Deployment) -> &PodTemplateSpec {
    &d.spec.as_ref().expect("Deployment without spec").template
}

pub fn pod_spec(d: &Deployment) -> &PodSpec {
    pod_template(d)
        .spec
        .as_ref()
        .expect("pod template without spec")
}

pub fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    pod_template(d)
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

pub fn pod_annotations(d: &Deployment) -> BTreeMap<String, String> {
    pod_template(d)
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

pub fn only_container(d: &Deployment) -> &Container {
    let spec = pod_spec(d);
    assert_eq!(
        spec.containers.len(),
        1,
        "{:?}: one container expected",
        d.metadata.name
    );
    &spec.containers[0]
}

/// containerPort of the port named `name` in `c`.
pub fn named_port(c: &Container, name: &str) -> Option<i32> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Resolves a probe/Service target port (name or number) against the container's ports.
pub fn resolve_port(c: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(n) => c
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == *n)
            .then_some(*n),
        IntOrString::String(name) => named_port(c, name),
    }
}

/// `--config PATH` from the container's command line.
pub fn config_arg(c: &Container) -> String {
    let argv: Vec<&String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .collect();
    let i = argv
        .iter()
        .position(|a| a.as_str() == "--config")
        .unwrap_or_else(|| panic!("container {} has no --config argument", c.name));
    argv.get(i + 1)
        .map(|s| s.to_string())
        .unwrap_or_else(|| panic!("container {}: --config without a value", c.name))
}

/// The port of a "host:port" listen address.
pub fn listen_port(addr: &str) -> i32 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("listen address {addr:?} has no port"))
}

/// (host, port) of an `http://host:port[/path]` URL; port 80 when absent.
pub fn http_url_host_port(url: &str) -> (String, i32) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url:?}: expected an http:// URL"));
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse().unwrap_or_else(|_| panic!("{url:?}: bad port")),
        ),
        None => (authority.to_owned(), 80),
    }
}

/// The YAML text of a ConfigMap key, parsed as a JSON value for pointer lookups.
pub fn yaml_value(text: &str, what: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what}: not valid YAML: {e}"))
}

/// The final stage of a (multi-stage) Dockerfile: instruction lines after the last FROM, with
/// continuation lines joined.
pub fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            let _ = write!(cur, "{body} ");
        } else if !t.starts_with('#') {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Does a .dockerignore pattern exclude `path` (or a directory above it)? Handles the forms we
/// use: a literal path, a trailing `/`, a leading `**/`, and `*` inside one path component.
pub fn dockerignore_excludes(pattern: &str, path: &str) -> bool {
    let pat = pattern.trim().trim_start_matches('/').trim_end_matches('/');
    let comps: Vec<&str> = path.split('/').collect();
    let (anywhere, pat) = match pat.strip_prefix("**/") {
        Some(p) => (true, p),
        None => (false, pat),
    };
    let pat_comps: Vec<&str> = pat.split('/').collect();
    let starts: Vec<usize> = if anywhere {
        (0..comps.len()).collect()
    } else {
        vec![0]
    };
    starts.into_iter().any(|s| {
        comps.len() >= s + pat_comps.len()
            && pat_comps
                .iter()
                .zip(&comps[s..])
                .all(|(p, c)| glob_component(p, c))
    })
}

fn glob_component(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, tail)) => {
            s.starts_with(head)
                && (head.len()..=s.len())
                    .any(|i| s.is_char_boundary(i) && glob_component(tail, &s[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_matching() {
        assert!(dockerignore_excludes("target/", "target"));
        assert!(dockerignore_excludes("**/target/", "k8s/tests/target"));
        assert!(dockerignore_excludes("k8s", "k8s/tests"));
        assert!(dockerignore_excludes("perf.data*", "perf.data.old"));
        assert!(!dockerignore_excludes("target/", "k8s/tests"));
        assert!(!dockerignore_excludes("**/*.state.json", "proxy/src"));
        assert!(dockerignore_excludes("**/*.state.json", "a/b.state.json"));
    }

    #[test]
    fn string_selectors() {
        let labels = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        assert!(string_selector_matches("a=1", &labels));
        assert!(string_selector_matches("a==1,b!=2", &labels));
        assert!(!string_selector_matches("a=2", &labels));
    }
}
