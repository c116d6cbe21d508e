//! The manifests in k8s/: every document parses strictly into its k8s-openapi type, and the pieces
//! agree with each other, with the configs they carry, with the reference cluster they drop into
//! (fixtures/reference-cluster.yaml), with the Dockerfile, and with the API calls writer-election
//! makes.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use support::*;
use writer_election::permissions;

const NAMESPACE: &str = "my-microstream-cluster";
const PROXY: &str = "rw-proxy";
const ELECTION: &str = "writer-election";
/// The label the existing `proxy` Service selects and the storage pods carry.
const COMPONENT: &str = "microstream.one/cluster-component";

fn fixtures() -> Vec<Doc> {
    load_docs(&fixtures_dir(), "reference-cluster.yaml")
}

fn proxy_config_text(m: &Manifests) -> String {
    config_map_key(m, PROXY, "proxy.yaml")
}

fn election_config_text(m: &Manifests) -> String {
    config_map_key(m, ELECTION, "election.yaml")
}

fn config_map_key(m: &Manifests, name: &str, key: &str) -> String {
    let cm: ConfigMap = m.get(name);
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
}

fn volume<'a>(d: &'a Deployment, name: &str) -> &'a Volume {
    pod_spec(d)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{:?}: no volume {name}", d.metadata.name))
}

/// The volume mounted (without subPath) at the directory holding `file`, and the file's name.
fn volume_holding<'a>(d: &'a Deployment, c: &Container, file: &str) -> (&'a Volume, String) {
    let path = Path::new(file);
    let dir = path.parent().and_then(Path::to_str).unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.mount_path.trim_end_matches('/') == dir)
        .unwrap_or_else(|| {
            panic!(
                "container {}: nothing mounted at {dir} (for {file})",
                c.name
            )
        });
    assert!(
        mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
        "container {}: {dir} is a subPath mount, which never sees ConfigMap/Secret updates",
        c.name
    );
    assert_eq!(
        mount.read_only,
        Some(true),
        "container {}: {dir} should be mounted read-only",
        c.name
    );
    (volume(d, &mount.name), name)
}

#[test]
fn kustomization_lists_every_manifest_once() {
    let m = Manifests::load();
    let k = &m.kustomization;
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    assert_eq!(k.namespace, NAMESPACE, "the reference cluster's namespace");

    let listed: BTreeSet<&str> = k.resources.iter().map(String::as_str).collect();
    assert_eq!(
        listed.len(),
        k.resources.len(),
        "a resource is listed twice"
    );

    // Every manifest in k8s/ is applied or deliberately optional; none is forgotten.
    let mut on_disk = BTreeSet::new();
    collect_yaml(&k8s_dir(), &k8s_dir(), &mut on_disk);
    on_disk.remove("kustomization.yaml");
    let expected: BTreeSet<String> = listed
        .iter()
        .chain(OPTIONAL_FILES)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        on_disk, expected,
        "YAML files under k8s/ vs kustomization resources + optional files"
    );

    // The kustomization sets the namespace; a namespace in a file would fight it.
    let mut seen = BTreeSet::new();
    for doc in m.all_docs() {
        assert!(
            doc.value.pointer("/metadata/namespace").is_none(),
            "{}: metadata.namespace is set by the kustomization",
            doc.describe()
        );
        assert!(
            seen.insert((doc.kind.clone(), doc.name.clone())),
            "{} is defined twice",
            doc.describe()
        );
    }

    // The image every Deployment runs is the one the kustomization rewrites.
    assert_eq!(k.images.len(), 1, "one image for both binaries");
    for d in m.all_of::<Deployment>() {
        for c in &pod_spec(&d).containers {
            let image = c.image.as_deref().unwrap_or_default();
            let repo = image.split([':', '@']).next().unwrap_or_default();
            assert_eq!(repo, k.images[0].name, "container {} runs {image}", c.name);
        }
    }
}

fn collect_yaml(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if path.is_dir() {
            // The test package and its fixtures are not manifests.
            if rel != "tests" {
                collect_yaml(root, &path, out);
            }
        } else if rel.ends_with(".yaml") || rel.ends_with(".yml") {
            out.insert(rel);
        }
    }
}

