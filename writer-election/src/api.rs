//! The HTTP API on `listen`: `/v1/topology` (with blocking queries), `/v1/history`,
//! `/v1/status`, `/v1/switchover`, `/v1/switchover/drained`, `/health`, `/health/ready`,
//! `/metrics`. Errors are JSON:
//! `{"error": "<code>", "message": "..."}`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::TokenSource;
use crate::drain::{check_client_id, ClientRegistry, DrainBarrier};
use crate::engine::{SwitchoverCmd, SwitchoverOutcome};
use crate::forward::Forwarder;
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::publish::TopologyHub;
use crate::topology::{DrainStatus, History, ReplicaStatus, Topology, REVISION_HEADER};

/// Longest blocking query we hold open.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// `wait` when a query gives `after` only.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How long a switchover request waits for the engine beyond the drain (fencing + promotion can
/// take a while).
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(120);
/// A forwarded blocking query may take this much longer than its `wait` before the follower
/// answers from its own record (well inside the proxies' own margin of 10 s).
const FORWARD_MARGIN: Duration = Duration::from_secs(2);
/// Timeout of a forwarded plain query, and of a forwarded drain acknowledgement (rw-proxy gives
/// one acknowledgement 2 s).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<TopologyHub>,
    pub metrics: Arc<Metrics>,
    pub switch_tx: mpsc::Sender<SwitchoverCmd>,
    pub token: Option<TokenSource>,
    pub ready: watch::Receiver<bool>,
    pub leader: watch::Receiver<LeaderState>,
    pub stop: watch::Receiver<bool>,
    pub clients: Arc<ClientRegistry>,
    pub drain: Arc<DrainBarrier>,
    /// `switchover.drain_timeout`
    pub drain_timeout: Duration,
    /// HA followers pass topology queries and drain acknowledgements on to the leader.
    pub forward: Arc<Forwarder>,
    /// This replica's name, for `/v1/status`.
    pub identity: String,
    pub probes: Arc<crate::probe::HealthTable>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/topology", get(topology))
        .route("/v1/history", get(history))
        .route("/v1/status", get(status))
        .route("/v1/switchover", post(switchover))
        .route("/v1/switchover/drained", post(drained))
        .route("/health", get(health))
        .route("/health/ready", get(health_ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

#[derive(Debug, Deserialize)]
struct TopologyQuery {
    after: Option<String>,
    wait: Option<String>,
    /// The follower's id: makes it part of the drain set of a switchover (see `drain`).
    client: Option<String>,
}

/// `wait` as humantime ("30s") or plain seconds ("30").
fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("wait={s:?}: {e}"))?,
    };
    Ok(d.min(MAX_WAIT))
}

