//! The proxy's YAML configuration (the reference table in README.md), parsed strictly.
//!
//! Parsing is two steps: serde into `Raw*` structs (unknown keys and malformed values are
//! rejected there, `config_common::from_yaml` tells us which key), then [`validate`] turns the raw
//! tree into [`ProxyConfig`] with defaults filled in and cross-field rules checked. Every error
//! names the key path (`routing.methods.GETT`, `timeouts.connect`) so `rw-proxy --check` reads
//! like `nginx -t`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use config_common::check_host_port;
pub use config_common::ConfigError;
use http::header::HeaderName;
use http::Method;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9901";
pub const DEFAULT_ELECTION_URL: &str = "http://writer-election:8080";
pub const DEFAULT_CONSISTENCY_HEADER: &str = "X-Consistency";
/// `routing.read_your_writes` defaults (proxy/README.md, "Read-your-writes").
pub const DEFAULT_TOKEN_COOKIE: &str = "rwp_read_after";
pub const DEFAULT_TOKEN_HEADER: &str = "X-Read-After";
pub const DEFAULT_READ_YOUR_WRITES_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_UPSTREAM: Duration = Duration::from_secs(60);
/// nginx's defaults for `client_header_timeout` and `client_body_timeout`.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HOLD_WRITES: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_RETRIES: u32 = 2;
pub const DEFAULT_MAX_HELD_WRITES: usize = 10_000;
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Upper bound of `limits.max_header_bytes`. The request path holds a request's whole head in
/// its connection's buffer until the head is complete (`downstream::read_header_end` grows it up
/// to the limit), so the limit is what one client connection can make a worker hold before a
/// single byte is forwarded; the bound keeps that per-connection memory small at any setting.
/// Its value is the one the head limit always had, so configs written for it stay valid.
pub const MAX_HEADER_BYTES_CEILING: u64 = 1_048_575;

/// Where a request is sent: the `routing` targets (README.md, configuration reference). A name
/// the file gets wrong is refused by serde with the names there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The elected writer only.
    Writer,
    /// The reader pool (plus the writer if `writer_serves_reads`).
    Readers,
    /// Every node: readers and the writer.
    Any,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Writer => "writer",
            Target::Readers => "readers",
            Target::Any => "any",
        }
    }
}

/// A storage node as written in `topology.static`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    pub name: String,
    /// `host:port`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticTopology {
    /// `None`: no writer (writes get 503 `no_writer`).
    pub writer: Option<StaticNode>,
    pub readers: Vec<StaticNode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyConfig {
    /// Live topology from writer-election; several URLs for HA replicas, tried in order.
    ElectionUrl(Vec<String>),
    Static(StaticTopology),
}

/// One `routing.rules` entry; it matches when every condition given matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path_prefix: Option<String>,
    /// Upper-cased; `None` = any method.
    pub methods: Option<Vec<String>>,
    pub to: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Method (upper-cased, as matched on the wire) -> target. Sorted by method.
    pub methods: Vec<(String, Target)>,
    pub default: Target,
    pub rules: Vec<Rule>,
    pub writer_serves_reads: bool,
    pub reads_fall_back_to_writer: bool,
    pub consistency_header: HeaderName,
    /// `None`: readers stay in the read pool however far behind they are.
    pub max_reader_lag: Option<MaxReaderLag>,
    /// `None`: absent, or `enabled: false`.
    pub read_your_writes: Option<ReadYourWritesConfig>,
}

/// `routing.max_reader_lag`: at least one of the two is set, each greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxReaderLag {
    /// Compared with a reader's published `lag_offsets`.
    pub offsets: Option<u64>,
    /// Compared with a reader's published `lag_ms`.
    pub duration: Option<Duration>,
}

/// Where the read-your-writes token travels (`routing.read_your_writes.token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCarrier {
    /// `Set-Cookie` on the write's answer, `Cookie` on the reads.
    #[default]
    Cookie,
    /// A response header on the write's answer, the same request header on the reads.
    Header,
}

/// `routing.read_your_writes` with `enabled: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadYourWritesConfig {
    pub token: TokenCarrier,
    /// The cookie's name, or the header's (as written in the file).
    pub name: String,
    /// The writer's answer header with the offset its write reached.
    pub offset_header: HeaderName,
    /// A token older than this no longer matters.
    pub window: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            methods: ["DELETE", "PATCH", "POST", "PUT"]
                .iter()
                .map(|m| (m.to_string(), Target::Writer))
                .collect(),
            default: Target::Readers,
            rules: Vec::new(),
            writer_serves_reads: false,
            reads_fall_back_to_writer: true,
            consistency_header: HeaderName::from_static("x-consistency"),
            max_reader_lag: None,
            read_your_writes: None,
        }
    }
}

/// `reader_balancing`: how a read picks among the ready readers (README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    #[default]
    RoundRobin,
    LeastConn,
    P2cEwma,
}