/// Strictly types one document by its apiVersion/kind; an unknown kind is an error too.
fn check_typed(doc: &Doc) -> Result<(), String> {
    let what = doc.describe();
    let v = &doc.value;
    match (doc.api_version.as_str(), doc.kind.as_str()) {
        ("v1", "ServiceAccount") => strict_typed::<ServiceAccount>(v, &what).map(drop),
        ("v1", "ConfigMap") => strict_typed::<ConfigMap>(v, &what).map(drop),
        ("v1", "Secret") => strict_typed::<Secret>(v, &what).map(drop),
        ("v1", "Service") => strict_typed::<Service>(v, &what).map(drop),
        ("v1", "Pod") => strict_typed::<Pod>(v, &what).map(drop),
        ("apps/v1", "Deployment") => strict_typed::<Deployment>(v, &what).map(drop),
        ("apps/v1", "StatefulSet") => strict_typed::<StatefulSet>(v, &what).map(drop),
        ("rbac.authorization.k8s.io/v1", "Role") => strict_typed::<Role>(v, &what).map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            strict_typed::<RoleBinding>(v, &what).map(drop)
        }
        ("policy/v1", "PodDisruptionBudget") => {
            strict_typed::<PodDisruptionBudget>(v, &what).map(drop)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            strict_typed::<NetworkPolicy>(v, &what).map(drop)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            strict_typed::<ServiceMonitor>(v, &what).map(drop)
        }
        ("monitoring.coreos.com/v1", "PodMonitor") => {
            strict_typed::<PodMonitor>(v, &what).map(drop)
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            strict_typed::<PrometheusRule>(v, &what).map(drop)
        }
        (api, kind) => Err(format!("{what}: no typed check for {api} {kind}; add one")),
    }
}

