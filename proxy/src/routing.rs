//! The routing decision: request + topology -> where it goes. One pure function, [`route`].
//!
//! Order (proxy/README.md, "Behaviour"): the first matching rule, else the method map, else
//! `default`. Then the read refinements: `X-Consistency: strong` sends a read to the writer;
//! with no reader to serve it (readers kept out for lag do not count) a read goes to the
//! writer if `reads_fall_back_to_writer`. Read-your-writes narrows a `readers` read further,
//! after this decision (`read_your_writes::decide`), only when a token comes with it.
//! Methods are matched exactly as they arrive (`get` is not `GET`), so unknown and extension
//! methods fall to `default`.

use http::header::HeaderName;
use http::Method;

use crate::config::{RoutingConfig, Target};
use crate::topology::TopologySnapshot;

/// Why a read is sent to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterReadReason {
    /// The client asked for it (`X-Consistency: strong`).
    Strong,
    /// No reader could serve it and `reads_fall_back_to_writer` is on.
    NoReaders,
    /// It carries a read-your-writes token that no reader is known to cover.
    ReadYourWrites,
}

impl WriterReadReason {
    /// For the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            WriterReadReason::Strong => "strong",
            WriterReadReason::NoReaders => "no_readers",
            WriterReadReason::ReadYourWrites => "read_your_writes",
        }
    }
}

/// The outcome of [`route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// A write: the writer only, carries `X-Writer-Epoch`, never replayed.
    Writer,
    /// A read served by the writer.
    WriterRead(WriterReadReason),
    /// Balanced across the read pool (readers, plus the writer if `writer_serves_reads`).
    Readers,
    /// Balanced across every node.
    Any,
    /// Nothing can serve it: 503 `no_upstream`. Carries the configured target for metrics.
    NoUpstream(Target),
}

impl RouteTarget {
    /// The `target` label of the metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            RouteTarget::Writer | RouteTarget::WriterRead(_) => "writer",
            RouteTarget::Readers => "readers",
            RouteTarget::Any => "any",
            RouteTarget::NoUpstream(t) => t.as_str(),
        }
    }

    /// Index for pre-built metric handles: writer, readers, any.
    pub fn label_index(self) -> usize {
        match self.label() {
            "writer" => 0,
            "readers" => 1,
            _ => 2,
        }
    }

    /// Whether the request may be sent again after something went wrong on an established
    /// upstream connection (a stale pooled connection, say). Writes never are: the writer may
    /// have applied them. Reads are, if idempotent and no request body byte left the proxy.
    pub fn may_replay(self, method: &Method, body_bytes_sent: usize) -> bool {
        !matches!(self, RouteTarget::Writer) && method.is_idempotent() && body_bytes_sent == 0
    }
}

/// The standard methods, in the order of [`RoutingTable::standard`].
const STANDARD: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

fn standard_index(m: &Method) -> Option<usize> {
    STANDARD.iter().position(|s| s == m)
}

#[derive(Debug, Clone)]
struct CompiledRule {
    path_prefix: Option<Box<str>>,
    methods: Option<Box<[Method]>>,
    to: Target,
}

/// `routing` compiled for the hot path: an array lookup for standard methods, a short list
/// for extension methods.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    standard: [Target; 9],
    extension: Box<[(Method, Target)]>,
    default: Target,
    rules: Box<[CompiledRule]>,
    pub writer_serves_reads: bool,
    pub reads_fall_back_to_writer: bool,
    pub consistency_header: HeaderName,
}

impl RoutingTable {
    pub fn new(cfg: &RoutingConfig) -> RoutingTable {
        let mut standard = [cfg.default; 9];
        let mut extension = Vec::new();
        for (m, t) in &cfg.methods {
            // Validated by the config parser; a method that does not parse cannot match.
            let Ok(method) = Method::from_bytes(m.as_bytes()) else {
                continue;
            };
            match standard_index(&method) {
                Some(i) => standard[i] = *t,
                None => extension.push((method, *t)),
            }
        }
        let rules = cfg
            .rules
            .iter()
            .map(|r| CompiledRule {
                path_prefix: r.path_prefix.as_deref().map(Into::into),
                methods: r.methods.as_ref().map(|ms| {
                    ms.iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect()
                }),
                to: r.to,
            })
            .collect();
        RoutingTable {
            standard,
            extension: extension.into(),
            default: cfg.default,
            rules,
            writer_serves_reads: cfg.writer_serves_reads,
            reads_fall_back_to_writer: cfg.reads_fall_back_to_writer,
            consistency_header: cfg.consistency_header.clone(),
        }
    }

