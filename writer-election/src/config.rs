//! `election.yaml`: every key of the election config, parsed strictly.
//!
//! Unknown keys are rejected and every error names the key path (`probe.timeout`,
//! `discovery.static.nodes[1].address`) and the reason, like `nginx -t`. Parsing checks the
//! shape (exactly one discovery mode and one state store are enums); [`ElectionConfig::validate`]
//! checks what the shape cannot say (a state store that fits the discovery mode, HA timings that
//! keep a leader from outliving its lease).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_common::one_key;
pub use config_common::ConfigError;
use serde::{Deserialize, Deserializer};

use crate::decision::{CandidateOrder, ElectionPolicy, NamePattern};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionConfig {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    #[serde(with = "one_key")]
    pub discovery: Discovery,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub election: ElectionSection,
    #[serde(with = "one_key")]
    pub state: StateConfig,
    #[serde(default)]
    pub ha: HaConfig,
    #[serde(default)]
    pub promotion: PromotionConfig,
    #[serde(default)]
    pub fencing: FencingConfig,
    #[serde(default)]
    pub switchover: SwitchoverConfig,
    #[serde(default)]
    pub label_pods: LabelPodsConfig,
}

/// The discovery mode: `discovery` is a map with exactly one of these keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    Static(StaticDiscovery),
    Kubernetes(KubernetesDiscovery),
    Dns(DnsDiscovery),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDiscovery {
    pub nodes: Vec<StaticNode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    pub name: String,
    /// `host:port`
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Empty: the namespace of the service's own pod (service-account namespace file), else the
    /// client's default namespace.
    #[serde(default)]
    pub namespace: String,
    #[serde(default = "defaults::label_selector")]
    pub label_selector: String,
    /// A container port name (`http`) or number (`8080`).
    #[serde(default = "defaults::port_ref")]
    pub port: PortRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Num(n)) => u16::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map(PortRef::Number)
                .ok_or_else(|| serde::de::Error::custom(format!("port {n} is not in 1..=65535"))),
            Ok(Raw::Str(s)) => {
                if let Ok(n) = s.parse::<u16>() {
                    if n > 0 {
                        return Ok(PortRef::Number(n));
                    }
                }
                if s.is_empty() {
                    Err(serde::de::Error::custom("port name is empty"))
                } else {
                    Ok(PortRef::Name(s))
                }
            }
            Err(_) => Err(serde::de::Error::custom(
                "expected a container port name (http) or number (8080)",
            )),
        }
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Name(n) => f.write_str(n),
            PortRef::Number(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// A headless Service name; its A records are the nodes.
    pub name: String,
    pub port: u16,
    #[serde(default = "defaults::dns_interval", with = "humantime_serde")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The path in effect: `path` from the file, else the promotion preset's readiness path,
    /// else `/health/ready` (set by [`ElectionConfig::from_yaml_str`]).
    #[serde(skip, default = "defaults::probe_path")]
    pub path: String,
    /// `path` as written in the file, if it was.
    #[serde(rename = "path", default)]
    pub path_given: Option<String>,
    #[serde(default = "defaults::probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "defaults::probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "defaults::success_threshold")]
    pub success_threshold: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: defaults::probe_path(),
            path_given: None,
            interval: defaults::probe_interval(),
            timeout: defaults::probe_timeout(),
            failure_threshold: defaults::failure_threshold(),
            success_threshold: defaults::success_threshold(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionSection {
    #[serde(default)]
    pub candidate_order: CandidateOrder,
    pub progress: Option<ProgressConfig>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "defaults::min_ready_nodes")]
    pub min_ready_nodes: usize,
}

impl Default for ElectionSection {
    fn default() -> Self {
        ElectionSection {
            candidate_order: CandidateOrder::default(),
            progress: None,
            exclude: Vec::new(),
            min_ready_nodes: defaults::min_ready_nodes(),
        }
    }
}

/// Where a node's replication offset is read: by `most_caught_up` for the candidates, and by
/// the leader's progress rounds for every ready node (`replication` in the topology).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressConfig {
    pub path: String,
    /// RFC 6901 pointer to the offset in the JSON answer; empty = the whole body is the number.
    #[serde(default)]
    pub json_pointer: String,
    /// Per request; default: `probe.timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Time between two progress rounds; default: `probe.interval`
    /// ([`ElectionConfig::progress_interval`]).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
}

/// Where the writer is recorded: `state` is a map with exactly one of these keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateConfig {
    /// A JSON file (static and dns discovery).
    File(PathBuf),
    /// A Kubernetes Lease (kubernetes discovery).
    Lease(LeaseStateConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseStateConfig {
    #[serde(default = "defaults::state_lease_name")]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "defaults::ha_lease_name")]
    pub lease_name: String,
    #[serde(default = "defaults::lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    #[serde(default = "defaults::renew_deadline", with = "humantime_serde")]
    pub renew_deadline: Duration,
    #[serde(default = "defaults::retry_period", with = "humantime_serde")]
    pub retry_period: Duration,
    /// This replica's name in the leader Lease. Empty: env `POD_NAME`, else `HOSTNAME`.
    #[serde(default)]
    pub identity: String,
    /// The URL other replicas reach this one at while it leads (they forward topology queries
    /// and drain acknowledgements to it). Empty: `http://<env POD_IP>:<port>`, else the listen
    /// address if it names one, else the address the host name resolves to (a pod's own IP).
    #[serde(default)]
    pub advertise_url: String,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            enabled: false,
            lease_name: defaults::ha_lease_name(),
            lease_duration: defaults::lease_duration(),
            renew_deadline: defaults::renew_deadline(),
            retry_period: defaults::retry_period(),
            identity: String::new(),
            advertise_url: String::new(),
        }
    }
}