#[test]
fn every_manifest_parses_strictly_into_its_typed_object() {
    let m = Manifests::load();
    let errors: Vec<String> = m
        .all_docs()
        .chain(&fixtures())
        .filter_map(|d| check_typed(d).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let applied: BTreeSet<(&str, &str)> = m
        .docs
        .iter()
        .map(|d| (d.kind.as_str(), d.name.as_str()))
        .collect();
    let expected: BTreeSet<(&str, &str)> = [
        ("ServiceAccount", ELECTION),
        ("Role", ELECTION),
        ("RoleBinding", ELECTION),
        ("ConfigMap", ELECTION),
        ("Deployment", ELECTION),
        ("Service", ELECTION),
        ("PodDisruptionBudget", ELECTION),
        ("NetworkPolicy", ELECTION),
        ("ConfigMap", PROXY),
        ("Deployment", PROXY),
        ("PodDisruptionBudget", PROXY),
    ]
    .into_iter()
    .collect();
    assert_eq!(applied, expected, "objects `kubectl apply -k k8s/` creates");
}

#[test]
fn strict_typing_rejects_unknown_and_misplaced_keys() {
    // The check above is only worth something if it can fail: a misspelt key, a key at the wrong
    // level, and a wrong value type must each be caught.
    let m = Manifests::load();
    let base = m
        .docs
        .iter()
        .find(|d| d.kind == "Deployment" && d.name == PROXY)
        .expect("rw-proxy Deployment");
    type Mutation = (&'static str, fn(&mut Value));
    let mutations: [Mutation; 3] = [
        ("misspelt spec.replica", |v| {
            v["spec"]["replica"] = Value::from(2);
        }),
        ("probe field on the container's securityContext", |v| {
            v["spec"]["template"]["spec"]["containers"][0]["securityContext"]["periodSeconds"] =
                Value::from(2);
        }),
        ("string where an integer belongs", |v| {
            v["spec"]["replicas"] = Value::from("two");
        }),
    ];
    for (what, mutate) in mutations {
        let mut doc = base.clone();
        mutate(&mut doc.value);
        assert!(check_typed(&doc).is_err(), "not rejected: {what}");
    }
}

#[test]
fn the_existing_proxy_service_selects_rw_proxy_pods_on_the_right_port() {
    let m = Manifests::load();
    let fx = fixtures();
    let svc: Service = find_typed(&fx, "proxy");
    let nginx: Deployment = find_typed(&fx, "proxy");
    let proxy: Deployment = m.get(PROXY);
    let labels = pod_labels(&proxy);
    let spec = svc.spec.as_ref().expect("proxy Service spec");
    let selector = spec.selector.as_ref().expect("proxy Service selector");
    assert!(
        map_selector_matches(selector, &labels),
        "Service proxy {selector:?} misses rw-proxy pods {labels:?}"
    );

    let c = only_container(&proxy);
    let cfg = yaml_value(&proxy_config_text(&m), "proxy.yaml");
    let listen = listen_port(cfg["listen"].as_str().expect("proxy.yaml listen"));
    for p in spec.ports.iter().flatten() {
        let target = p.target_port.as_ref().expect("targetPort");
        assert_eq!(
            resolve_port(c, target),
            Some(listen),
            "Service proxy port {:?} must reach rw-proxy's listener",
            p.name
        );
    }

    // No overlap the other way: the rw-proxy Deployment must never claim the nginx pods.
    let own = proxy
        .spec
        .as_ref()
        .map(|s| &s.selector)
        .expect("rw-proxy selector");
    assert_selector_not_empty(own, "rw-proxy Deployment");
    assert!(
        selector_matches(own, &labels),
        "rw-proxy selector does not select its own pod template"
    );
    assert!(
        !selector_matches(own, &pod_labels(&nginx)),
        "rw-proxy selector would adopt the nginx pods"
    );
    assert_eq!(proxy.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_ne!(
        proxy.metadata.name, nginx.metadata.name,
        "a new name: the nginx Deployment's selector is immutable"
    );
}

#[test]
fn probe_and_listen_ports_agree_with_the_configs() {
    let m = Manifests::load();
    for d in m.all_of::<Deployment>() {
        for c in &pod_spec(&d).containers {
            let probes = [
                ("liveness", &c.liveness_probe),
                ("readiness", &c.readiness_probe),
                ("startup", &c.startup_probe),
            ];
            for (kind, probe) in probes {
                if let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) {
                    assert!(
                        resolve_port(c, &get.port).is_some(),
                        "{}: {kind} probe port {:?} is not a container port",
                        c.name,
                        get.port
                    );
                }
            }
            assert!(
                c.liveness_probe.is_some() && c.readiness_probe.is_some(),
                "{}: liveness and readiness probes",
                c.name
            );
        }
    }

    let proxy: Deployment = m.get(PROXY);
    let c = only_container(&proxy);
    let cfg = yaml_value(&proxy_config_text(&m), "proxy.yaml");
    let listen = listen_port(cfg["listen"].as_str().expect("proxy.yaml listen"));
    let admin = listen_port(
        cfg["admin_listen"]
            .as_str()
            .expect("proxy.yaml admin_listen"),
    );
    assert_eq!(
        named_port(c, "http"),
        Some(listen),
        "rw-proxy port http = listen"
    );
    assert_eq!(listen, 8080, "the seed nginx's port");
    assert_eq!(
        named_port(c, "metrics"),
        Some(admin),
        "rw-proxy port metrics = admin_listen"
    );
    assert_http_probe(
        c,
        "liveness",
        c.liveness_probe.as_ref(),
        "/health",
        "metrics",
    );
    assert_http_probe(
        c,
        "readiness",
        c.readiness_probe.as_ref(),
        "/health/ready",
        "metrics",
    );

    let election: Deployment = m.get(ELECTION);
    let c = only_container(&election);
    let cfg = yaml_value(&election_config_text(&m), "election.yaml");
    let listen = listen_port(cfg["listen"].as_str().expect("election.yaml listen"));
    assert_eq!(
        named_port(c, "http"),
        Some(listen),
        "writer-election port http = listen"
    );
    assert_http_probe(c, "liveness", c.liveness_probe.as_ref(), "/health", "http");
    assert_http_probe(
        c,
        "readiness",
        c.readiness_probe.as_ref(),
        "/health/ready",
        "http",
    );
}

fn assert_http_probe(
    c: &Container,
    kind: &str,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
    path: &str,
    port: &str,
) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{}: {kind} probe is not an httpGet", c.name));
    assert_eq!(
        get.path.as_deref(),
        Some(path),
        "{}: {kind} probe path",
        c.name
    );
    assert_eq!(
        get.port,
        IntOrString::String(port.to_owned()),
        "{}: {kind} probe port",
        c.name
    );
}

#[test]
fn each_container_reads_its_config_map_key_through_a_directory_mount() {
    let m = Manifests::load();
    for (deployment, key) in [(PROXY, "proxy.yaml"), (ELECTION, "election.yaml")] {
        let d: Deployment = m.get(deployment);
        let c = only_container(&d);
        let file = config_arg(c);
        let (vol, name) = volume_holding(&d, c, &file);
        assert_eq!(name, key, "{deployment} reads {file}");
        let cm_name = vol
            .config_map
            .as_ref()
            .map(|cm| cm.name.clone())
            .unwrap_or_else(|| panic!("{deployment}: volume {} is not a ConfigMap", vol.name));
        assert!(
            vol.config_map
                .as_ref()
                .and_then(|cm| cm.items.as_ref())
                .is_none(),
            "{deployment}: items would hide keys; mount the whole ConfigMap"
        );
        // The key exists in the ConfigMap the volume names (panics otherwise).
        config_map_key(&m, &cm_name, key);
    }
}

fn parsed_proxy_config(m: &Manifests) -> rw_proxy::config::ProxyConfig {
    rw_proxy::config::ProxyConfig::from_yaml_str(&proxy_config_text(m)).unwrap_or_else(|e| {
        panic!("rw-proxy rejects proxy.yaml of k8s/rw-proxy/configmap.yaml: {e}")
    })
}

fn parsed_election_config(m: &Manifests) -> writer_election::config::ElectionConfig {
    writer_election::config::ElectionConfig::from_yaml_str(&election_config_text(m)).unwrap_or_else(
        |e| {
            panic!(
                "writer-election rejects election.yaml of k8s/writer-election/configmap.yaml: {e}"
            )
        },
    )
}

#[test]
fn rw_proxy_accepts_its_config_map_as_the_manifests_use_it() {
    use rw_proxy::config::{ProxyConfig, TopologyConfig};
    let m = Manifests::load();
    let cfg = parsed_proxy_config(&m);
    // The parser is strict, so the acceptance above means every key is one rw-proxy knows.
    let bogus = format!("{}\nno_such_key: 1\n", proxy_config_text(&m));
    assert!(
        ProxyConfig::from_yaml_str(&bogus).is_err(),
        "rw-proxy accepted an unknown key"
    );

    // The values as rw-proxy understands them (defaults included) match the Deployment.
    let d: Deployment = m.get(PROXY);
    let c = only_container(&d);
    assert_eq!(named_port(c, "http"), Some(i32::from(cfg.listen.port())));
    assert_eq!(
        named_port(c, "metrics"),
        Some(i32::from(cfg.admin_listen.port()))
    );
    match &cfg.topology {
        TopologyConfig::ElectionUrl(urls) => assert!(!urls.is_empty()),
        other => panic!("rw-proxy in Kubernetes must follow writer-election, not {other:?}"),
    }
    let cpu_request = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    assert!(
        cfg.threads >= 1 && cfg.threads <= 8,
        "threads {} for a pod requesting {cpu_request} CPU",
        cfg.threads
    );
}

#[test]
fn writer_election_accepts_its_config_map_as_the_manifests_use_it() {
    use writer_election::config::{Discovery, ElectionConfig, TokenSource};
    let m = Manifests::load();
    let cfg = parsed_election_config(&m);
    let bogus = format!("{}\nno_such_key: 1\n", election_config_text(&m));
    assert!(
        ElectionConfig::from_yaml_str(&bogus).is_err(),
        "writer-election accepted an unknown key"
    );

    let d: Deployment = m.get(ELECTION);
    let c = only_container(&d);
    assert_eq!(named_port(c, "http"), Some(i32::from(cfg.listen.port())));
    let Discovery::Kubernetes(k) = cfg.discovery() else {
        panic!("writer-election in Kubernetes must use kubernetes discovery")
    };
    let sts: StatefulSet = find_typed(&fixtures(), "storagenode");
    let tmpl = &sts.spec.as_ref().expect("sts spec").template;
    let labels = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        string_selector_matches(&k.label_selector, &labels),
        "{} misses the storage pods",
        k.label_selector
    );
    let storage = &tmpl.spec.as_ref().expect("storage pod spec").containers[0];
    let port = match &k.port {
        writer_election::config::PortRef::Name(n) => IntOrString::String(n.clone()),
        writer_election::config::PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
    };
    assert!(
        resolve_port(storage, &port).is_some(),
        "discovery port {} is not a storage container port",
        k.port
    );
    assert!(
        k.namespace.is_empty(),
        "discovery.kubernetes.namespace: leave empty = the pod's own namespace"
    );
    let readiness = storage
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|g| g.path.clone());
    assert_eq!(Some(cfg.probe.path.clone()), readiness);
    // The storage nodes refuse writes until they are activated as the writer: promotion is on,
    // with the node library line whose readiness path the storage pods use.
    let preset = cfg.promotion.preset;
    assert_eq!(
        preset,
        writer_election::config::PromotionPreset::Microstream,
        "promotion.preset"
    );
    assert!(cfg.promotion.is_configured(), "promotion calls");
    assert_eq!(
        preset.calls().map(|c| c.ready.to_string()),
        readiness,
        "the preset's readiness path is the storage pods' readinessProbe"
    );
    assert!(
        matches!(cfg.state, writer_election::config::StateConfig::Lease(_)),
        "state in a Lease"
    );
    assert!(cfg.ha.enabled, "two replicas need ha.enabled");
    assert!(
        cfg.ha.identity.is_empty(),
        "ha.identity: empty = POD_NAME, unique per replica"
    );
    let env_pod_name = c.env.iter().flatten().find(|e| e.name == "POD_NAME");
    let field = env_pod_name
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(
        field.map(|f| f.field_path.as_str()),
        Some("metadata.name"),
        "POD_NAME from the downward API"
    );
    // The leader advertises http://$POD_IP:<port> for the followers to forward to.
    let pod_ip = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_IP")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref());
    assert_eq!(
        pod_ip.map(|f| f.field_path.as_str()),
        Some("status.podIP"),
        "POD_IP from the downward API (the leader's advertised URL)"
    );
    assert!(cfg.label_pods.enabled);

    // The token file the config names is the one the Secret volume provides.
    match cfg.token_source() {
        Some(TokenSource::File(path)) => {
            let path = path.to_str().expect("utf-8 path").to_owned();
            let (vol, _) = volume_holding(&d, c, &path);
            assert!(vol.secret.is_some(), "{path} is not on a Secret volume");
        }
        Some(TokenSource::Env(name)) => {
            let var = c.env.iter().flatten().find(|e| e.name == name);
            assert!(var
                .and_then(|v| v.value_from.as_ref())
                .and_then(|f| f.secret_key_ref.as_ref())
                .is_some());
        }
        None => panic!("no switchover token configured: switchover would be disabled"),
    }
}