fn topology_response(t: &Topology) -> Response {
    let mut resp = Json(t).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&t.revision.to_string()) {
        h.insert(REVISION_HEADER, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The leader's answer to a forwarded query, if it gave a topology document.
async fn forward_topology(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    blocking: Option<Duration>,
) -> Option<Response> {
    let leader = st.leader.borrow().clone();
    let base = st.forward.target(&leader, headers, true)?;
    let path = match uri.query() {
        Some(q) => format!("/v1/topology?{q}"),
        None => "/v1/topology".to_string(),
    };
    let url = format!("{base}{path}");
    let timeout = blocking.map_or(FORWARD_TIMEOUT, |w| w + FORWARD_MARGIN);
    let mut stop = st.stop.clone();
    let mut leader_rx = st.leader.clone();
    leader_rx.borrow_and_update();
    let sent = st
        .forward
        .send(http::Method::GET, &base, &path, Bytes::new(), timeout);
    let answer = tokio::select! {
        r = sent => r,
        // Stopping: answer from the local record at once, like local blocking queries.
        _ = stop.changed() => return None,
        // This replica took over, or another one did (a hung leader lost its Lease): the query
        // waiting on the old leader is answered from here at once.
        _ = leader_rx.changed() => return None,
    };
    match answer {
        Ok((status, _, body)) if status == StatusCode::OK => {
            match serde_json::from_slice::<Topology>(&body) {
                Ok(t) => Some(topology_response(&t)),
                Err(e) => {
                    debug!(%url, error = %e, "the leader answered no topology; serving the local one");
                    None
                }
            }
        }
        Ok((status, _, _)) => {
            debug!(%url, %status, "the leader refused a forwarded topology query; serving the local one");
            None
        }
        Err(e) => {
            debug!(%url, error = %e, "cannot forward the topology query to the leader; serving the local one");
            None
        }
    }
}

async fn topology(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<TopologyQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    };
    let after = match q.after.as_deref().map(|a| a.trim().parse::<u64>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "after must be a revision number (non-negative integer)",
            )
        }
    };
    let wait = match q.wait.as_deref().map(parse_wait) {
        None => DEFAULT_WAIT,
        Some(Ok(w)) => w,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_query", e),
    };
    if let Some(Err(e)) = q.client.as_deref().map(check_client_id) {
        return error(StatusCode::BAD_REQUEST, "bad_query", e);
    }
    // Held for the whole (blocking) query: a client with a query open is in any drain set.
    let _visit = q.client.as_deref().and_then(|c| st.clients.visit(c, wait));
    if let Some(r) = forward_topology(&st, &headers, &uri, after.map(|_| wait)).await {
        return r;
    }
    let mut rx = st.hub.subscribe();
    let Some(after) = after else {
        let cur = rx.borrow().clone();
        return topology_response(&cur);
    };
    st.metrics.blocking_queries.inc();
    let _guard = GaugeGuard(&st.metrics);
    let deadline = tokio::time::Instant::now() + wait;
    let mut stop = st.stop.clone();
    loop {
        let cur = rx.borrow_and_update().clone();
        // `after` above our revision comes from another replica or an earlier process: answer
        // at once so the client resynchronises instead of waiting for a number we may never reach.
        if cur.revision != after {
            return topology_response(&cur);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return topology_response(&cur) },
            _ = tokio::time::sleep_until(deadline) => return topology_response(&cur),
            _ = stop.changed() => return topology_response(&cur),
        }
    }
}