/// `promotion`: a preset names the node library's calls; `start` / `finish` / `check` given
/// explicitly replace the preset's call of that name. After [`ElectionConfig::from_yaml_str`]
/// the three fields hold the calls in effect (preset merged with the explicit keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    #[serde(default)]
    pub preset: PromotionPreset,
    pub start: Option<PromotionStart>,
    pub finish: Option<PromotionFinish>,
    pub check: Option<PromotionCheck>,
}

impl PromotionConfig {
    pub fn is_configured(&self) -> bool {
        self.start.is_some() || self.finish.is_some()
    }

    /// Fills every call not given explicitly from the preset.
    fn apply_preset(&mut self) {
        let Some(calls) = self.preset.calls() else {
            return;
        };
        if self.start.is_none() {
            self.start = Some(PromotionStart {
                method: http::Method::POST,
                path: calls.start.to_string(),
                timeout: defaults::promotion_request_timeout(),
            });
        }
        if self.finish.is_none() {
            self.finish = calls.finish.map(|path| PromotionFinish {
                method: http::Method::POST,
                path: path.to_string(),
                until_body: "true".into(),
                interval: defaults::finish_interval(),
                timeout: defaults::finish_timeout(),
            });
        }
        if self.check.is_none() {
            self.check = Some(PromotionCheck {
                path: calls.check.to_string(),
                expect_body: "true".into(),
            });
        }
    }
}

/// The REST calls of one release line of the MicroStream / Eclipse DataGrid cluster node
/// library (its cluster controller), as read in the library's source. An unknown name is refused
/// with the list of these (serde's unknown-variant error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromotionPreset {
    /// `/microstream-cluster-controller`, activation in two steps (start, then finish until true).
    #[default]
    Microstream,
    /// `/microstream-cluster-controller`, activation in one call.
    MicrostreamLegacy,
    /// `/eclipse-datagrid-cluster-controller`, every path prefixed `eclipse-datagrid-`.
    EclipseDatagrid,
    /// `/eclipse-datagrid`, paths without the prefix (the controller after the library renamed
    /// its remaining MicroStream names).
    EclipseDatagridUnprefixed,
    /// No calls: the image needs no promotion, or every call is configured explicitly.
    None,
}

/// The paths a preset calls; `finish: None` = activation is a single `start` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetCalls {
    pub start: &'static str,
    pub finish: Option<&'static str>,
    pub check: &'static str,
    pub ready: &'static str,
}