#[test]
fn proxies_find_writer_election_through_its_service() {
    let m = Manifests::load();
    let cfg = yaml_value(&proxy_config_text(&m), "proxy.yaml");
    let urls: Vec<String> = match &cfg["topology"]["election_url"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|u| u.as_str().expect("election_url entry").to_owned())
            .collect(),
        other => panic!("proxy.yaml topology.election_url: {other}"),
    };
    assert!(
        cfg["topology"].get("static").is_none(),
        "proxy.yaml: static topology in Kubernetes"
    );

    let svc: Service = m.get(ELECTION);
    let election: Deployment = m.get(ELECTION);
    let c = only_container(&election);
    let spec = svc.spec.as_ref().expect("writer-election Service spec");
    let selector = spec
        .selector
        .as_ref()
        .expect("writer-election Service selector");
    assert!(
        map_selector_matches(selector, &pod_labels(&election)),
        "Service does not select writer-election pods"
    );
    let proxy: Deployment = m.get(PROXY);
    assert!(
        !map_selector_matches(selector, &pod_labels(&proxy)),
        "writer-election Service selects rw-proxy pods"
    );
    let listen = listen_port(
        yaml_value(&election_config_text(&m), "election.yaml")["listen"]
            .as_str()
            .expect("listen"),
    );

    for url in urls {
        let (host, port) = http_url_host_port(&url);
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        assert!(
            host == name || host.starts_with(&format!("{name}.{NAMESPACE}.svc")),
            "election_url {url} does not name the Service {name}"
        );
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == port)
            .unwrap_or_else(|| panic!("election_url {url}: the Service has no port {port}"));
        let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
        assert_eq!(
            resolve_port(c, &target),
            Some(listen),
            "Service port {port} must reach writer-election's listener"
        );
    }
}