/// `GET /v1/history`: the last writer changes, oldest first.
async fn history(State(st): State<AppState>) -> Response {
    let changes = st.hub.history().as_ref().clone();
    let mut resp = Json(History { changes }).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /v1/status`: leadership, the proxies following, the running drain.
async fn status(State(st): State<AppState>) -> Response {
    let leader = st.leader.borrow().clone();
    let drain = st.drain.current().map(|b| DrainStatus {
        switchover: b.id,
        acknowledged: b.acked.intersection(&b.drain_set).cloned().collect(),
        pending: b.pending(),
    });
    let body = ReplicaStatus {
        identity: st.identity.clone(),
        leading: leader.leading_now(),
        leader: leader.leader,
        clients: st
            .clients
            .live(std::time::Instant::now())
            .into_iter()
            .collect(),
        drain,
        probes: st.probes.last_probes(),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

struct GaugeGuard<'a>(&'a Metrics);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.blocking_queries.dec();
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    #[serde(default)]
    to: Option<String>,
    /// Promote even if some proxies did not acknowledge the drain within the timeout.
    #[serde(default)]
    force: bool,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn switchover(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(source) = &st.token else {
        return error(
            StatusCode::FORBIDDEN,
            "switchover_disabled",
            "switchover is disabled: no switchover.token_file or token_env is configured",
        );
    };
    let expected = match source.read() {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "switchover token unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, "token_unavailable", e);
        }
    };
    let unauthorized = |msg: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", msg);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(given) = bearer(&headers) else {
        return unauthorized("needs Authorization: Bearer <token>");
    };
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return unauthorized("invalid token");
    }
    let req: SwitchoverBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        SwitchoverBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "body must be {{\"to\": \"<node>\", \"force\": false}} (both optional): {e}"
                    ),
                )
            }
        }
    };
    let to = req
        .to
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let (reply, rx) = oneshot::channel();
    if st
        .switch_tx
        .send(SwitchoverCmd {
            to,
            force: req.force,
            reply,
        })
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is stopping",
        );
    }
    let outcome = match tokio::time::timeout(st.drain_timeout + SWITCHOVER_TIMEOUT, rx).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the service is stopping",
            )
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the switchover did not complete in time; check /v1/topology",
            )
        }
    };
    match outcome {
        SwitchoverOutcome::Switched(t) | SwitchoverOutcome::Unchanged(t) => topology_response(&t),
        SwitchoverOutcome::Rejected(why) => error(StatusCode::CONFLICT, "not_a_candidate", why),
        SwitchoverOutcome::NotLeader(leader) => not_leader(leader),
        SwitchoverOutcome::Failed(why) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "switchover_failed", why)
        }
        SwitchoverOutcome::DrainTimeout { pending } => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(serde_json::json!({
                "error": "drain_timeout",
                "message": format!(
                    "{} proxy(ies) did not acknowledge the drain within switchover.drain_timeout \
                     ({:?}); the switchover was aborted and the writer is unchanged. Retry, or \
                     send \"force\": true to promote anyway",
                    pending.len(),
                    st.drain_timeout
                ),
                "pending": pending,
            })),
        )
            .into_response(),
        SwitchoverOutcome::Busy { running } => error(
            StatusCode::CONFLICT,
            "switchover_running",
            format!("switchover {running} is draining; wait for it to finish"),
        ),
    }
}

/// `POST /v1/switchover/drained`: a proxy's word that its writes to the old writer are done.
#[derive(Debug, Deserialize)]
struct DrainedBody {
    client: String,
    switchover: u64,
}

/// No token: an acknowledgement only lets a running switchover go on, it cannot start or steer one.
async fn drained(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: DrainedBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"client\": \"<id>\", \"switchover\": <id>}}: {e}"),
            )
        }
    };
    if let Err(e) = check_client_id(&req.client) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e);
    }
    let leader = st.leader.borrow().clone();
    if !leader.leading_now() {
        let Some(base) = st.forward.target(&leader, &headers, false) else {
            return not_leader(leader.leader);
        };
        return match st
            .forward
            .send(
                http::Method::POST,
                &base,
                "/v1/switchover/drained",
                body,
                FORWARD_TIMEOUT,
            )
            .await
        {
            Ok((status, h, body)) => {
                let mut r = (status, body).into_response();
                if let Some(ct) = h.get(header::CONTENT_TYPE) {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                }
                r
            }
            Err(e) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "leader_unreachable",
                    format!("cannot pass the acknowledgement on to the leader at {base}: {e}"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        };
    }
    match st.drain.ack(req.switchover, &req.client) {
        Ok(first) => {
            if first {
                info!(client = %req.client, switchover = req.switchover, "switchover: proxy drained");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, "unknown_switchover", e.to_string()),
    }
}

fn not_leader(leader: Option<String>) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_leader",
        match leader {
            Some(l) => format!("this replica does not decide; the leader is {l}"),
            None => "this replica does not decide and no leader is known".into(),
        },
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn health_ready(State(st): State<AppState>) -> Response {
    let ready = *st.ready.borrow();
    let leader = st.leader.borrow().clone();
    let body = serde_json::json!({
        "ready": ready,
        "leader": leader.leading_now(),
        "leader_identity": leader.leader,
        "revision": st.hub.current().revision,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let clients = st.clients.live(std::time::Instant::now()).len();
    st.metrics.clients.set(clients as i64);
    // From the barrier itself: an ack answered 204 shows in the next scrape.
    let pending = st.drain.current().map_or(0, |b| b.pending().len());
    st.metrics.switchover_pending_clients.set(pending as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parsing() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_wait("1h").unwrap(), MAX_WAIT);
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
