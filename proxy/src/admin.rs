//! The admin listener: `/health`, `/health/ready`, `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::state::Shared;

pub struct Admin {
    shared: Arc<Shared>,
    /// The traffic listener accepts connections (set by the control service).
    listening: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, listening: Arc<AtomicBool>) -> Self {
        Admin { shared, listening }
    }

    /// Ready = listening and holding a topology (proxy/README.md, "Admin endpoints").
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let listening = self.listening.load(Ordering::Acquire);
        let active = self.shared.load();
        let topo = &active.topology;
        let ready = listening && topo.is_known();
        let body = serde_json::json!({
            "ready": ready,
            "listening": listening,
            "topology": topo.is_known(),
            "epoch": topo.epoch,
            "revision": topo.revision,
            "writer": topo.writer.as_ref().map(|w| &*w.name),
            "readers": topo.readers.iter().map(|r| &*r.name).collect::<Vec<_>>(),
            "lagging_readers": active.lagging.iter().map(|r| &**r).collect::<Vec<_>>(),
            "switchover": topo.switchover.as_ref().map(|s| serde_json::json!({
                "id": s.id, "state": &*s.state, "from": &*s.from, "to": &*s.to,
            })),
            "topology_age_seconds": self.shared.topology_age().map(|d| d.as_secs_f64()),
            "held_writes": self.shared.hold.held(),
        });
        (ready, body)
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let len = resp.body().len();
    let headers = resp.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(http::header::CONTENT_LENGTH, len.into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "method_not_allowed", "message": "use GET"}),
            );
        }
        match req.uri.path() {
            "/health" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/health/ready" => {
                let (ready, body) = self.readiness();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, &body)
            }
            "/metrics" => {
                let age = self.shared.topology_age();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.render(age),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({
                    "error": "not_found",
                    "message": "try /health, /health/ready or /metrics"
                }),
            ),
        }
    }
}