#[test]
fn writer_election_discovers_and_probes_the_storage_pods_only() {
    let m = Manifests::load();
    let fx = fixtures();
    let cfg = yaml_value(&election_config_text(&m), "election.yaml");
    let k = &cfg["discovery"]["kubernetes"];
    assert!(k.is_object(), "election.yaml: kubernetes discovery");
    let selector = k["label_selector"]
        .as_str()
        .expect("discovery.kubernetes.label_selector");
    assert_eq!(selector, format!("{COMPONENT}=storagenode"));

    let sts: StatefulSet = find_typed(&fx, "storagenode");
    let tmpl = &sts.spec.as_ref().expect("sts spec").template;
    let storage_labels = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        string_selector_matches(selector, &storage_labels),
        "label_selector misses the storage pods"
    );

    // The masternode (backup) and the writerproxy run the same port; neither may be discovered,
    // and neither may the new pods.
    for pod in ["masternode", "writerproxy"] {
        let p: Pod = find_typed(&fx, pod);
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert!(
            !string_selector_matches(selector, &labels),
            "label_selector selects {pod}"
        );
    }
    for d in m.all_of::<Deployment>() {
        assert!(
            !string_selector_matches(selector, &pod_labels(&d)),
            "label_selector selects {:?} pods",
            d.metadata.name
        );
    }

    let storage = &tmpl.spec.as_ref().expect("storage pod spec").containers[0];
    let port = match &k["port"] {
        Value::String(s) => IntOrString::String(s.clone()),
        Value::Number(n) => IntOrString::Int(
            n.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .expect("port number"),
        ),
        other => panic!("discovery.kubernetes.port: {other}"),
    };
    assert!(
        resolve_port(storage, &port).is_some(),
        "discovery port {port:?} is not a storage container port"
    );

    let readiness = storage
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|g| g.path.clone())
        .expect("storage readiness path");
    assert_eq!(
        cfg["probe"]["path"].as_str(),
        Some(readiness.as_str()),
        "probe.path = the storage pods' readinessProbe"
    );
    assert_eq!(
        readiness,
        "/microstream-cluster-controller/microstream-health/ready"
    );

    assert!(
        cfg["state"]["lease"]["name"].is_string(),
        "state in a Lease"
    );
    assert!(
        cfg["state"].get("file").is_none(),
        "no state file in Kubernetes (read-only root, replicas)"
    );
    let election: Deployment = m.get(ELECTION);
    let replicas = election.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    assert_eq!(replicas, 2);
    assert_eq!(
        cfg["ha"]["enabled"],
        Value::Bool(true),
        "two replicas need ha.enabled"
    );
    assert_ne!(
        cfg["ha"]["lease_name"], cfg["state"]["lease"]["name"],
        "leader lock and writer record share a Lease"
    );
    assert_eq!(
        cfg["label_pods"]["enabled"],
        Value::Bool(true),
        "label_pods on in the manifests"
    );
}

