//! The HTTP face of a demo node. GET /kv and /whoami are on the benchmark path: they take one
//! read lock and copy nothing but a `Bytes` handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::api::Api;
use super::committer::{WriteError, WriteOp};
use super::fence::Refusal;
use super::log::OpKind;
use super::promotion::{NotPromotable, Promotion};
use super::store::Store;

pub const EPOCH_HEADER: &str = "x-writer-epoch";
pub const NODE_HEADER: &str = "x-node";
/// On a write the writer acknowledged: the smallest `/replication/offset` at which a reader has
/// applied that write. Offsets count log lines applied and the write is line `seq` of the log,
/// so this is the write's `seq`.
pub const OFFSET_HEADER: &str = "x-replication-offset";
pub struct Node {
    pub name: String,
    pub api: Api,
    pub name_header: HeaderValue,
    pub store: Arc<Store>,
    pub promotion: Arc<Promotion>,
    pub ready: AtomicBool,
    pub writes: mpsc::Sender<WriteOp>,
}

pub fn router(node: Arc<Node>) -> Router {
    let api = node.api;
    let activation = if api.two_step_activation() {
        Router::new()
            .route(&api.start_path(), post(promotion_start))
            .route(&api.finish_path(), post(promotion_finish))
    } else {
        Router::new().route(&api.activate_path(), post(promotion_activate))
    };
    Router::new()
        .route(
            "/kv/{key}",
            get(get_kv).put(put_kv).post(put_kv).delete(delete_kv),
        )
        .route("/whoami", get(whoami))
        // Kept beside the API's own paths: loadtest's tools and the by-hand configs probe them.
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/admin/ready", post(set_ready).get(ready))
        .route("/admin/demote", post(demote))
        .route("/admin/lag", post(set_lag).get(get_lag))
        .route(&api.health_path(), get(health))
        .route(&api.ready_path(), get(api_ready))
        .route(&api.distributor_path(), get(distributor))
        .route(&api.storage_bytes_path(), get(storage_bytes))
        .merge(activation)
        .route("/replication/offset", get(offset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(node)
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn get_kv(State(node): State<Arc<Node>>, Path(key): Path<String>) -> Response {
    match node.store.get(&key) {
        Some(value) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(NODE_HEADER, node.name_header.clone())
            .body(Body::from(value))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        None => {
            let mut r = error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no key {key:?}"),
            );
            r.headers_mut()
                .insert(NODE_HEADER, node.name_header.clone());
            r
        }
    }
}

async fn put_kv(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !node.promotion.may_write() {
        return refused(&node, &Refusal::NotADistributor);
    }
    let value = match String::from_utf8(body.to_vec()) {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_value",
                "the value must be UTF-8 text (the log stores it as a JSON string)",
            )
        }
    };
    write(node, key, OpKind::Put, Some(value), &headers).await
}

async fn delete_kv(
    State(node): State<Arc<Node>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !node.promotion.may_write() {
        return refused(&node, &Refusal::NotADistributor);
    }
    write(node, key, OpKind::Delete, None, &headers).await
}

/// Missing or unreadable `X-Writer-Epoch` is a malformed request for a storage node that only
/// takes writes through a proxy: 400 with (code, message).
fn request_epoch(headers: &HeaderMap) -> Result<u64, (&'static str, &'static str)> {
    let Some(raw) = headers.get(EPOCH_HEADER) else {
        return Err((
            "missing_epoch",
            "a write needs an X-Writer-Epoch header (the proxy adds it)",
        ));
    };
    raw.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or((
            "invalid_epoch",
            "X-Writer-Epoch must be a non-negative integer",
        ))
}