    /// Rules, then the method map, then `default`.
    pub fn target(&self, method: &Method, path: &str) -> Target {
        for r in self.rules.iter() {
            let path_ok = r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p));
            let method_ok = r.methods.as_deref().is_none_or(|ms| ms.contains(method));
            if path_ok && method_ok {
                return r.to;
            }
        }
        if let Some(i) = standard_index(method) {
            return self.standard[i];
        }
        self.extension
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, t)| *t)
            // `default` for every method not in the map, extension methods included.
            .unwrap_or(self.default)
    }
}

/// The routing decision. Pure: same inputs, same answer. `lagging`: how many readers of
/// `topology` are kept out of the read pool for lag.
pub fn route(
    method: &Method,
    path: &str,
    headers: &[httparse::Header],
    table: &RoutingTable,
    topology: &TopologySnapshot,
    lagging: usize,
) -> RouteTarget {
    let target = table.target(method, path);
    if target == Target::Writer {
        return RouteTarget::Writer;
    }
    let strong = crate::h1::field(headers, table.consistency_header.as_str())
        .is_some_and(|v| v.eq_ignore_ascii_case(b"strong"));
    if strong {
        return RouteTarget::WriterRead(WriterReadReason::Strong);
    }
    let has_writer = topology.writer.is_some();
    let pool_has_nodes = match target {
        Target::Readers => {
            topology.readers.len() > lagging || (table.writer_serves_reads && has_writer)
        }
        _ => !topology.readers.is_empty() || has_writer,
    };
    if pool_has_nodes {
        return if target == Target::Any {
            RouteTarget::Any
        } else {
            RouteTarget::Readers
        };
    }
    if table.reads_fall_back_to_writer && has_writer {
        return RouteTarget::WriterRead(WriterReadReason::NoReaders);
    }
    RouteTarget::NoUpstream(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::UpstreamStats;
    use crate::config::ProxyConfig;
    use crate::topology::Upstream;
    use std::sync::Arc;
    use std::time::Instant;

    fn up(name: &str, port: u16) -> Upstream {
        Upstream {
            name: name.into(),
            address: format!("127.0.0.1:{port}").into(),
            socket: ([127, 0, 0, 1], port).into(),
            stats: Arc::new(UpstreamStats::default()),
            progress: None,
        }
    }

    /// writer w + `readers` readers.
    fn topo(writer: bool, readers: usize) -> TopologySnapshot {
        TopologySnapshot {
            epoch: 3,
            revision: 9,
            writer: writer.then(|| up("w", 1)),
            readers: (0..readers).map(|i| up("r", 2 + i as u16)).collect(),
            switchover: None,
            replication: None,
            epoch_header: http::HeaderValue::from(3u64),
            received_at: Some(Instant::now()),
        }
    }

    fn table(yaml: &str) -> RoutingTable {
        let cfg = match ProxyConfig::from_yaml_str(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        RoutingTable::new(&cfg.routing)
    }

    fn m(s: &str) -> Method {
        Method::from_bytes(s.as_bytes()).unwrap()
    }

    use crate::h1::test_fields as headers;

    use RouteTarget::*;
    use WriterReadReason::*;

    #[test]
    fn default_method_map() {
        let t = table("");
        let tp = topo(true, 2);
        let none: Vec<httparse::Header> = Vec::new();
        let cases: &[(&str, RouteTarget)] = &[
            ("PUT", Writer),
            ("POST", Writer),
            ("PATCH", Writer),
            ("DELETE", Writer),
            ("GET", Readers),
            ("HEAD", Readers),
            ("OPTIONS", Readers),
            ("TRACE", Readers),
            ("CONNECT", Readers),
            // Extension methods and other spellings go to `default`: matched exactly.
            ("PROPFIND", Readers),
            ("put", Readers),
            ("Post", Readers),
        ];
        for (method, want) in cases {
            assert_eq!(
                route(&m(method), "/x", &none, &t, &tp, 0),
                *want,
                "{method}"
            );
        }
    }

    #[test]
    fn method_map_and_default_from_the_file() {
        let t = table(
            "routing: { methods: { get: writer, propfind: readers, Put: any }, default: any }",
        );
        let tp = topo(true, 1);
        let none: Vec<httparse::Header> = Vec::new();
        let cases: &[(&str, RouteTarget)] = &[
            ("GET", Writer),
            ("PROPFIND", Readers),
            ("PUT", Any),
            // Not in the map any more: the map given replaces the default one.
            ("POST", Any),
            ("DELETE", Any),
            ("MKCOL", Any),
            ("propfind", Any),
        ];
        for (method, want) in cases {
            assert_eq!(route(&m(method), "/", &none, &t, &tp, 0), *want, "{method}");
        }
    }

    #[test]
    fn rules_first_match_wins() {
        let t = table(
            r#"
routing:
  rules:
    - { path_prefix: "/api/search", methods: [post], to: readers }
    - { path_prefix: "/api", to: writer }
    - { methods: [GET], to: any }
"#,
        );
        let tp = topo(true, 2);
        let none: Vec<httparse::Header> = Vec::new();
        let cases: &[(&str, &str, RouteTarget)] = &[
            ("POST", "/api/search", Readers),
            ("POST", "/api/search/deep?q=1", Readers),
            ("PUT", "/api/search", Writer),
            ("GET", "/api/x", Writer),
            ("GET", "/other", Any),
            ("HEAD", "/other", Readers),
            ("POST", "/other", Writer),
            ("post", "/api/search", Writer),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                route(&m(method), path, &none, &t, &tp, 0),
                *want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn consistency_strong_sends_reads_to_the_writer() {
        let t = table("");
        let tp = topo(true, 2);
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], RouteTarget);
        let cases: &[Case] = &[
            ("GET", &[("x-consistency", "strong")], WriterRead(Strong)),
            ("GET", &[("X-Consistency", "STRONG")], WriterRead(Strong)),
            ("GET", &[("x-consistency", "eventual")], Readers),
            ("GET", &[("x-consistency", "strong-ish")], Readers),
            ("PUT", &[("x-consistency", "strong")], Writer),
        ];
        for (method, h, want) in cases {
            assert_eq!(
                route(&m(method), "/", &headers(h), &t, &tp, 0),
                *want,
                "{method} {h:?}"
            );
        }
        let t = table("routing: { consistency_header: X-Read-Mode, methods: { X: any } }");
        assert_eq!(
            route(
                &m("GET"),
                "/",
                &headers(&[("x-read-mode", "strong")]),
                &t,
                &tp,
                0
            ),
            WriterRead(Strong)
        );
        assert_eq!(
            route(
                &m("X"),
                "/",
                &headers(&[("x-read-mode", "strong")]),
                &t,
                &tp,
                0
            ),
            WriterRead(Strong)
        );
        assert_eq!(
            route(
                &m("GET"),
                "/",
                &headers(&[("x-consistency", "strong")]),
                &t,
                &tp,
                0
            ),
            Readers
        );
    }

    #[test]
    fn reads_fall_back_to_the_writer_without_readers() {
        let none: Vec<httparse::Header> = Vec::new();
        let get = m("GET");
        let on = table("");
        assert_eq!(
            route(&get, "/", &none, &on, &topo(true, 0), 0),
            WriterRead(NoReaders)
        );
        assert_eq!(
            route(&get, "/", &none, &on, &topo(false, 0), 0),
            NoUpstream(Target::Readers)
        );
        assert_eq!(route(&get, "/", &none, &on, &topo(false, 1), 0), Readers);
        let off = table("routing: { reads_fall_back_to_writer: false }");
        assert_eq!(
            route(&get, "/", &none, &off, &topo(true, 0), 0),
            NoUpstream(Target::Readers)
        );
        // Writes do not care about readers.
        assert_eq!(
            route(&m("PUT"), "/", &none, &off, &topo(false, 0), 0),
            Writer
        );
    }

    #[test]
    fn readers_kept_out_for_lag_do_not_count() {
        let none: Vec<httparse::Header> = Vec::new();
        let get = m("GET");
        let on = table("");
        assert_eq!(route(&get, "/", &none, &on, &topo(true, 2), 1), Readers);
        assert_eq!(
            route(&get, "/", &none, &on, &topo(true, 2), 2),
            WriterRead(NoReaders)
        );
        let off = table("routing: { reads_fall_back_to_writer: false }");
        assert_eq!(
            route(&get, "/", &none, &off, &topo(true, 2), 2),
            NoUpstream(Target::Readers)
        );
        // The writer in the pool still serves.
        let serves = table("routing: { writer_serves_reads: true }");
        assert_eq!(route(&get, "/", &none, &serves, &topo(true, 2), 2), Readers);
        // `any` uses every node, lagging or not.
        let any = table("routing: { default: any }");
        assert_eq!(route(&get, "/", &none, &any, &topo(false, 2), 2), Any);
    }

    #[test]
    fn writer_serves_reads_makes_the_writer_a_reader() {
        let none: Vec<httparse::Header> = Vec::new();
        let get = m("GET");
        let t = table("routing: { writer_serves_reads: true, reads_fall_back_to_writer: false }");
        assert_eq!(route(&get, "/", &none, &t, &topo(true, 0), 0), Readers);
        assert_eq!(route(&get, "/", &none, &t, &topo(true, 2), 0), Readers);
        assert_eq!(
            route(&get, "/", &none, &t, &topo(false, 0), 0),
            NoUpstream(Target::Readers)
        );
    }

    #[test]
    fn any_uses_every_node() {
        let none: Vec<httparse::Header> = Vec::new();
        let t = table("routing: { default: any, reads_fall_back_to_writer: false }");
        assert_eq!(route(&m("GET"), "/", &none, &t, &topo(true, 0), 0), Any);
        assert_eq!(route(&m("GET"), "/", &none, &t, &topo(false, 1), 0), Any);
        assert_eq!(
            route(&m("GET"), "/", &none, &t, &topo(false, 0), 0),
            NoUpstream(Target::Any)
        );
    }

    #[test]
    fn no_topology_yet() {
        let none: Vec<httparse::Header> = Vec::new();
        let t = table("");
        let tp = TopologySnapshot::none();
        assert_eq!(route(&m("PUT"), "/", &none, &t, &tp, 0), Writer);
        assert_eq!(
            route(&m("GET"), "/", &none, &t, &tp, 0),
            NoUpstream(Target::Readers)
        );
    }

    #[test]
    fn only_reads_without_a_sent_body_are_replayed() {
        assert!(!Writer.may_replay(&Method::GET, 0));
        assert!(!Writer.may_replay(&Method::PUT, 0));
        assert!(Readers.may_replay(&Method::GET, 0));
        assert!(WriterRead(Strong).may_replay(&Method::GET, 0));
        assert!(!Readers.may_replay(&Method::GET, 10));
        assert!(!Readers.may_replay(&Method::POST, 0));
        assert!(!Any.may_replay(&m("PROPFIND"), 0));
    }

    #[test]
    fn labels() {
        assert_eq!(Writer.label(), "writer");
        assert_eq!(WriterRead(NoReaders).label(), "writer");
        assert_eq!(WriterRead(ReadYourWrites).label(), "writer");
        assert_eq!(ReadYourWrites.as_str(), "read_your_writes");
        assert_eq!(Readers.label(), "readers");
        assert_eq!(Any.label(), "any");
        assert_eq!(NoUpstream(Target::Any).label(), "any");
    }
}