impl Balancing {
    pub fn as_str(self) -> &'static str {
        match self {
            Balancing::RoundRobin => "round_robin",
            Balancing::LeastConn => "least_conn",
            Balancing::P2cEwma => "p2c_ewma",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle_upstream: Duration,
    /// Longest a client may take to send a whole request header, from its first byte (nginx's
    /// `client_header_timeout`): a client that trickles header lines holds a socket, so it gets
    /// `408` and the connection closes.
    pub client_header: Duration,
    /// Longest a client may pause between two reads of its request body (nginx's
    /// `client_body_timeout`): `408`, nothing counted against the upstream.
    pub client_body: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// Longest a write waits for a writer (no writer known, the writer refused, a switchover).
    pub hold_writes: Duration,
    pub read_retries: u32,
    /// Writes held at once; one more gets 503 at once (bounds memory and file descriptors).
    pub max_held_writes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body: u64,
    pub max_header_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    /// Status >= 400 only, like the seed nginx's `map $status $loggable`.
    #[default]
    Errors,
    All,
    Off,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub topology: TopologyConfig,
    pub routing: RoutingConfig,
    pub reader_balancing: Balancing,
    pub timeouts: Timeouts,
    pub failover: Failover,
    pub limits: Limits,
    pub access_log: AccessLog,
    /// Worker threads of the proxy service (extension key; default: number of cores).
    pub threads: usize,
    /// How long SIGTERM waits for in-flight requests (extension key; default 10s).
    pub shutdown_grace: Duration,
}

impl ProxyConfig {
    /// Parses and validates a YAML document. An empty document means all defaults.
    pub fn from_yaml_str(yaml: &str) -> Result<ProxyConfig, ConfigError> {
        validate(config_common::from_yaml(yaml)?)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        Self::from_yaml_str(&ConfigError::read_file(path)?)
    }