async fn write(
    node: Arc<Node>,
    key: String,
    op: OpKind,
    value: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let epoch = match request_epoch(headers) {
        Ok(e) => e,
        Err((code, msg)) => return error(StatusCode::BAD_REQUEST, code, msg),
    };
    let (reply, rx) = oneshot::channel();
    let w = WriteOp {
        epoch,
        op,
        key: key.clone(),
        value,
        reply,
    };
    if node.writes.send(w).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is stopping",
        );
    }
    let result = match rx.await {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "commit_lost",
                "the committer stopped",
            )
        }
    };
    match result {
        Ok(acc) => {
            let body = json!({"key": key, "epoch": acc.epoch, "seq": acc.seq, "node": node.name});
            let mut r = (StatusCode::OK, axum::Json(body)).into_response();
            let h = r.headers_mut();
            h.insert(NODE_HEADER, node.name_header.clone());
            h.insert(EPOCH_HEADER, HeaderValue::from(acc.epoch));
            h.insert(OFFSET_HEADER, HeaderValue::from(acc.seq));
            r
        }
        Err(WriteError::Refused(refusal)) => refused(&node, &refusal),
        Err(WriteError::Io(msg)) => error(StatusCode::INTERNAL_SERVER_ERROR, "log_io", msg),
    }
}

/// The refusal as JSON naming this node; a node that is not the distributor answers as the
/// storage node library does (400 with its API's NAD header set to `true`), so a proxy can tell
/// it apart from a malformed request.
fn refused(node: &Node, refusal: &Refusal) -> Response {
    let mut body = serde_json::to_value(refusal).unwrap_or_else(|_| json!({}));
    body["message"] = json!(refusal.message());
    body["node"] = json!(node.name);
    let status = match refusal {
        Refusal::StaleEpoch { .. } => StatusCode::CONFLICT,
        Refusal::NotADistributor => StatusCode::BAD_REQUEST,
    };
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(NODE_HEADER, node.name_header.clone());
    if matches!(refusal, Refusal::NotADistributor) {
        h.insert(node.api.nad_header(), HeaderValue::from_static("true"));
    }
    r
}

async fn whoami(State(node): State<Arc<Node>>) -> Response {
    let (applied, last_writer) = {
        let kv = node.store.kv();
        (kv.applied, kv.last_writer.clone())
    };
    let promoted = node.promotion.is_promoted();
    let role = if promoted
        || (!node.promotion.required()
            && last_writer
                .as_ref()
                .is_some_and(|(n, e)| *n == node.name && *e == node.store.highest_epoch()))
    {
        "writer"
    } else {
        "reader"
    };
    let body = json!({
        "name": node.name,
        "api": node.api.as_str(),
        "backup": node.promotion.is_backup(),
        "role": role,
        "promoted": promoted,
        "ready": node.ready.load(Ordering::Relaxed),
        "highest_epoch": node.store.highest_epoch(),
        "applied_offset": applied,
        "last_writer": last_writer.map(|(n, e)| json!({"node": n, "epoch": e})),
    });
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(NODE_HEADER, node.name_header.clone());
    r
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let ready = node.ready.load(Ordering::Relaxed);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"ready": ready}))).into_response()
}

/// The API's readiness path answers as the library does: 500 when not ready.
async fn api_ready(State(node): State<Arc<Node>>) -> Response {
    let ready = node.ready.load(Ordering::Relaxed);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, axum::Json(json!({"ready": ready}))).into_response()
}

/// Body `true` or `false` (JSON or plain text, whitespace ignored).
async fn set_ready(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let v = match std::str::from_utf8(&body).map(str::trim) {
        Ok("true") => true,
        Ok("false") => false,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "POST /admin/ready takes a body of true or false",
            )
        }
    };
    let was = node.ready.swap(v, Ordering::Relaxed);
    if was != v {
        tracing::info!(ready = v, "readiness switched");
    }
    axum::Json(json!({"ready": v})).into_response()
}

fn lag_body(lag: std::time::Duration) -> serde_json::Value {
    json!({
        "lag": humantime::format_duration(lag).to_string(),
        "lag_ms": lag.as_millis() as u64,
    })
}