impl PromotionPreset {
    pub fn calls(self) -> Option<PresetCalls> {
        match self {
            PromotionPreset::Microstream => Some(PresetCalls {
                start: "/microstream-cluster-controller/microstream-activate-distributor/start",
                finish: Some("/microstream-cluster-controller/microstream-activate-distributor/finish"),
                check: "/microstream-cluster-controller/microstream-distributor",
                ready: "/microstream-cluster-controller/microstream-health/ready",
            }),
            PromotionPreset::MicrostreamLegacy => Some(PresetCalls {
                start: "/microstream-cluster-controller/microstream-activate-distributor",
                finish: None,
                ..PromotionPreset::Microstream.calls()?
            }),
            PromotionPreset::EclipseDatagrid => Some(PresetCalls {
                start: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/start",
                finish: Some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/finish"),
                check: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-distributor",
                ready: "/eclipse-datagrid-cluster-controller/eclipse-datagrid-health/ready",
            }),
            PromotionPreset::EclipseDatagridUnprefixed => Some(PresetCalls {
                start: "/eclipse-datagrid/activate-distributor/start",
                finish: Some("/eclipse-datagrid/activate-distributor/finish"),
                check: "/eclipse-datagrid/distributor",
                ready: "/eclipse-datagrid/health/ready",
            }),
            PromotionPreset::None => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionStart {
    #[serde(default = "defaults::post", deserialize_with = "de_method")]
    pub method: http::Method,
    pub path: String,
    #[serde(
        default = "defaults::promotion_request_timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionFinish {
    #[serde(default = "defaults::post", deserialize_with = "de_method")]
    pub method: http::Method,
    pub path: String,
    /// Repeat the call until the (trimmed) body equals this; empty = any 2xx answer is done.
    #[serde(default)]
    pub until_body: String,
    #[serde(default = "defaults::finish_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// For the whole finish phase.
    #[serde(default = "defaults::finish_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionCheck {
    pub path: String,
    pub expect_body: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FencingConfig {
    #[serde(default)]
    pub delete_old_writer_pod: bool,
    /// How long to wait for a deleted old writer pod to be gone before giving up this attempt
    /// (the election is retried; no promotion happens meanwhile).
    #[serde(default = "defaults::fencing_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for FencingConfig {
    fn default() -> Self {
        FencingConfig {
            delete_old_writer_pod: false,
            timeout: defaults::fencing_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverConfig {
    #[serde(default)]
    pub token_file: String,
    #[serde(default)]
    pub token_env: String,
    /// How long a planned switchover waits for every proxy of the drain set to acknowledge that
    /// its writes to the old writer are done; then it is aborted (or forced: `"force": true`).
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for SwitchoverConfig {
    fn default() -> Self {
        SwitchoverConfig {
            token_file: String::new(),
            token_env: String::new(),
            drain_timeout: defaults::drain_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPodsConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "defaults::label_key")]
    pub key: String,
}

impl Default for LabelPodsConfig {
    fn default() -> Self {
        LabelPodsConfig {
            enabled: false,
            key: defaults::label_key(),
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::PortRef;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub fn label_selector() -> String {
        "microstream.one/cluster-component=storagenode".into()
    }
    pub fn port_ref() -> PortRef {
        PortRef::Name("http".into())
    }
    pub fn dns_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn probe_path() -> String {
        "/health/ready".into()
    }
    pub fn probe_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn probe_timeout() -> Duration {
        Duration::from_millis(500)
    }
    pub fn failure_threshold() -> u32 {
        3
    }
    pub fn success_threshold() -> u32 {
        1
    }
    pub fn min_ready_nodes() -> usize {
        1
    }
    pub fn state_lease_name() -> String {
        "storage-writer".into()
    }
    pub fn ha_lease_name() -> String {
        "writer-election-leader".into()
    }
    pub fn lease_duration() -> Duration {
        Duration::from_secs(15)
    }
    pub fn renew_deadline() -> Duration {
        Duration::from_secs(10)
    }
    pub fn retry_period() -> Duration {
        Duration::from_secs(2)
    }
    pub fn post() -> http::Method {
        http::Method::POST
    }
    pub fn promotion_request_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn finish_interval() -> Duration {
        Duration::from_millis(200)
    }
    pub fn finish_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn fencing_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn label_key() -> String {
        "microstream.one/role".into()
    }
}

fn de_method<'de, D: Deserializer<'de>>(d: D) -> Result<http::Method, D::Error> {
    let s = String::deserialize(d)?;
    let upper = s.to_ascii_uppercase();
    http::Method::from_bytes(upper.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an HTTP method")))
}

impl ElectionConfig {
    /// Parses and validates a config document.
    pub fn from_yaml_str(text: &str) -> Result<ElectionConfig, ConfigError> {
        let mut cfg: ElectionConfig = config_common::from_yaml(text)?;
        cfg.apply_defaults();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Defaults that depend on other keys: the promotion preset's calls, and the readiness path
    /// of the library the preset names (its pods serve no `/health/ready`).
    fn apply_defaults(&mut self) {
        self.promotion.apply_preset();
        self.probe.path = match (&self.probe.path_given, self.promotion.preset.calls()) {
            (Some(p), _) => p.clone(),
            (None, Some(calls)) => calls.ready.to_string(),
            (None, None) => defaults::probe_path(),
        };
    }

    pub fn load(path: &Path) -> Result<ElectionConfig, ConfigError> {
        Self::from_yaml_str(&ConfigError::read_file(path)?)
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn is_kubernetes(&self) -> bool {
        matches!(self.discovery(), Discovery::Kubernetes(_))
    }

    /// How often the leader reads every ready node's offset: `election.progress.interval`, else
    /// `probe.interval`; `None` without `election.progress` (no rounds, no `replication`).
    pub fn progress_interval(&self) -> Option<Duration> {
        let p = self.election.progress.as_ref()?;
        Some(p.interval.unwrap_or(self.probe.interval))
    }

    pub fn policy(&self) -> ElectionPolicy {
        ElectionPolicy {
            candidate_order: self.election.candidate_order,
            exclude: self
                .election
                .exclude
                .iter()
                .map(|p| NamePattern::new(p))
                .collect(),
            min_ready_nodes: self.election.min_ready_nodes,
        }
    }

    /// The switchover token source, if switchover is enabled.
    pub fn token_source(&self) -> Option<TokenSource> {
        if !self.switchover.token_file.is_empty() {
            Some(TokenSource::File(PathBuf::from(
                &self.switchover.token_file,
            )))
        } else if !self.switchover.token_env.is_empty() {
            Some(TokenSource::Env(self.switchover.token_env.clone()))
        } else {
            None
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.discovery() {
            Discovery::Static(s) => validate_static(s)?,
            Discovery::Kubernetes(k) => {
                if k.label_selector.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        "discovery.kubernetes.label_selector",
                        "must not be empty: it would select every pod in the namespace",
                    ));
                }
            }
            Discovery::Dns(dns) => {
                if dns.name.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        "discovery.dns.name",
                        "must not be empty",
                    ));
                }
                if dns.port == 0 {
                    return Err(ConfigError::invalid(
                        "discovery.dns.port",
                        "must be 1..=65535",
                    ));
                }
                if dns.interval.is_zero() {
                    return Err(ConfigError::invalid(
                        "discovery.dns.interval",
                        "must be greater than 0",
                    ));
                }
            }
        }

        let p = &self.probe;
        if !p.path.starts_with('/') {
            return Err(ConfigError::invalid("probe.path", "must start with '/'"));
        }
        if p.interval.is_zero() {
            return Err(ConfigError::invalid(
                "probe.interval",
                "must be greater than 0",
            ));
        }
        if p.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "probe.timeout",
                "must be greater than 0",
            ));
        }
        if p.failure_threshold == 0 {
            return Err(ConfigError::invalid(
                "probe.failure_threshold",
                "must be at least 1",
            ));
        }
        if p.success_threshold == 0 {
            return Err(ConfigError::invalid(
                "probe.success_threshold",
                "must be at least 1",
            ));
        }

        let e = &self.election;
        match (e.candidate_order, &e.progress) {
            (CandidateOrder::MostCaughtUp, None) => {
                return Err(ConfigError::invalid(
                    "election.progress",
                    "required when candidate_order is most_caught_up",
                ))
            }
            (_, Some(progress)) => {
                if !progress.path.starts_with('/') {
                    return Err(ConfigError::invalid(
                        "election.progress.path",
                        "must start with '/'",
                    ));
                }
                if !progress.json_pointer.is_empty() && !progress.json_pointer.starts_with('/') {
                    return Err(ConfigError::invalid(
                        "election.progress.json_pointer",
                        "must be empty or start with '/' (RFC 6901)",
                    ));
                }
                if progress.interval.is_some_and(|d| d.is_zero()) {
                    return Err(ConfigError::invalid(
                        "election.progress.interval",
                        "must be greater than 0",
                    ));
                }
                if progress.timeout.is_some_and(|d| d.is_zero()) {
                    return Err(ConfigError::invalid(
                        "election.progress.timeout",
                        "must be greater than 0",
                    ));
                }
            }
            _ => {}
        }
        for (i, x) in e.exclude.iter().enumerate() {
            if x.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("election.exclude[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if e.min_ready_nodes == 0 {
            return Err(ConfigError::invalid(
                "election.min_ready_nodes",
                "must be at least 1",
            ));
        }

        let kube = self.is_kubernetes();
        match &self.state {
            StateConfig::File(f) => {
                if kube {
                    return Err(ConfigError::invalid(
                        "state.file",
                        "kubernetes discovery records the writer in a Lease: use state.lease",
                    ));
                }
                if f.as_os_str().is_empty() {
                    return Err(ConfigError::invalid("state.file", "must not be empty"));
                }
            }
            StateConfig::Lease(l) => {
                if !kube {
                    return Err(ConfigError::invalid(
                        "state.lease",
                        "needs kubernetes discovery; static and dns modes use state.file",
                    ));
                }
                validate_k8s_name("state.lease.name", &l.name)?;
            }
        }

        let ha = &self.ha;
        if ha.enabled {
            if !kube {
                return Err(ConfigError::invalid(
                    "ha.enabled",
                    "needs kubernetes discovery (the replicas compete for a Lease)",
                ));
            }
            validate_k8s_name("ha.lease_name", &ha.lease_name)?;
            if ha.retry_period.is_zero() {
                return Err(ConfigError::invalid(
                    "ha.retry_period",
                    "must be greater than 0",
                ));
            }
            // The client-go rules: a leader gives up (renew_deadline) before its lease can
            // expire for the others (lease_duration), and retries often enough to renew in time.
            if ha.renew_deadline >= ha.lease_duration {
                return Err(ConfigError::invalid(
                    "ha.renew_deadline",
                    "must be shorter than ha.lease_duration",
                ));
            }
            if ha.renew_deadline.as_secs_f64() <= ha.retry_period.as_secs_f64() * 1.2 {
                return Err(ConfigError::invalid(
                    "ha.retry_period",
                    "must be shorter than ha.renew_deadline / 1.2",
                ));
            }
            if ha.lease_duration < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    "ha.lease_duration",
                    "must be at least 1s (the Lease stores whole seconds)",
                ));
            }
            let url = ha.advertise_url.trim();
            if !url.is_empty() {
                match url.parse::<http::Uri>() {
                    Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
                    _ => {
                        return Err(ConfigError::invalid(
                            "ha.advertise_url",
                            "must be http://host:port",
                        ))
                    }
                }
            }
            if let StateConfig::Lease(state) = &self.state {
                if state.name == ha.lease_name {
                    return Err(ConfigError::invalid(
                        "ha.lease_name",
                        "must differ from state.lease.name",
                    ));
                }
            }
        }

        let pr = &self.promotion;
        if let Some(s) = &pr.start {
            check_path("promotion.start.path", &s.path)?;
            if s.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    "promotion.start.timeout",
                    "must be greater than 0",
                ));
            }
        }
        if let Some(f) = &pr.finish {
            check_path("promotion.finish.path", &f.path)?;
            if f.interval.is_zero() {
                return Err(ConfigError::invalid(
                    "promotion.finish.interval",
                    "must be greater than 0",
                ));
            }
            if f.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    "promotion.finish.timeout",
                    "must be greater than 0",
                ));
            }
        }
        if let Some(c) = &pr.check {
            check_path("promotion.check.path", &c.path)?;
        }

        if self.fencing.delete_old_writer_pod && !kube {
            return Err(ConfigError::invalid(
                "fencing.delete_old_writer_pod",
                "needs kubernetes discovery",
            ));
        }
        if self.fencing.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "fencing.timeout",
                "must be greater than 0",
            ));
        }
        if !self.switchover.token_file.is_empty() && !self.switchover.token_env.is_empty() {
            return Err(ConfigError::invalid(
                "switchover",
                "set token_file or token_env, not both",
            ));
        }
        if self.switchover.drain_timeout.is_zero()
            || self.switchover.drain_timeout > MAX_DRAIN_TIMEOUT
        {
            return Err(ConfigError::invalid(
                "switchover.drain_timeout",
                "must be greater than 0 and at most 5m",
            ));
        }
        if self.label_pods.enabled {
            if !kube {
                return Err(ConfigError::invalid(
                    "label_pods.enabled",
                    "needs kubernetes discovery",
                ));
            }
            if self.label_pods.key.trim().is_empty() {
                return Err(ConfigError::invalid("label_pods.key", "must not be empty"));
            }
        }
        Ok(())
    }
}