    /// The settings that only take effect at start-up: a reload that changes them is applied
    /// for everything else and logs that these need a restart.
    pub fn restart_only_changes(&self, newer: &ProxyConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != newer.listen {
            changed.push("listen");
        }
        if self.admin_listen != newer.admin_listen {
            changed.push("admin_listen");
        }
        if self.threads != newer.threads {
            changed.push("threads");
        }
        if self.shutdown_grace != newer.shutdown_grace {
            changed.push("shutdown_grace");
        }
        changed
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// Step 1: serde into raw structs.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default, with = "config_common::one_key")]
    topology: Option<RawTopology>,
    routing: Option<RawRouting>,
    reader_balancing: Option<Balancing>,
    timeouts: Option<RawTimeouts>,
    failover: Option<RawFailover>,
    limits: Option<RawLimits>,
    access_log: Option<AccessLog>,
    threads: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

/// Exactly one of the two, as a map with that one key.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawTopology {
    ElectionUrl(OneOrMany),
    Static(RawStatic),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    writer: Option<NodeSpec>,
    #[serde(default)]
    readers: Vec<NodeSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    methods: Option<BTreeMap<String, Target>>,
    default: Option<Target>,
    rules: Option<Vec<RawRule>>,
    writer_serves_reads: Option<bool>,
    reads_fall_back_to_writer: Option<bool>,
    consistency_header: Option<String>,
    max_reader_lag: Option<RawMaxReaderLag>,
    read_your_writes: Option<RawReadYourWrites>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaxReaderLag {
    offsets: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReadYourWrites {
    enabled: Option<bool>,
    token: Option<TokenCarrier>,
    name: Option<String>,
    offset_header: Option<String>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    to: Target,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    write: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_upstream: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    client_header: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    client_body: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    #[serde(default, with = "humantime_serde")]
    hold_writes: Option<Duration>,
    read_retries: Option<u32>,
    max_held_writes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "config_common::size::deserialize_option")]
    max_body: Option<u64>,
    #[serde(default, deserialize_with = "config_common::size::deserialize_option")]
    max_header_bytes: Option<u64>,
}

/// One string or a list of strings (`topology.election_url`).
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL or a list of URLs")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A node in `topology.static`: `"host:port"` or `{ name: ..., address: "host:port" }`.
struct NodeSpec(StaticNode);

impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: Option<String>,
            address: String,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { name: ..., address: \"host:port\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NodeSpec, E> {
                Ok(NodeSpec(StaticNode {
                    name: s.to_string(),
                    address: s.to_string(),
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NodeSpec, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(NodeSpec(StaticNode {
                    name: full.name.unwrap_or_else(|| full.address.clone()),
                    address: full.address,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Step 2: defaults and cross-field rules.

fn validate(raw: Raw) -> Result<ProxyConfig, ConfigError> {
    let listen = socket_addr("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
    let admin_listen = socket_addr(
        "admin_listen",
        raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    if listen == admin_listen {
        return Err(ConfigError::invalid(
            "admin_listen",
            format!("must differ from listen ({listen})"),
        ));
    }

    let topology = validate_topology(raw.topology)?;
    let routing = validate_routing(raw.routing.unwrap_or_default())?;

    let reader_balancing = raw.reader_balancing.unwrap_or_default();

    let t = raw.timeouts.unwrap_or_default();
    let timeouts = Timeouts {
        connect: positive("timeouts.connect", t.connect, DEFAULT_CONNECT_TIMEOUT)?,
        read: positive("timeouts.read", t.read, DEFAULT_READ_TIMEOUT)?,
        write: positive("timeouts.write", t.write, DEFAULT_WRITE_TIMEOUT)?,
        idle_upstream: positive(
            "timeouts.idle_upstream",
            t.idle_upstream,
            DEFAULT_IDLE_UPSTREAM,
        )?,
        client_header: positive(
            "timeouts.client_header",
            t.client_header,
            DEFAULT_CLIENT_HEADER_TIMEOUT,
        )?,
        client_body: positive(
            "timeouts.client_body",
            t.client_body,
            DEFAULT_CLIENT_BODY_TIMEOUT,
        )?,
    };

    let f = raw.failover.unwrap_or_default();
    let failover = Failover {
        hold_writes: f.hold_writes.unwrap_or(DEFAULT_HOLD_WRITES),
        read_retries: f.read_retries.unwrap_or(DEFAULT_READ_RETRIES),
        max_held_writes: f.max_held_writes.unwrap_or(DEFAULT_MAX_HELD_WRITES),
    };
    if failover.read_retries > 16 {
        return Err(ConfigError::invalid(
            "failover.read_retries",
            format!("{} is more than the maximum of 16", failover.read_retries),
        ));
    }

    let l = raw.limits.unwrap_or_default();
    let limits = Limits {
        max_body: l.max_body.unwrap_or(DEFAULT_MAX_BODY),
        max_header_bytes: l.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
    };
    if limits.max_header_bytes < 1024 {
        return Err(ConfigError::invalid(
            "limits.max_header_bytes",
            format!(
                "{} bytes is below the minimum of 1KiB",
                limits.max_header_bytes
            ),
        ));
    }
    if limits.max_header_bytes > MAX_HEADER_BYTES_CEILING {
        return Err(ConfigError::invalid(
            "limits.max_header_bytes",
            format!(
                "{} bytes is above the maximum of {MAX_HEADER_BYTES_CEILING} (1MiB - 1; a head is held whole in memory until it is complete)",
                limits.max_header_bytes
            ),
        ));
    }

    let access_log = raw.access_log.unwrap_or_default();

    let threads = raw.threads.unwrap_or_else(default_threads);
    if threads == 0 || threads > 1024 {
        return Err(ConfigError::invalid(
            "threads",
            format!("{threads} is out of range (1 to 1024)"),
        ));
    }

    Ok(ProxyConfig {
        listen,
        admin_listen,
        topology,
        routing,
        reader_balancing,
        timeouts,
        failover,
        limits,
        access_log,
        threads,
        shutdown_grace: raw.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
    })
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("invalid listen address {s:?} (expected ip:port, e.g. \"0.0.0.0:8080\")"),
        )
    })
}

fn positive(key: &str, v: Option<Duration>, default: Duration) -> Result<Duration, ConfigError> {
    let d = v.unwrap_or(default);
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn validate_topology(raw: Option<RawTopology>) -> Result<TopologyConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(TopologyConfig::ElectionUrl(vec![
            DEFAULT_ELECTION_URL.to_string()
        ]));
    };
    match raw {
        RawTopology::ElectionUrl(urls) => {
            if urls.0.is_empty() {
                return Err(ConfigError::invalid(
                    "topology.election_url",
                    "the list is empty",
                ));
            }
            for (i, url) in urls.0.iter().enumerate() {
                let key = if urls.0.len() == 1 {
                    "topology.election_url".to_string()
                } else {
                    format!("topology.election_url[{i}]")
                };
                check_election_url(url).map_err(|reason| ConfigError::invalid(key, reason))?;
            }
            Ok(TopologyConfig::ElectionUrl(urls.0))
        }
        RawTopology::Static(st) => {
            let writer = st.writer.map(|n| n.0);
            let readers: Vec<StaticNode> = st.readers.into_iter().map(|n| n.0).collect();
            let mut names = HashSet::new();
            let mut addresses = HashSet::new();
            let all = writer
                .iter()
                .map(|w| ("topology.static.writer".to_string(), w))
                .chain(
                    readers
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (format!("topology.static.readers[{i}]"), r)),
                );
            for (key, node) in all {
                check_host_port(&node.address)
                    .map_err(|reason| ConfigError::invalid(key.clone(), reason))?;
                if node.name.trim().is_empty() {
                    return Err(ConfigError::invalid(key, "name must not be empty"));
                }
                if !names.insert(node.name.clone()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("node name {:?} is used twice", node.name),
                    ));
                }
                if !addresses.insert(node.address.clone()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("address {} is used twice", node.address),
                    ));
                }
            }
            Ok(TopologyConfig::Static(StaticTopology { writer, readers }))
        }
    }
}

fn check_election_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("{url:?}: https is not supported, use http")),
        _ => return Err(format!("invalid URL {url:?}: expected http://host:port")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("invalid URL {url:?}: no host"));
    }
    if uri.query().is_some() {
        return Err(format!("invalid URL {url:?}: must not have a query"));
    }
    Ok(())
}

/// Upper-cases a method from the file and checks it is a valid HTTP method token.
fn method_key(key: &str, m: &str) -> Result<String, ConfigError> {
    let upper = m.trim().to_ascii_uppercase();
    if upper.is_empty() || Method::from_bytes(upper.as_bytes()).is_err() {
        return Err(ConfigError::invalid(
            key,
            format!("{m:?} is not a valid HTTP method token"),
        ));
    }
    Ok(upper)
}