/// Test knob: changes the simulated replication lag while the node runs (body: a duration such
/// as `5s`, `300ms` or `0s`). Lines already read but not applied follow the new lag, so `0s`
/// makes a lagging reader catch up at once.
async fn set_lag(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let parsed = std::str::from_utf8(&body)
        .ok()
        .map(str::trim)
        .and_then(|s| humantime::parse_duration(s).ok());
    let Some(lag) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "POST /admin/lag takes a duration as its body, e.g. 5s, 300ms or 0s",
        );
    };
    let was = node.store.set_lag(lag);
    tracing::info!(lag = ?lag, was = ?was, "replication lag changed");
    let mut body = lag_body(lag);
    body["was_ms"] = json!(was.as_millis() as u64);
    axum::Json(body).into_response()
}

async fn get_lag(State(node): State<Arc<Node>>) -> Response {
    axum::Json(lag_body(node.store.lag())).into_response()
}

fn text_bool(v: bool) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        if v { "true" } else { "false" },
    )
        .into_response()
}

fn not_promotable(node: &Node) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "not_promotable",
        format!(
            "{} is a backup node: it can never be the distributor",
            node.name
        ),
    )
}

/// Catching up may wait for the replica lock held by a commit in progress, and the legacy
/// activation sleeps through the promotion: neither on a runtime thread.
async fn blocking_promotion(
    node: Arc<Node>,
    step: fn(&Promotion, &dyn Fn()) -> Result<bool, NotPromotable>,
) -> Result<bool, NotPromotable> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let catch_up = || {
            let mut rep = n.store.replica();
            if let Err(e) = n.store.poll(&mut rep, true) {
                tracing::error!(error = %e, "catching up before promotion failed");
            }
        };
        step(&n.promotion, &catch_up)
    })
    .await
    .unwrap_or(Ok(false))
}

async fn promotion_start(State(node): State<Arc<Node>>) -> Response {
    match node.promotion.start() {
        Ok(state) => {
            tracing::info!(?state, "promotion requested");
            text_bool(true)
        }
        Err(NotPromotable) => not_promotable(&node),
    }
}

async fn promotion_finish(State(node): State<Arc<Node>>) -> Response {
    match blocking_promotion(node.clone(), |p, c| p.finish(c)).await {
        Ok(done) => text_bool(done),
        Err(NotPromotable) => not_promotable(&node),
    }
}

/// The legacy single call answers once the node is the distributor.
async fn promotion_activate(State(node): State<Arc<Node>>) -> Response {
    tracing::info!("activation requested");
    match blocking_promotion(node.clone(), |p, c| p.activate(c)).await {
        Ok(true) => text_bool(true),
        Ok(false) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "activation_interrupted",
            "the node was demoted while the activation ran",
        ),
        Err(NotPromotable) => not_promotable(&node),
    }
}

async fn distributor(State(node): State<Arc<Node>>) -> Response {
    if node.promotion.is_backup() {
        return not_promotable(&node);
    }
    text_bool(node.promotion.is_promoted())
}

/// Test knob: the node drops the distributor role, as a restarted writer comes back without it.
async fn demote(State(node): State<Arc<Node>>) -> Response {
    let was = node.promotion.demote();
    axum::Json(json!({"distributor": false, "was_distributor": was})).into_response()
}

async fn storage_bytes(State(node): State<Arc<Node>>) -> Response {
    let bytes = node.store.kv().bytes;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "# HELP cluster_storage_used_bytes Bytes of keys and values this node holds.\n\
             # TYPE cluster_storage_used_bytes gauge\n\
             cluster_storage_used_bytes {bytes}\n"
        ),
    )
        .into_response()
}

async fn offset(State(node): State<Arc<Node>>) -> Response {
    let applied = node.store.kv().applied;
    axum::Json(json!({"offset": applied})).into_response()
}