/// Proxies hold their writes during the drain: longer than a few minutes is never what is meant.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
}

impl TokenSource {
    /// Read on every switchover request, so a rotated Secret takes effect without a restart.
    pub fn read(&self) -> Result<String, String> {
        let raw = match self {
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read switchover.token_file {}: {e}", p.display()))?,
            TokenSource::Env(name) => std::env::var(name)
                .map_err(|e| format!("cannot read switchover.token_env {name}: {e}"))?,
        };
        let token = raw.trim().to_string();
        if token.is_empty() {
            return Err(match self {
                TokenSource::File(p) => format!("switchover.token_file {} is empty", p.display()),
                TokenSource::Env(n) => format!("switchover.token_env {n} is empty"),
            });
        }
        Ok(token)
    }
}

fn validate_static(s: &StaticDiscovery) -> Result<(), ConfigError> {
    if s.nodes.is_empty() {
        return Err(ConfigError::invalid(
            "discovery.static.nodes",
            "must list at least one node",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, n) in s.nodes.iter().enumerate() {
        if n.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("discovery.static.nodes[{i}].name"),
                "must not be empty",
            ));
        }
        if !seen.insert(n.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("discovery.static.nodes[{i}].name"),
                format!("duplicate node name {:?}", n.name),
            ));
        }
        config_common::check_host_port(&n.address).map_err(|reason| {
            ConfigError::invalid(format!("discovery.static.nodes[{i}].address"), reason)
        })?;
    }
    Ok(())
}