fn validate_routing(raw: RawRouting) -> Result<RoutingConfig, ConfigError> {
    let defaults = RoutingConfig::default();
    let methods = match raw.methods {
        None => defaults.methods,
        Some(map) => {
            let mut out: BTreeMap<String, (String, Target)> = BTreeMap::new();
            for (m, t) in map {
                let key = format!("routing.methods.{m}");
                let upper = method_key(&key, &m)?;
                if let Some((first, _)) = out.get(&upper) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "same method as {first:?} (methods are case-insensitive in this file)"
                        ),
                    ));
                }
                out.insert(upper, (m, t));
            }
            out.into_iter().map(|(m, (_, t))| (m, t)).collect()
        }
    };

    let mut rules = Vec::new();
    for (i, r) in raw.rules.unwrap_or_default().into_iter().enumerate() {
        let key = format!("routing.rules[{i}]");
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("{key}.path_prefix"),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        let methods = match r.methods {
            None => None,
            Some(ms) => {
                if ms.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.methods"),
                        "the list is empty (leave it out to match every method)",
                    ));
                }
                let mut out = Vec::with_capacity(ms.len());
                for (j, m) in ms.iter().enumerate() {
                    let upper = method_key(&format!("{key}.methods[{j}]"), m)?;
                    if !out.contains(&upper) {
                        out.push(upper);
                    }
                }
                Some(out)
            }
        };
        if r.path_prefix.is_none() && methods.is_none() {
            return Err(ConfigError::invalid(
                key,
                "a rule needs path_prefix, methods, or both",
            ));
        }
        rules.push(Rule {
            path_prefix: r.path_prefix,
            methods,
            to: r.to,
        });
    }

    let consistency_header = match raw.consistency_header {
        None => defaults.consistency_header,
        Some(h) => HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| {
            ConfigError::invalid(
                "routing.consistency_header",
                format!("{h:?} is not a valid header name"),
            )
        })?,
    };

    let max_reader_lag = raw
        .max_reader_lag
        .map(validate_max_reader_lag)
        .transpose()?;
    let read_your_writes = match raw.read_your_writes {
        None => None,
        Some(r) => validate_read_your_writes(r, &consistency_header)?,
    };

    Ok(RoutingConfig {
        methods,
        default: raw.default.unwrap_or(defaults.default),
        rules,
        writer_serves_reads: raw
            .writer_serves_reads
            .unwrap_or(defaults.writer_serves_reads),
        reads_fall_back_to_writer: raw
            .reads_fall_back_to_writer
            .unwrap_or(defaults.reads_fall_back_to_writer),
        consistency_header,
        max_reader_lag,
        read_your_writes,
    })
}

fn validate_max_reader_lag(raw: RawMaxReaderLag) -> Result<MaxReaderLag, ConfigError> {
    if raw.offsets.is_none() && raw.duration.is_none() {
        return Err(ConfigError::invalid(
            "routing.max_reader_lag",
            "set offsets, duration or both (leave the key out to keep every reader)",
        ));
    }
    if raw.offsets == Some(0) {
        return Err(ConfigError::invalid(
            "routing.max_reader_lag.offsets",
            "must be greater than zero",
        ));
    }
    if raw.duration.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::invalid(
            "routing.max_reader_lag.duration",
            "must be greater than zero",
        ));
    }
    Ok(MaxReaderLag {
        offsets: raw.offsets,
        duration: raw.duration,
    })
}

/// Fields whose meaning is fixed by HTTP or by this proxy: a token under one of these names
/// would change how a message is framed or routed.
const RESERVED_FIELDS: [&str; 18] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "cookie",
    "set-cookie",
    "x-writer-epoch",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "content-type",
];