#[test]
fn switchover_token_comes_from_a_secret_that_is_not_committed() {
    let m = Manifests::load();
    let cfg = yaml_value(&election_config_text(&m), "election.yaml");
    let d: Deployment = m.get(ELECTION);
    let c = only_container(&d);
    let sw = &cfg["switchover"];
    let secret_name = if let Some(file) = sw
        .get("token_file")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
    {
        let (vol, name) = volume_holding(&d, c, file);
        let secret = vol
            .secret
            .as_ref()
            .unwrap_or_else(|| panic!("token_file {file}: volume {} is not a Secret", vol.name));
        if let Some(items) = &secret.items {
            assert!(
                items.iter().any(|i| i.path == name),
                "token_file {file}: no Secret item maps to {name}"
            );
        }
        secret.secret_name.clone().expect("secretName")
    } else if let Some(env) = sw.get("token_env").and_then(Value::as_str) {
        let var = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == env)
            .unwrap_or_else(|| panic!("token_env {env} is not set on the container"));
        var.value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| panic!("token_env {env} does not come from a Secret"))
    } else {
        panic!("election.yaml: switchover has neither token_file nor token_env");
    };

    // A Secret manifest, if any, carries no value: the real token is created out of band.
    for s in m.all_of::<Secret>() {
        let empty = s
            .data
            .as_ref()
            .is_none_or(|d| d.values().all(|v| v.0.is_empty()))
            && s.string_data
                .as_ref()
                .is_none_or(|d| d.values().all(String::is_empty));
        assert!(
            empty,
            "Secret {:?} holds a value in the repository",
            s.metadata.name
        );
    }
    let readme = read(&k8s_dir().join("README.md"));
    assert!(
        readme.contains(&format!("create secret generic {secret_name}")),
        "k8s/README.md must show how to create the Secret {secret_name}"
    );
}

#[test]
fn the_role_grants_exactly_the_calls_writer_election_makes() {
    let m = Manifests::load();
    let role: Role = m.get(ELECTION);
    let cfg = parsed_election_config(&m);
    // The calls themselves are listed beside the code that makes them.
    assert_eq!(
        permissions::granted_by(&role).unwrap_or_else(|e| panic!("the Role: {e}")),
        permissions::required(&cfg),
        "Role vs the calls writer-election makes with label_pods.enabled={} fencing.delete_old_writer_pod={}",
        cfg.label_pods.enabled,
        cfg.fencing.delete_old_writer_pod
    );

    let sa: ServiceAccount = m.get(ELECTION);
    let binding: RoleBinding = m.get(ELECTION);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert!(
        subjects[0].namespace.is_none(),
        "the kustomization's namespace applies"
    );

    let election: Deployment = m.get(ELECTION);
    assert_eq!(
        pod_spec(&election).service_account_name,
        sa.metadata.name,
        "writer-election runs as its ServiceAccount"
    );
    let proxy: Deployment = m.get(PROXY);
    assert_eq!(
        pod_spec(&proxy).automount_service_account_token,
        Some(false),
        "rw-proxy needs no API token"
    );
    assert_eq!(
        m.all_of::<Role>().len(),
        1,
        "only writer-election talks to the API"
    );
}

#[test]
fn network_policy_admits_only_proxies_replicas_and_prometheus_to_the_topology_api() {
    let m = Manifests::load();
    let np: NetworkPolicy = m.get(ELECTION);
    let spec = np.spec.as_ref().expect("NetworkPolicy spec");
    let election: Deployment = m.get(ELECTION);
    let proxy: Deployment = m.get(PROXY);
    let c = only_container(&election);
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .expect("NetworkPolicy podSelector");
    assert!(
        selector_matches(pod_selector, &pod_labels(&election)),
        "policy does not cover writer-election pods"
    );
    assert!(
        !selector_matches(pod_selector, &pod_labels(&proxy)),
        "policy covers rw-proxy pods"
    );
    assert_selector_not_empty(pod_selector, "NetworkPolicy podSelector");
    assert!(spec.policy_types.iter().flatten().any(|t| t == "Ingress"));

    let rules = spec.ingress.clone().unwrap_or_default();
    let mut proxies_admitted = false;
    // HA followers forward topology queries and drain acknowledgements to the leader.
    let mut replicas_admitted = false;
    for rule in &rules {
        let from = rule.from.clone().unwrap_or_default();
        assert!(
            !from.is_empty(),
            "an ingress rule without `from` admits everybody"
        );
        for port in rule.ports.iter().flatten() {
            let p = port.port.as_ref().expect("rule port");
            assert!(
                resolve_port(c, p).is_some(),
                "rule port {p:?} is not a writer-election port"
            );
        }
        for peer in &from {
            assert!(peer.ip_block.is_none(), "no ipBlock peers");
            match (&peer.pod_selector, &peer.namespace_selector) {
                (Some(ps), None) => {
                    assert_selector_not_empty(ps, "peer podSelector");
                    let is_proxy = selector_matches(ps, &pod_labels(&proxy));
                    let is_replica = selector_matches(ps, &pod_labels(&election));
                    assert!(
                        is_proxy != is_replica,
                        "a same-namespace peer other than rw-proxy or writer-election: {ps:?}"
                    );
                    proxies_admitted |= is_proxy;
                    replicas_admitted |= is_replica;
                }
                (_, Some(ns)) => {
                    assert_selector_not_empty(ns, "peer namespaceSelector (Prometheus)")
                }
                (None, None) => panic!("empty peer"),
            }
        }
    }
    assert!(proxies_admitted, "the proxies are not admitted");
    assert!(
        replicas_admitted,
        "writer-election replicas cannot reach each other (HA forwarding)"
    );
}

