//! writer-election for the failover tests: the real binary (static mode, state file in a temp
//! dir), and a tiny fake that serves scripted topologies (for what the real one never does on
//! purpose, like publishing an older epoch) and records drain acknowledgements.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use test_kit::stand_in::StandIn;
use tokio::sync::watch;
use topology_client::topology::{NodeRef, Switchover, Topology};

pub use test_kit::election::{writer_name, Election};

/// writer-election in static mode over `nodes`, its config and state file in a temp dir it owns.
/// Probes every 100 ms and gives a node up after 2 failures, so failovers are quick. No promotion
/// calls: the test backends are plain HTTP servers, not storage nodes. The port is fixed in the
/// config, so a [`Election::respawn`] answers on the same URL.
pub fn static_election(nodes: &[(&str, SocketAddr)]) -> Election {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = test_kit::ports::free_addr().expect("a free port for writer-election");
    let mut cfg = format!("listen: \"{listen}\"\ndiscovery:\n  static:\n    nodes:\n");
    for (name, addr) in nodes {
        cfg.push_str(&format!(
            "      - {{ name: {name}, address: \"{addr}\" }}\n"
        ));
    }
    cfg.push_str(&format!(
        "probe: {{ path: /health/ready, interval: 100ms, timeout: 300ms, failure_threshold: 2, success_threshold: 1 }}\n\
         election: {{ candidate_order: name }}\n\
         promotion: {{ preset: none }}\n\
         state: {{ file: \"{}\" }}\n",
        dir.path().join("election-state.json").display()
    ));
    let config = dir.path().join("election.yaml");
    std::fs::write(&config, cfg).expect("write election config");
    Election::start(&config, &[]).owning(dir)
}

/// A topology document for the fake.
pub fn doc(
    epoch: u64,
    revision: u64,
    writer: Option<(&str, SocketAddr)>,
    readers: &[(&str, SocketAddr)],
    switchover: Option<Switchover>,
) -> Topology {
    let node = |(name, addr): (&str, SocketAddr)| NodeRef {
        name: name.to_string(),
        address: addr.to_string(),
    };
    let mut t = Topology::empty();
    t.epoch = epoch;
    t.revision = revision;
    t.writer = writer.map(node);
    t.readers = readers.iter().map(|r| node(*r)).collect();
    t.switchover = switchover;
    t
}

#[derive(Default)]
struct FakeState {
    /// `client=` of every topology query.
    clients: Mutex<Vec<String>>,
    /// Bodies of `POST /v1/switchover/drained`, with when they arrived.
    drained: Mutex<Vec<(serde_json::Value, Instant)>>,
    /// Statuses for the next drain acknowledgements (then 200).
    drained_answers: Mutex<VecDeque<u16>>,
}

/// A fake writer-election: serves whatever [`FakeElection::publish`] set, with blocking queries
/// (`after`, `wait`) like the real one.
pub struct FakeElection {
    pub url: String,
    doc: watch::Sender<Topology>,
    state: Arc<FakeState>,
    _server: StandIn,
}

impl FakeElection {
    pub async fn start(first: Topology) -> FakeElection {
        let (doc, _) = watch::channel(first);
        let state = Arc::new(FakeState::default());
        let (d, s) = (doc.clone(), state.clone());
        let server = StandIn::start(move |req| fake_handle(d.clone(), s.clone(), req)).await;
        FakeElection {
            url: format!("http://{}", server.addr),
            doc,
            state,
            _server: server,
        }
    }

    pub fn publish(&self, t: Topology) {
        self.doc.send_replace(t);
    }

    pub fn clients(&self) -> Vec<String> {
        self.state
            .clients
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn drained(&self) -> Vec<(serde_json::Value, Instant)> {
        self.state
            .drained
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The next drain acknowledgements get these statuses (then 200).
    pub fn answer_drained_with(&self, statuses: &[u16]) {
        if let Ok(mut q) = self.state.drained_answers.lock() {
            q.extend(statuses.iter().copied());
        }
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn fake_handle(
    doc: watch::Sender<Topology>,
    state: Arc<FakeState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default())
    };
    let (parts, body) = req.into_parts();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/v1/topology") => {
            let query = parts.uri.query().unwrap_or("");
            if let (Some(c), Ok(mut v)) = (query_param(query, "client"), state.clients.lock()) {
                v.push(c.to_string());
            }
            let after: Option<u64> = query_param(query, "after").and_then(|a| a.parse().ok());
            let wait = query_param(query, "wait")
                .and_then(|w| w.strip_suffix("ms")?.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(30));
            let mut rx = doc.subscribe();
            if after.is_some_and(|a| rx.borrow_and_update().revision <= a) {
                let _ = tokio::time::timeout(wait, rx.changed()).await;
            }
            let t = rx.borrow().clone();
            reply(200, serde_json::to_string(&t).unwrap_or_default())
        }
        ("POST", "/v1/switchover/drained") => {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if let Ok(mut d) = state.drained.lock() {
                d.push((v, Instant::now()));
            }
            let status = state
                .drained_answers
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front())
                .unwrap_or(200);
            reply(status, "{}".to_string())
        }
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()),
    }
}