/// A cookie name or a header name: an RFC 9110 token (the same rule for both).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_read_your_writes(
    raw: RawReadYourWrites,
    consistency_header: &HeaderName,
) -> Result<Option<ReadYourWritesConfig>, ConfigError> {
    let token = raw.token.unwrap_or_default();
    let name = raw.name.map(|n| n.trim().to_string()).unwrap_or_else(|| {
        match token {
            TokenCarrier::Cookie => DEFAULT_TOKEN_COOKIE,
            TokenCarrier::Header => DEFAULT_TOKEN_HEADER,
        }
        .to_string()
    });
    let what = match token {
        TokenCarrier::Cookie => "cookie",
        TokenCarrier::Header => "header",
    };
    if !is_token(&name) {
        return Err(ConfigError::invalid(
            "routing.read_your_writes.name",
            format!("{name:?} is not a valid {what} name"),
        ));
    }
    if token == TokenCarrier::Header
        && (RESERVED_FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
            || name.eq_ignore_ascii_case(consistency_header.as_str()))
    {
        return Err(ConfigError::invalid(
            "routing.read_your_writes.name",
            format!("{name:?} is a header with another meaning already"),
        ));
    }
    let offset_header = match raw.offset_header {
        None => HeaderName::from_static("x-replication-offset"),
        Some(h) => {
            let h = h.trim();
            if !is_token(h) {
                return Err(ConfigError::invalid(
                    "routing.read_your_writes.offset_header",
                    format!("{h:?} is not a valid header name"),
                ));
            }
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::invalid(
                    "routing.read_your_writes.offset_header",
                    format!("{h:?} is not a valid header name"),
                )
            })?
        }
    };
    let window = positive(
        "routing.read_your_writes.window",
        raw.window,
        DEFAULT_READ_YOUR_WRITES_WINDOW,
    )?;
    if !raw.enabled.unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(ReadYourWritesConfig {
        token,
        name,
        offset_header,
        window,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> ConfigError {
        match ProxyConfig::from_yaml_str(yaml) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = ProxyConfig::from_yaml_str("# nothing\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "0.0.0.0:9901".parse().unwrap());
        assert_eq!(
            c.topology,
            TopologyConfig::ElectionUrl(vec!["http://writer-election:8080".into()])
        );
        assert_eq!(c.routing, RoutingConfig::default());
        assert_eq!(c.reader_balancing, Balancing::RoundRobin);
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.read, Duration::from_secs(30));
        assert_eq!(c.timeouts.write, Duration::from_secs(30));
        assert_eq!(c.timeouts.idle_upstream, Duration::from_secs(60));
        assert_eq!(c.timeouts.client_header, Duration::from_secs(60));
        assert_eq!(c.timeouts.client_body, Duration::from_secs(60));
        assert_eq!(c.failover.hold_writes, Duration::from_secs(5));
        assert_eq!(c.failover.read_retries, 2);
        assert_eq!(c.failover.max_held_writes, 10_000);
        assert_eq!(c.limits.max_body, 64 << 20);
        assert_eq!(c.limits.max_header_bytes, 64 << 10);
        assert_eq!(c.access_log, AccessLog::Errors);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.threads, default_threads());
    }

    #[test]
    fn the_spec_example_parses() {
        let yaml = r#"
listen: "0.0.0.0:8080"
admin_listen: "0.0.0.0:9901"
topology:
  election_url: "http://writer-election:8080"
routing:
  methods:
    PUT: writer
    POST: writer
    PATCH: writer
    DELETE: writer
  default: readers
  rules:
    - { path_prefix: "/api/search", methods: [POST], to: readers }
  writer_serves_reads: false
  reads_fall_back_to_writer: true
  consistency_header: "X-Consistency"
reader_balancing: round_robin
timeouts: { connect: 1s, read: 30s, write: 30s, idle_upstream: 60s }
failover:
  hold_writes: 5s
  read_retries: 2
limits: { max_body: 64MiB, max_header_bytes: 64KiB }
access_log: errors
"#;
        let c = ProxyConfig::from_yaml_str(yaml).unwrap();
        assert_eq!(c.routing.methods, RoutingConfig::default().methods);
        assert_eq!(
            c.routing.rules,
            vec![Rule {
                path_prefix: Some("/api/search".into()),
                methods: Some(vec!["POST".into()]),
                to: Target::Readers
            }]
        );
    }

    #[test]
    fn methods_are_case_insensitive_in_the_file() {
        let c = ProxyConfig::from_yaml_str(
            "routing: { methods: { put: writer, Propfind: any, GET: readers } }",
        )
        .unwrap();
        assert_eq!(
            c.routing.methods,
            vec![
                ("GET".to_string(), Target::Readers),
                ("PROPFIND".to_string(), Target::Any),
                ("PUT".to_string(), Target::Writer)
            ]
        );
        let e = err("routing: { methods: { put: writer, PUT: readers } }");
        assert!(e.to_string().contains("same method"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("listen: \"0.0.0.0:8080\"\nlisten_port: 9\n");
        assert_eq!(e.key(), Some("listen_port"), "{e}");
        let e = err("routing:\n  metods: {}\n");
        assert_eq!(e.key(), Some("routing.metods"), "{e}");
        assert!(
            e.to_string()
                .starts_with("routing.metods: unknown field `metods`, expected one of `methods`"),
            "{e}"
        );
        let e = err("timeouts: { connect: 1s, conect: 2s }");
        assert_eq!(e.key(), Some("timeouts.conect"), "{e}");
        let e = err("routing: { rules: [ { path_prefix: /a, to: writer, extra: 1 } ] }");
        assert_eq!(e.key(), Some("routing.rules[0].extra"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_reason() {
        let e = err("timeouts: { connect: 5x }");
        assert_eq!(e.key(), Some("timeouts.connect"));
        assert!(
            e.to_string()
                .starts_with("timeouts.connect: invalid value: string \"5x\", expected a duration"),
            "{e}"
        );
        // A bare number is refused: is it seconds or milliseconds?
        let e = err("timeouts: { read: 30 }");
        assert_eq!(e.key(), Some("timeouts.read"));
        assert!(e.to_string().contains("expected a duration"), "{e}");
        let e = err("timeouts: { connect: 0s }");
        assert_eq!(e.to_string(), "timeouts.connect: must be greater than zero");
        let e = err("routing: { methods: { GETT: writr } }");
        assert_eq!(e.key(), Some("routing.methods.GETT"), "{e}");
        assert!(
            e.to_string().starts_with(
                "routing.methods.GETT: unknown variant `writr`, expected one of `writer`, `readers`, `any`"
            ),
            "{e}"
        );
        let e = err("routing: { methods: { \"GE T\": writer } }");
        assert_eq!(e.key(), Some("routing.methods.GE T"), "{e}");
        let e = err("routing: { default: all }");
        assert_eq!(e.key(), Some("routing.default"));
        assert!(
            e.to_string()
                .contains("unknown variant `all`, expected one of `writer`, `readers`, `any`"),
            "{e}"
        );
        let e = err("routing: { rules: [ { to: Writer } ] }");
        assert_eq!(e.key(), Some("routing.rules[0].to"), "{e}");
        assert!(e.to_string().contains("unknown variant `Writer`"), "{e}");
        let e = err("reader_balancing: random");
        assert_eq!(e.key(), Some("reader_balancing"));
        assert!(
            e.to_string().starts_with(
                "reader_balancing: unknown variant `random`, expected one of `round_robin`, `least_conn`, `p2c_ewma`"
            ),
            "{e}"
        );
        let e = err("access_log: some");
        assert_eq!(e.key(), Some("access_log"));
        assert!(
            e.to_string().starts_with(
                "access_log: unknown variant `some`, expected one of `errors`, `all`, `off`"
            ),
            "{e}"
        );
        let e = err("access_log: [all]");
        assert_eq!(e.key(), Some("access_log"), "{e}");
        let e = err("limits: { max_body: 64XB }");
        assert_eq!(e.key(), Some("limits.max_body"));
        let e = err("limits: { max_header_bytes: 4MiB }");
        assert_eq!(e.key(), Some("limits.max_header_bytes"));
        assert!(
            e.to_string()
                .contains("4194304 bytes is above the maximum of 1048575"),
            "{e}"
        );
        let e = err("limits: { max_header_bytes: 1MiB }");
        assert_eq!(e.key(), Some("limits.max_header_bytes"));
        let c = ProxyConfig::from_yaml_str("limits: { max_header_bytes: 1048575 }").unwrap();
        assert_eq!(c.limits.max_header_bytes, MAX_HEADER_BYTES_CEILING);
        let e = err("listen: localhost:8080");
        assert_eq!(e.key(), Some("listen"));
        let e = err("listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:1");
        assert_eq!(e.key(), Some("admin_listen"));
        let e = err("threads: 0");
        assert_eq!(e.key(), Some("threads"));
        let e = err("failover: { read_retries: -1 }");
        assert_eq!(e.key(), Some("failover.read_retries"), "{e}");
        let e = err("failover: { max_held_writes: many }");
        assert_eq!(e.key(), Some("failover.max_held_writes"), "{e}");
        let e = err("failover: { max_held_writes: -1 }");
        assert_eq!(e.key(), Some("failover.max_held_writes"), "{e}");
        let e = err("routing: { rules: [ { to: writer } ] }");
        assert_eq!(e.key(), Some("routing.rules[0]"), "{e}");
        let e = err("routing: { rules: [ { path_prefix: api, to: writer } ] }");
        assert_eq!(e.key(), Some("routing.rules[0].path_prefix"), "{e}");
        let e = err("routing: { rules: [ { path_prefix: /api } ] }");
        assert_eq!(e.key(), Some("routing.rules[0]"), "{e}");
        assert!(e.to_string().contains("missing field `to`"), "{e}");
        let e = err("routing: { consistency_header: \"bad header\" }");
        assert_eq!(e.key(), Some("routing.consistency_header"));
    }

    #[test]
    fn replication_aware_reads_are_off_unless_configured() {
        let c = ProxyConfig::from_yaml_str("").unwrap();
        assert_eq!(c.routing.max_reader_lag, None);
        assert_eq!(c.routing.read_your_writes, None);
        // Configured but not enabled: validated, then off.
        let c =
            ProxyConfig::from_yaml_str("routing: { read_your_writes: { token: header } }").unwrap();
        assert_eq!(c.routing.read_your_writes, None);
        let e = err("routing: { read_your_writes: { enabled: false, window: 0s } }");
        assert_eq!(e.key(), Some("routing.read_your_writes.window"), "{e}");
    }

    #[test]
    fn max_reader_lag_takes_either_limit_or_both() {
        let c =
            ProxyConfig::from_yaml_str("routing: { max_reader_lag: { offsets: 10000 } }").unwrap();
        assert_eq!(
            c.routing.max_reader_lag,
            Some(MaxReaderLag {
                offsets: Some(10000),
                duration: None
            })
        );
        let c = ProxyConfig::from_yaml_str(
            "routing:\n  max_reader_lag:\n    offsets: 5\n    duration: 5s\n",
        )
        .unwrap();
        assert_eq!(
            c.routing.max_reader_lag,
            Some(MaxReaderLag {
                offsets: Some(5),
                duration: Some(Duration::from_secs(5))
            })
        );
        let e = err("routing: { max_reader_lag: {} }");
        assert_eq!(e.key(), Some("routing.max_reader_lag"), "{e}");
        assert!(e.to_string().contains("offsets, duration or both"), "{e}");
        let e = err("routing: { max_reader_lag: { offsets: 0 } }");
        assert_eq!(
            e.to_string(),
            "routing.max_reader_lag.offsets: must be greater than zero"
        );
        let e = err("routing: { max_reader_lag: { duration: 0ms } }");
        assert_eq!(
            e.to_string(),
            "routing.max_reader_lag.duration: must be greater than zero"
        );
        let e = err("routing: { max_reader_lag: { offsets: -1 } }");
        assert_eq!(e.key(), Some("routing.max_reader_lag.offsets"), "{e}");
        let e = err("routing: { max_reader_lag: { duration: 5 } }");
        assert_eq!(e.key(), Some("routing.max_reader_lag.duration"), "{e}");
        let e = err("routing: { max_reader_lag: { offset: 5 } }");
        assert_eq!(e.key(), Some("routing.max_reader_lag.offset"), "{e}");
    }

    #[test]
    fn read_your_writes_defaults_and_errors() {
        let c =
            ProxyConfig::from_yaml_str("routing: { read_your_writes: { enabled: true } }").unwrap();
        assert_eq!(
            c.routing.read_your_writes,
            Some(ReadYourWritesConfig {
                token: TokenCarrier::Cookie,
                name: "rwp_read_after".into(),
                offset_header: HeaderName::from_static("x-replication-offset"),
                window: Duration::from_secs(10),
            })
        );
        let c = ProxyConfig::from_yaml_str(
            "routing:\n  read_your_writes:\n    enabled: true\n    token: header\n    offset_header: X-Offset\n    window: 2s\n",
        )
        .unwrap();
        let r = c.routing.read_your_writes.unwrap();
        assert_eq!(
            (r.token, r.name.as_str(), r.offset_header.as_str(), r.window),
            (
                TokenCarrier::Header,
                "X-Read-After",
                "x-offset",
                Duration::from_secs(2)
            )
        );
        let on = |extra: &str| {
            ProxyConfig::from_yaml_str(&format!(
                "routing: {{ read_your_writes: {{ enabled: true, {extra} }} }}"
            ))
        };
        assert!(on("name: my.token_1").is_ok());
        let cases: &[(&str, &str, &str)] = &[
            (
                "token: body",
                "routing.read_your_writes.token",
                "unknown variant `body`, expected `cookie` or `header`",
            ),
            (
                "name: \"a b\"",
                "routing.read_your_writes.name",
                "not a valid cookie name",
            ),
            (
                "name: \"a=b\"",
                "routing.read_your_writes.name",
                "not a valid cookie name",
            ),
            (
                "name: \"\"",
                "routing.read_your_writes.name",
                "not a valid cookie name",
            ),
            (
                "name: \"x;y\"",
                "routing.read_your_writes.name",
                "not a valid cookie name",
            ),
            (
                "token: header, name: \"X:Y\"",
                "routing.read_your_writes.name",
                "not a valid header name",
            ),
            (
                "token: header, name: Content-Length",
                "routing.read_your_writes.name",
                "another meaning",
            ),
            (
                "token: header, name: x-consistency",
                "routing.read_your_writes.name",
                "another meaning",
            ),
            (
                "offset_header: \"bad header\"",
                "routing.read_your_writes.offset_header",
                "not a valid header name",
            ),
            (
                "window: 0s",
                "routing.read_your_writes.window",
                "greater than zero",
            ),
            (
                "window: soon",
                "routing.read_your_writes.window",
                "expected a duration",
            ),
            (
                "tokn: header",
                "routing.read_your_writes.tokn",
                "unknown field",
            ),
        ];
        for (extra, key, reason) in cases {
            let e = match on(extra) {
                Ok(c) => panic!("{extra}: accepted as {c:?}"),
                Err(e) => e,
            };
            assert_eq!(e.key(), Some(*key), "{extra}: {e}");
            assert!(e.to_string().contains(reason), "{extra}: {e}");
        }
        let e = err("routing: { read_your_writes: { enabled: maybe } }");
        assert_eq!(e.key(), Some("routing.read_your_writes.enabled"), "{e}");
    }

    #[test]
    fn the_write_hold_can_be_tuned_or_turned_off() {
        let c = ProxyConfig::from_yaml_str("failover: { hold_writes: 250ms, max_held_writes: 3 }")
            .unwrap();
        assert_eq!(c.failover.hold_writes, Duration::from_millis(250));
        assert_eq!(c.failover.max_held_writes, 3);
        // 0s / 0: no hold, 503 at once (the behaviour of a proxy without a write hold).
        let c = ProxyConfig::from_yaml_str("failover: { hold_writes: 0s, max_held_writes: 0 }")
            .unwrap();
        assert!(c.failover.hold_writes.is_zero());
        assert_eq!(c.failover.max_held_writes, 0);
    }

    #[test]
    fn targets_and_access_log_take_their_documented_names() {
        for (name, target) in [
            ("writer", Target::Writer),
            ("readers", Target::Readers),
            ("any", Target::Any),
        ] {
            let c = ProxyConfig::from_yaml_str(&format!(
                "routing: {{ default: {name}, methods: {{ GET: {name} }}, rules: [ {{ path_prefix: /a, to: {name} }} ] }}"
            ))
            .unwrap();
            assert_eq!(c.routing.default, target);
            assert_eq!(c.routing.methods, vec![("GET".to_string(), target)]);
            assert_eq!(c.routing.rules[0].to, target);
            assert_eq!(target.as_str(), name);
        }
        for (name, log) in [
            ("errors", AccessLog::Errors),
            ("all", AccessLog::All),
            ("off", AccessLog::Off),
        ] {
            let c = ProxyConfig::from_yaml_str(&format!("access_log: {name}")).unwrap();
            assert_eq!(c.access_log, log, "{name}");
        }
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let e = err("listen: [unclosed\n");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn topology_is_exactly_one_of_two() {
        let e = err("topology: {}");
        assert_eq!(e.key(), Some("topology"));
        assert!(
            e.to_string().starts_with(
                "topology: expected a single key, one of `election_url`, `static`, found none"
            ),
            "{e}"
        );
        let e =
            err("topology: { election_url: \"http://a:1\", static: { writer: \"127.0.0.1:1\" } }");
        assert_eq!(e.key(), Some("topology"));
        assert!(
            e.to_string().starts_with(
                "topology: expected a single key, one of `election_url`, `static`, found `static` as well"
            ),
            "{e}"
        );
        let e = err("topology: \"http://a:1\"");
        assert_eq!(e.key(), Some("topology"));
        assert!(
            e.to_string()
                .contains("expected a map with a single key, one of `election_url`, `static`"),
            "{e}"
        );
        // Null is no choice made: the default election URL, as with the key left out.
        let c = ProxyConfig::from_yaml_str("topology: ~").unwrap();
        assert_eq!(
            c.topology,
            TopologyConfig::ElectionUrl(vec![DEFAULT_ELECTION_URL.into()])
        );
        let e = err("topology: { statik: {} }");
        assert_eq!(e.key(), Some("topology.statik"), "{e}");
        assert!(
            e.to_string()
                .contains("expected `election_url` or `static`"),
            "{e}"
        );
    }

    #[test]
    fn node_addresses_follow_the_one_host_port_rule() {
        let accepted = |addr: &str| {
            ProxyConfig::from_yaml_str(&format!("topology: {{ static: {{ writer: \"{addr}\" }} }}"))
        };
        for ok in ["[::1]:80", "node-0.storage:9001", "10.0.0.1:1"] {
            assert!(accepted(ok).is_ok(), "{ok}: {:?}", accepted(ok));
        }
        for bad in ["[zz]:80", "host:0", "host:", ":80", "a b:80", "::1:80"] {
            let e = accepted(bad).expect_err(bad);
            assert_eq!(e.key(), Some("topology.static.writer"), "{bad}: {e}");
            assert!(e.to_string().contains("is not host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn election_url_is_one_or_a_list() {
        let c =
            ProxyConfig::from_yaml_str("topology: { election_url: \"http://we:8080\" }").unwrap();
        assert_eq!(
            c.topology,
            TopologyConfig::ElectionUrl(vec!["http://we:8080".into()])
        );
        let c = ProxyConfig::from_yaml_str(
            "topology:\n  election_url:\n    - http://we-0.we:8080\n    - http://we-1.we:8080\n",
        )
        .unwrap();
        assert_eq!(
            c.topology,
            TopologyConfig::ElectionUrl(vec![
                "http://we-0.we:8080".into(),
                "http://we-1.we:8080".into()
            ])
        );
        let e = err("topology: { election_url: [] }");
        assert_eq!(e.key(), Some("topology.election_url"));
        let e = err("topology: { election_url: [\"http://a:1\", \"ftp://b\"] }");
        assert_eq!(e.key(), Some("topology.election_url[1]"), "{e}");
        let e = err("topology: { election_url: \"https://a:1\" }");
        assert!(e.to_string().contains("https is not supported"), "{e}");
    }

    #[test]
    fn static_nodes_are_strings_or_maps() {
        let c = ProxyConfig::from_yaml_str(
            "topology:\n  static:\n    writer: 127.0.0.1:9001\n    readers:\n      - 127.0.0.1:9002\n      - { name: node-2, address: \"127.0.0.1:9003\" }\n",
        )
        .unwrap();
        let TopologyConfig::Static(st) = c.topology else {
            panic!("static expected")
        };
        assert_eq!(
            st.writer,
            Some(StaticNode {
                name: "127.0.0.1:9001".into(),
                address: "127.0.0.1:9001".into()
            })
        );
        assert_eq!(st.readers[1].name, "node-2");
        let c = ProxyConfig::from_yaml_str("topology: { static: { readers: [\"h:1\"] } }").unwrap();
        assert!(matches!(
            c.topology,
            TopologyConfig::Static(StaticTopology { writer: None, .. })
        ));

        let e = err("topology: { static: { writer: \"127.0.0.1\" } }");
        assert_eq!(e.key(), Some("topology.static.writer"), "{e}");
        let e = err("topology: { static: { writer: \"a:1\", readers: [\"b:2\", \"a:1\"] } }");
        assert_eq!(e.key(), Some("topology.static.readers[1]"), "{e}");
        let e = err("topology: { static: { readers: [ { name: x, adress: \"a:1\" } ] } }");
        assert_eq!(e.key(), Some("topology.static.readers[0].adress"), "{e}");
    }

    #[test]
    fn sizes_and_durations_in_every_accepted_form() {
        let c = ProxyConfig::from_yaml_str("limits: { max_body: 1024, max_header_bytes: 2KiB }")
            .unwrap();
        assert_eq!((c.limits.max_body, c.limits.max_header_bytes), (1024, 2048));
        let c = ProxyConfig::from_yaml_str("limits: { max_body: 10k, max_header_bytes: 4000 }")
            .unwrap();
        assert_eq!(
            (c.limits.max_body, c.limits.max_header_bytes),
            (10 << 10, 4000)
        );
        let c = ProxyConfig::from_yaml_str("limits: { max_body: 1MB }").unwrap();
        assert_eq!(c.limits.max_body, 1_000_000);
        let c = ProxyConfig::from_yaml_str("limits: { max_body: \"64 MiB\" }").unwrap();
        assert_eq!(c.limits.max_body, 64 << 20);
        let e = err("limits: { max_body: 1TiB }");
        assert!(
            e.to_string()
                .starts_with("limits.max_body: invalid size \"1TiB\""),
            "{e}"
        );
        let e = err("limits: { max_body: -5 }");
        assert!(e.to_string().contains("must not be negative"), "{e}");

        let c = ProxyConfig::from_yaml_str(
            "timeouts: { connect: 250ms, read: 1m, write: 1m 30s }\nshutdown_grace: 30s",
        )
        .unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.read, Duration::from_secs(60));
        assert_eq!(c.timeouts.write, Duration::from_secs(90));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        let e = err("shutdown_grace: soon");
        assert_eq!(e.key(), Some("shutdown_grace"));
    }

    #[test]
    fn restart_only_keys_are_detected() {
        let a =
            ProxyConfig::from_yaml_str("listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2").unwrap();
        let b =
            ProxyConfig::from_yaml_str("listen: 127.0.0.1:3\nadmin_listen: 127.0.0.1:2").unwrap();
        assert_eq!(a.restart_only_changes(&b), vec!["listen"]);
        assert!(a.restart_only_changes(&a).is_empty());
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        for f in ["proxy.yaml", "local-proxy.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(f);
            if let Err(e) = ProxyConfig::load(&path) {
                panic!("{f}: {e}");
            }
        }
    }
}