#[test]
fn disruption_budgets_cover_each_deployment_and_allow_evictions() {
    let m = Manifests::load();
    for name in [PROXY, ELECTION] {
        let pdb: PodDisruptionBudget = m.get(name);
        let d: Deployment = m.get(name);
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let spec = pdb.spec.as_ref().expect("PDB spec");
        let sel = spec.selector.as_ref().expect("PDB selector");
        assert_selector_not_empty(sel, name);
        assert!(
            selector_matches(sel, &pod_labels(&d)),
            "PDB {name} misses its pods"
        );
        let allowed = match (&spec.min_available, &spec.max_unavailable) {
            (Some(IntOrString::Int(min)), None) => replicas - min,
            (None, Some(IntOrString::Int(max))) => *max,
            other => {
                panic!("PDB {name}: use one integer minAvailable or maxUnavailable, got {other:?}")
            }
        };
        assert!(
            allowed >= 1 && allowed < replicas,
            "PDB {name} allows {allowed} of {replicas} pods to go"
        );
    }
}

#[test]
fn pods_are_hardened_sized_and_spread() {
    let m = Manifests::load();
    let dockerfile = read(&repo_root().join("Dockerfile"));
    let user = dockerfile_instructions(&dockerfile)
        .into_iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER ").map(str::to_owned))
        .expect("Dockerfile USER");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER uid");
    for d in m.all_of::<Deployment>() {
        let name = d.metadata.name.clone().unwrap_or_default();
        let spec = pod_spec(&d);
        let psc = spec.security_context.clone().unwrap_or_default();
        assert_eq!(psc.run_as_non_root, Some(true), "{name}: runAsNonRoot");
        assert_eq!(
            psc.run_as_user,
            Some(uid),
            "{name}: runAsUser = the image's USER"
        );
        assert_eq!(
            spec.enable_service_links,
            Some(false),
            "{name}: enableServiceLinks"
        );
        let seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"), "{name}: seccompProfile");
        for c in &spec.containers {
            let sc = c.security_context.clone().unwrap_or_default();
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{}: readOnlyRootFilesystem",
                c.name
            );
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{}: allowPrivilegeEscalation",
                c.name
            );
            assert!(sc.privileged != Some(true), "{}: privileged", c.name);
            let caps = sc.capabilities.clone().unwrap_or_default();
            assert_eq!(
                caps.drop,
                Some(vec!["ALL".to_owned()]),
                "{}: drop ALL",
                c.name
            );
            assert!(caps.add.is_none(), "{}: adds capabilities", c.name);
            let res = c.resources.clone().unwrap_or_default();
            let req = res.requests.unwrap_or_default();
            assert!(
                req.contains_key("cpu") && req.contains_key("memory"),
                "{}: cpu and memory requests",
                c.name
            );
            assert!(
                res.limits.unwrap_or_default().contains_key("memory"),
                "{}: memory limit",
                c.name
            );
        }
        let tsc = spec.topology_spread_constraints.clone().unwrap_or_default();
        assert!(
            tsc.iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname"),
            "{name}: spread over nodes"
        );
        for t in &tsc {
            let sel = t.label_selector.as_ref().expect("spread labelSelector");
            assert!(
                selector_matches(sel, &pod_labels(&d)),
                "{name}: spread constraint does not select its pods"
            );
        }
        assert_eq!(
            d.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "{name}: 2 replicas"
        );
    }
}

#[test]
fn rw_proxy_drains_before_it_is_killed() {
    let m = Manifests::load();
    let d: Deployment = m.get(PROXY);
    let c = only_container(&d);
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds)
        .expect("rw-proxy preStop sleep");
    assert!(
        pre_stop >= 3,
        "preStop {pre_stop}s: endpoint removal takes a few seconds"
    );
    // As rw-proxy reads it: its default applies when the key is absent.
    let grace_dur = parsed_proxy_config(&m).shutdown_grace;
    let grace = i64::try_from(grace_dur.as_secs() + u64::from(grace_dur.subsec_nanos() > 0))
        .expect("grace");
    let kill_after = pod_spec(&d)
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        kill_after >= pre_stop + grace + 5,
        "terminationGracePeriodSeconds {kill_after} < preStop {pre_stop} + shutdown_grace {grace} + 5s margin"
    );
    let rollout = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    assert_eq!(
        rollout.and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(0)),
        "new proxy ready before an old one drains"
    );
}