fn check_path(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, "must start with '/'"))
    }
}

/// DNS-1123 subdomain, as Kubernetes requires for object names.
fn validate_k8s_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "{name:?} is not a valid Kubernetes object name (lowercase a-z, 0-9, '-', '.')"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIC: &str = r#"
listen: "127.0.0.1:8081"
discovery:
  static:
    nodes:
      - { name: node-0, address: "127.0.0.1:9001" }
      - { name: node-1, address: "127.0.0.1:9002" }
state:
  file: ./election-state.json
"#;

    fn err(text: &str) -> (String, String) {
        match ElectionConfig::from_yaml_str(text) {
            Ok(_) => panic!("accepted an invalid config:\n{text}"),
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn static_config_gets_the_spec_defaults() {
        let c = ElectionConfig::from_yaml_str(STATIC).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8081".parse().unwrap());
        // Promotion is on: the MicroStream node library, and its readiness path.
        assert_eq!(c.promotion.preset, PromotionPreset::Microstream);
        assert_eq!(
            c.probe.path,
            "/microstream-cluster-controller/microstream-health/ready"
        );
        assert_eq!(c.probe.interval, Duration::from_secs(1));
        assert_eq!(c.probe.timeout, Duration::from_millis(500));
        assert_eq!(c.probe.failure_threshold, 3);
        assert_eq!(c.probe.success_threshold, 1);
        assert_eq!(c.election.candidate_order, CandidateOrder::Name);
        assert_eq!(c.election.min_ready_nodes, 1);
        assert!(!c.ha.enabled);
        assert_eq!(c.ha.lease_duration, Duration::from_secs(15));
        assert_eq!(c.ha.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.ha.retry_period, Duration::from_secs(2));
        assert_eq!(c.label_pods.key, "microstream.one/role");
        assert!(c.token_source().is_none());
        assert!(matches!(c.discovery(), Discovery::Static(s) if s.nodes.len() == 2));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let (key, reason) = err(&STATIC.replace("listen:", "listn:"));
        assert!(reason.contains("unknown field `listn`"), "{reason}");
        assert_eq!(key, "listn");
        let (key, reason) = err(&format!("{STATIC}probe: {{ intervall: 1s }}\n"));
        assert_eq!(key, "probe.intervall");
        assert!(reason.contains("unknown field"), "{reason}");
        let (key, _) = err(&STATIC.replace(
            "{ name: node-1, address: \"127.0.0.1:9002\" }",
            "{ name: node-1, adress: \"127.0.0.1:9002\" }",
        ));
        assert_eq!(key, "discovery.static.nodes[1].adress");
    }

    #[test]
    fn bad_values_name_the_key_and_reason() {
        let (key, reason) = err(&format!("{STATIC}probe: {{ timeout: soon }}\n"));
        assert_eq!(key, "probe.timeout");
        assert!(
            reason.starts_with("invalid value: string \"soon\", expected a duration"),
            "{reason}"
        );
        let (key, _) = err(&format!("{STATIC}probe: {{ failure_threshold: 0 }}\n"));
        assert_eq!(key, "probe.failure_threshold");
        let (key, _) = err(&STATIC.replace("127.0.0.1:9002", "127.0.0.1"));
        assert_eq!(key, "discovery.static.nodes[1].address");
        let (key, reason) = err(&STATIC.replace("node-1", "node-0"));
        assert_eq!(key, "discovery.static.nodes[1].name");
        assert!(reason.contains("duplicate"));
        let (key, _) = err(&format!(
            "{STATIC}election: {{ candidate_order: random }}\n"
        ));
        assert_eq!(key, "election.candidate_order");
        let (key, _) = err(&format!(
            "{STATIC}election: {{ candidate_order: most_caught_up }}\n"
        ));
        assert_eq!(key, "election.progress");
        let (key, _) = err(&STATIC.replace("listen: \"127.0.0.1:8081\"", "listen: nowhere"));
        assert_eq!(key, "listen");
    }

    #[test]
    fn progress_interval_defaults_to_the_probe_interval_and_must_be_positive() {
        let c = ElectionConfig::from_yaml_str(STATIC).unwrap();
        assert_eq!(
            c.progress_interval(),
            None,
            "no rounds without election.progress"
        );
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}probe: {{ interval: 250ms }}\nelection: {{ progress: {{ path: /offset }} }}\n"
        ))
        .unwrap();
        assert_eq!(c.progress_interval(), Some(Duration::from_millis(250)));
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}election: {{ progress: {{ path: /offset, interval: 2s }} }}\n"
        ))
        .unwrap();
        assert_eq!(c.progress_interval(), Some(Duration::from_secs(2)));
        let (key, reason) = err(&format!(
            "{STATIC}election: {{ progress: {{ path: /offset, interval: 0s }} }}\n"
        ));
        assert_eq!(key, "election.progress.interval");
        assert!(reason.contains("greater than 0"), "{reason}");
        let (key, reason) = err(&format!(
            "{STATIC}election: {{ progress: {{ path: /offset, interval: often }} }}\n"
        ));
        assert_eq!(key, "election.progress.interval");
        assert!(reason.contains("expected a duration"), "{reason}");
        let (key, _) = err(&format!(
            "{STATIC}election: {{ progress: {{ path: /offset, timeout: 0s }} }}\n"
        ));
        assert_eq!(key, "election.progress.timeout");
    }

    #[test]
    fn node_addresses_follow_the_one_host_port_rule() {
        for ok in ["[::1]:80", "node-0.storage.ns.svc:9001"] {
            let c = ElectionConfig::from_yaml_str(&STATIC.replace("127.0.0.1:9002", ok));
            assert!(c.is_ok(), "{ok}: {:?}", c.err());
        }
        for bad in ["[zz]:80", "host:0", "host:", ":80", "a b:80", "::1:80"] {
            let (key, reason) = err(&STATIC.replace("127.0.0.1:9002", bad));
            assert_eq!(key, "discovery.static.nodes[1].address", "{bad}");
            assert!(reason.contains("is not host:port"), "{bad}: {reason}");
        }
    }

    #[test]
    fn discovery_and_state_are_exactly_one_of() {
        let (key, reason) = err("discovery: {}\nstate: { file: x.json }\n");
        assert_eq!(key, "discovery");
        assert!(reason.contains("single key"), "{reason}");
        let (key, _) =
            err(&STATIC.replace("discovery:\n", "discovery:\n  dns: { name: n, port: 1 }\n"));
        assert_eq!(key, "discovery");
        let (key, reason) = err("discovery: { statik: {} }\nstate: { file: x.json }\n");
        assert_eq!(key, "discovery.statik");
        assert!(
            reason.contains("expected one of `static`, `kubernetes`, `dns`"),
            "{reason}"
        );
        let (key, _) =
            err(&STATIC.replace("file: ./election-state.json", "{ file: a.json, lease: {} }"));
        assert_eq!(key, "state");
        let (key, _) = err(&STATIC.replace("file: ./election-state.json", "{}"));
        assert_eq!(key, "state");
        let (key, _) = err(&STATIC.replace("file: ./election-state.json", "lease: { nme: x }"));
        assert_eq!(key, "state.lease.nme");
        let c = ElectionConfig::from_yaml_str(
            "discovery: { dns: { name: nodes.ns.svc, port: 8080, interval: 250ms } }\nstate: { file: s.json }\n",
        )
        .unwrap();
        assert!(
            matches!(c.discovery(), Discovery::Dns(d) if d.interval == Duration::from_millis(250))
        );
        assert!(matches!(&c.state, StateConfig::File(p) if p == Path::new("s.json")));
    }

    #[test]
    fn no_key_or_two_keys_is_refused_with_the_keys_there_are() {
        let state = |v: &str| STATIC.replace("file: ./election-state.json", v);
        let (key, reason) = err(&state("{}"));
        assert_eq!(key, "state");
        assert!(
            reason.starts_with("expected a single key, one of `file`, `lease`, found none"),
            "{reason}"
        );
        let (key, reason) = err(&state("{ file: a.json, lease: {} }"));
        assert_eq!(key, "state");
        assert!(
            reason.starts_with(
                "expected a single key, one of `file`, `lease`, found `lease` as well"
            ),
            "{reason}"
        );
        let (key, reason) =
            err("discovery: { kubernetes: {} }\nstate: { lease: {}, file: a.json }\n");
        assert_eq!(key, "state");
        assert!(reason.contains("found `file` as well"), "{reason}");
        let (key, reason) = err(&state("./election-state.json"));
        assert_eq!(key, "state");
        assert!(
            reason.contains("expected a map with a single key, one of `file`, `lease`"),
            "{reason}"
        );
        let (key, reason) = err("discovery: {}\nstate: { file: x.json }\n");
        assert_eq!(key, "discovery");
        assert!(
            reason.contains("one of `static`, `kubernetes`, `dns`, found none"),
            "{reason}"
        );
        let (key, reason) = err(&STATIC.replace("state:\n  file: ./election-state.json\n", ""));
        assert_eq!(key, "");
        assert!(reason.contains("missing field `state`"), "{reason}");
    }

    #[test]
    fn discovery_and_state_must_fit_together() {
        let (key, _) = err("discovery: { kubernetes: {} }\nstate: { file: x.json }\n");
        assert_eq!(key, "state.file");
        let (key, _) = err(&STATIC.replace("file: ./election-state.json", "lease: { name: w }"));
        assert_eq!(key, "state.lease");
        let (key, _) = err(&format!("{STATIC}ha: {{ enabled: true }}\n"));
        assert_eq!(key, "ha.enabled");
        let (key, _) = err(&format!("{STATIC}label_pods: {{ enabled: true }}\n"));
        assert_eq!(key, "label_pods.enabled");
        let (key, _) = err(&format!(
            "{STATIC}fencing: {{ delete_old_writer_pod: true }}\n"
        ));
        assert_eq!(key, "fencing.delete_old_writer_pod");
        let (key, _) = err(&format!(
            "{STATIC}switchover: {{ token_file: /a, token_env: B }}\n"
        ));
        assert_eq!(key, "switchover");
    }

    #[test]
    fn drain_timeout_defaults_to_5s_and_is_bounded() {
        let c = ElectionConfig::from_yaml_str(STATIC).unwrap();
        assert_eq!(c.switchover.drain_timeout, Duration::from_secs(5));
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}switchover: {{ drain_timeout: 750ms }}\n"
        ))
        .unwrap();
        assert_eq!(c.switchover.drain_timeout, Duration::from_millis(750));
        for bad in ["0s", "10m", "soon"] {
            let (key, _) = err(&format!("{STATIC}switchover: {{ drain_timeout: {bad} }}\n"));
            assert_eq!(key, "switchover.drain_timeout", "{bad}");
        }
    }

    #[test]
    fn kubernetes_config_with_ha() {
        let c = ElectionConfig::from_yaml_str(
            r#"
discovery:
  kubernetes: { port: 8080 }
state: { lease: {} }
ha: { enabled: true }
label_pods: { enabled: true }
fencing: { delete_old_writer_pod: true }
switchover: { token_env: SWITCHOVER_TOKEN }
"#,
        )
        .unwrap();
        match c.discovery() {
            Discovery::Kubernetes(k) => {
                assert_eq!(k.port, PortRef::Number(8080));
                assert_eq!(
                    k.label_selector,
                    "microstream.one/cluster-component=storagenode"
                );
                assert_eq!(k.namespace, "");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&c.state, StateConfig::Lease(l) if l.name == "storage-writer"));
        assert_eq!(
            c.token_source(),
            Some(TokenSource::Env("SWITCHOVER_TOKEN".into()))
        );

        let (key, _) = err(
            "discovery: { kubernetes: {} }\nstate: { lease: {} }\nha: { enabled: true, renew_deadline: 20s }\n",
        );
        assert_eq!(key, "ha.renew_deadline");
        let (key, _) = err(
            "discovery: { kubernetes: {} }\nstate: { lease: {} }\nha: { enabled: true, advertise_url: \"10.0.0.1:8080\" }\n",
        );
        assert_eq!(key, "ha.advertise_url");
        let c = ElectionConfig::from_yaml_str(
            "discovery: { kubernetes: {} }\nstate: { lease: {} }\nha: { enabled: true, advertise_url: \"http://10.0.0.1:8080\" }\n",
        )
        .unwrap();
        assert_eq!(c.ha.advertise_url, "http://10.0.0.1:8080");
        let (key, _) = err(
            "discovery: { kubernetes: {} }\nstate: { lease: {} }\nha: { enabled: true, retry_period: 9s }\n",
        );
        assert_eq!(key, "ha.retry_period");
        let (key, _) = err("discovery: { kubernetes: {} }\nstate: { lease: { name: Bad_Name } }\n");
        assert_eq!(key, "state.lease.name");
        let (key, _) = err("discovery: { kubernetes: { port: 70000 } }\nstate: { lease: {} }\n");
        assert_eq!(key, "discovery.kubernetes.port");
    }

    #[test]
    fn promotion_keys() {
        let c = ElectionConfig::from_yaml_str(&format!(
            r#"{STATIC}promotion:
  start:  {{ method: post, path: /eclipse-datagrid/activate-distributor/start }}
  finish: {{ path: /eclipse-datagrid/activate-distributor/finish, until_body: "true", interval: 200ms, timeout: 30s }}
  check:  {{ path: /eclipse-datagrid/distributor, expect_body: "true" }}
"#
        ))
        .unwrap();
        let start = c.promotion.start.as_ref().unwrap();
        assert_eq!(start.method, http::Method::POST);
        let finish = c.promotion.finish.as_ref().unwrap();
        assert_eq!(finish.until_body, "true");
        assert_eq!(finish.interval, Duration::from_millis(200));
        let (key, _) = err(&format!(
            "{STATIC}promotion: {{ start: {{ path: nope }} }}\n"
        ));
        assert_eq!(key, "promotion.start.path");
    }

    fn paths(c: &ElectionConfig) -> (Option<String>, Option<String>, Option<String>, String) {
        let p = &c.promotion;
        (
            p.start.as_ref().map(|x| x.path.clone()),
            p.finish.as_ref().map(|x| x.path.clone()),
            p.check.as_ref().map(|x| x.path.clone()),
            c.probe.path.clone(),
        )
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn each_preset_makes_its_library_calls_and_probes_its_readiness_path() {
        let cases = [
            (
                "microstream",
                PromotionPreset::Microstream,
                (
                    some("/microstream-cluster-controller/microstream-activate-distributor/start"),
                    some("/microstream-cluster-controller/microstream-activate-distributor/finish"),
                    some("/microstream-cluster-controller/microstream-distributor"),
                    "/microstream-cluster-controller/microstream-health/ready".to_string(),
                ),
            ),
            (
                "microstream-legacy",
                PromotionPreset::MicrostreamLegacy,
                (
                    some("/microstream-cluster-controller/microstream-activate-distributor"),
                    None,
                    some("/microstream-cluster-controller/microstream-distributor"),
                    "/microstream-cluster-controller/microstream-health/ready".to_string(),
                ),
            ),
            (
                "eclipse-datagrid",
                PromotionPreset::EclipseDatagrid,
                (
                    some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/start"),
                    some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/finish"),
                    some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-distributor"),
                    "/eclipse-datagrid-cluster-controller/eclipse-datagrid-health/ready".to_string(),
                ),
            ),
            (
                "eclipse-datagrid-unprefixed",
                PromotionPreset::EclipseDatagridUnprefixed,
                (
                    some("/eclipse-datagrid/activate-distributor/start"),
                    some("/eclipse-datagrid/activate-distributor/finish"),
                    some("/eclipse-datagrid/distributor"),
                    "/eclipse-datagrid/health/ready".to_string(),
                ),
            ),
            (
                "none",
                PromotionPreset::None,
                (None, None, None, "/health/ready".to_string()),
            ),
        ];
        for (name, preset, want) in cases {
            let c = ElectionConfig::from_yaml_str(&format!(
                "{STATIC}promotion: {{ preset: {name} }}\n"
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.promotion.preset, preset, "{name}");
            assert_eq!(paths(&c), want, "{name}");
            assert_eq!(c.promotion.is_configured(), name != "none", "{name}");
            if let Some(start) = &c.promotion.start {
                assert_eq!(start.method, http::Method::POST);
            }
            if let Some(f) = &c.promotion.finish {
                assert_eq!((f.method.as_str(), f.until_body.as_str()), ("POST", "true"));
            }
            if let Some(check) = &c.promotion.check {
                assert_eq!(check.expect_body, "true");
            }
        }
        // `promotion` given without `preset`: still the default preset.
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}promotion: {{ finish: {{ path: /f, timeout: 3s }} }}\n"
        ))
        .unwrap();
        assert_eq!(c.promotion.preset, PromotionPreset::Microstream);
    }

    #[test]
    fn explicit_keys_replace_the_presets_call_of_that_name_only() {
        let c = ElectionConfig::from_yaml_str(&format!(
            r#"{STATIC}probe: {{ path: /custom/ready }}
promotion:
  preset: eclipse-datagrid
  finish: {{ path: /custom/finish, until_body: done, interval: 1s, timeout: 9s }}
"#
        ))
        .unwrap();
        assert_eq!(
            paths(&c),
            (
                some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/start"),
                some("/custom/finish"),
                some("/eclipse-datagrid-cluster-controller/eclipse-datagrid-distributor"),
                "/custom/ready".to_string(),
            )
        );
        let f = c.promotion.finish.as_ref().unwrap();
        assert_eq!(f.until_body, "done");
        assert_eq!(f.timeout, Duration::from_secs(9));
        // A preset without a finish call gets one when it is given.
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}promotion: {{ preset: microstream-legacy, finish: {{ path: /f }} }}\n"
        ))
        .unwrap();
        assert_eq!(paths(&c).1, some("/f"));
        // `none` with explicit keys: exactly those calls, and the plain readiness path.
        let c = ElectionConfig::from_yaml_str(&format!(
            "{STATIC}promotion: {{ preset: none, start: {{ path: /promote }} }}\n"
        ))
        .unwrap();
        assert_eq!(
            paths(&c),
            (some("/promote"), None, None, "/health/ready".to_string())
        );
        // An explicit key is still validated.
        let (key, _) = err(&format!(
            "{STATIC}promotion: {{ preset: microstream, check: {{ path: nope, expect_body: \"true\" }} }}\n"
        ));
        assert_eq!(key, "promotion.check.path");
    }

    #[test]
    fn an_unknown_preset_names_the_key_and_the_allowed_values() {
        let (key, reason) = err(&format!("{STATIC}promotion: {{ preset: microstreem }}\n"));
        assert_eq!(key, "promotion.preset");
        for allowed in [
            "microstream",
            "microstream-legacy",
            "eclipse-datagrid",
            "eclipse-datagrid-unprefixed",
            "none",
        ] {
            assert!(reason.contains(allowed), "{reason}");
        }
        assert!(
            reason.starts_with("unknown variant `microstreem`, expected one of `microstream`"),
            "{reason}"
        );
        // The names are exact: no other spelling or case.
        for near in ["Microstream", "eclipse_datagrid", "eclipse datagrid"] {
            let (key, _) = err(&format!("{STATIC}promotion: {{ preset: {near} }}\n"));
            assert_eq!(key, "promotion.preset", "{near}");
        }
        let (key, _) = err(&format!("{STATIC}promotion: {{ preset: 3 }}\n"));
        assert_eq!(key, "promotion.preset");
        let (key, _) = err(&format!("{STATIC}probe: {{ path: \"\" }}\n"));
        assert_eq!(key, "probe.path");
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("config");
        for name in ["election.yaml", "local-election.yaml"] {
            let path = root.join(name);
            if let Err(e) = ElectionConfig::load(&path) {
                panic!("{}: {e}", path.display());
            }
        }
        let k = ElectionConfig::load(&root.join("election.yaml")).unwrap();
        assert!(k.is_kubernetes());
        assert_eq!(
            k.probe.path,
            "/microstream-cluster-controller/microstream-health/ready"
        );
        assert_eq!(k.promotion.preset, PromotionPreset::Microstream);
        assert!(k.promotion.is_configured());
        let l = ElectionConfig::load(&root.join("local-election.yaml")).unwrap();
        assert_eq!(l.promotion.preset, PromotionPreset::Microstream);
        assert_eq!(
            l.probe.path,
            "/microstream-cluster-controller/microstream-health/ready"
        );
        assert_eq!(l.listen, "127.0.0.1:8081".parse().unwrap());
        assert!(matches!(l.discovery(), Discovery::Static(s) if s.nodes.len() == 3));
    }
}