#[test]
fn prometheus_can_scrape_both_services() {
    let m = Manifests::load();
    for (name, port_name) in [(PROXY, "metrics"), (ELECTION, "http")] {
        let d: Deployment = m.get(name);
        let c = only_container(&d);
        let ann = pod_annotations(&d);
        assert_eq!(
            ann.get("prometheus.io/scrape").map(String::as_str),
            Some("true"),
            "{name}"
        );
        assert_eq!(
            ann.get("prometheus.io/path").map(String::as_str),
            Some("/metrics"),
            "{name}"
        );
        let port = named_port(c, port_name).expect("metrics port").to_string();
        assert_eq!(
            ann.get("prometheus.io/port"),
            Some(&port),
            "{name}: prometheus.io/port"
        );
    }

    let sm: ServiceMonitor = m.get_optional(ELECTION);
    let svc: Service = m.get(ELECTION);
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    assert!(
        selector_matches(&sm.spec.selector, &svc_labels),
        "ServiceMonitor does not select the Service"
    );
    for ep in &sm.spec.endpoints {
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some(ep.port.as_str())),
            "ServiceMonitor port {}",
            ep.port
        );
        assert_eq!(ep.path, "/metrics");
    }

    let pm: PodMonitor = m.get_optional(PROXY);
    let proxy: Deployment = m.get(PROXY);
    assert!(
        selector_matches(&pm.spec.selector, &pod_labels(&proxy)),
        "PodMonitor does not select rw-proxy pods"
    );
    for ep in &pm.spec.pod_metrics_endpoints {
        assert!(
            named_port(only_container(&proxy), &ep.port).is_some(),
            "PodMonitor port {}",
            ep.port
        );
        assert_eq!(ep.path, "/metrics");
    }
}

#[test]
fn dockerfile_builds_and_ships_the_binaries_the_deployments_run() {
    let m = Manifests::load();
    let root = repo_root();
    let text = read(&root.join("Dockerfile"));
    let all = dockerfile_instructions(&text);
    assert!(
        all.iter()
            .any(|i| i.contains("cargo build --release --locked -p rw-proxy -p writer-election")),
        "Dockerfile: cargo build --release --locked -p rw-proxy -p writer-election"
    );
    assert!(
        all.iter()
            .any(|i| i.starts_with("RUN") && i.contains("apt-get install") && i.contains("cmake")),
        "cmake for libz-ng-sys"
    );
    assert!(
        all.iter().filter(|i| i.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );

    let last_from = all
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let shipped: BTreeSet<String> = all[last_from..]
        .iter()
        .filter(|i| i.starts_with("COPY --from="))
        .flat_map(|i| {
            let words: Vec<&str> = i.split_whitespace().collect();
            let dest = words
                .last()
                .copied()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned();
            words[2..words.len() - 1]
                .iter()
                .map(|src| format!("{dest}/{}", src.rsplit('/').next().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (name, manifest) in [
        ("rw-proxy", "proxy/Cargo.toml"),
        ("writer-election", "writer-election/Cargo.toml"),
    ] {
        assert!(
            shipped.contains(&format!("/usr/local/bin/{name}")),
            "the image lacks /usr/local/bin/{name}: {shipped:?}"
        );
        assert!(
            read(&root.join(manifest)).contains(&format!("name = \"{name}\"")),
            "{manifest} declares no {name}"
        );
    }
    for d in m.all_of::<Deployment>() {
        for c in &pod_spec(&d).containers {
            let cmd = c
                .command
                .as_ref()
                .and_then(|c| c.first())
                .expect("explicit command");
            assert!(
                shipped.contains(cmd),
                "{}: {cmd} is not in the image",
                c.name
            );
            assert!(
                cmd.ends_with(d.metadata.name.as_deref().unwrap_or_default()),
                "{}: runs {cmd}",
                c.name
            );
        }
    }
}

#[test]
fn dockerignore_keeps_every_workspace_member() {
    let root = repo_root();
    let cargo = read(&root.join("Cargo.toml"));
    let members_line = cargo
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<String> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(members.len() >= 3, "members parsed: {members:?}");
    let ignore = read(&root.join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        patterns.iter().any(|p| dockerignore_excludes(p, "target")),
        "target/ stays out of the context"
    );
    assert!(
        patterns.iter().any(|p| dockerignore_excludes(p, ".git")),
        ".git/ stays out of the context"
    );
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for mem in &members {
        needed.push(format!("{mem}/Cargo.toml"));
        needed.push(format!("{mem}/src"));
    }
    for path in &needed {
        for p in &patterns {
            assert!(
                !dockerignore_excludes(p, path),
                ".dockerignore pattern {p:?} drops {path}"
            );
        }
    }
}
