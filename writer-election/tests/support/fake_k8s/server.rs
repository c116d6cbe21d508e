//! The HTTP side: accept loop, outage simulation, request routing, and watch streams
//! (newline-delimited JSON events over a chunked response, as the real apiserver sends them).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::patch::PatchType;
use super::rbac::{self, Grant};
use super::resources::{self, Kind, PathError, Target};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Deleted, EventType, Filter, Store};
use super::{Outage, RequestRecord};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY_BYTES: usize = 8 << 20;
/// What the real server picks (between 1800 s and twice that) when a watch names no timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Locks ignoring poison: a panicking test thread must not turn every later call into a panic.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the accept loop, the handlers and the test-control handle share.
pub struct Shared {
    store: Mutex<Store>,
    /// The current resourceVersion; open watches wake on every change.
    changes: watch::Sender<u64>,
    pub outage: watch::Sender<Outage>,
    /// Bumped to end every open watch cleanly.
    pub cut: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    pub requests: Mutex<Vec<RequestRecord>>,
    /// None: everything is allowed.
    pub grants: Mutex<Option<Vec<Grant>>>,
    pub open_watches: AtomicUsize,
    pub bookmark_interval: Mutex<Duration>,
    /// Injected failures, consumed in order by matching requests.
    pub faults: Mutex<Vec<Fault>>,
    /// Added before every answer (not to watch events once a watch has started).
    pub response_delay: Mutex<Duration>,
}

/// The next `remaining` requests with this verb on this resource get `code` as a Status.
#[derive(Debug, Clone)]
pub struct Fault {
    pub verb: String,
    pub resource: String,
    pub code: u16,
    pub remaining: usize,
}

impl Fault {
    fn error(&self, kind: Kind, name: Option<&str>) -> ApiError {
        let name = name.unwrap_or("");
        match self.code {
            404 => ApiError::not_found(kind, name),
            409 => ApiError::conflict(kind, name),
            403 => ApiError::forbidden(kind, &self.verb, None, Some(name)),
            503 => ApiError::service_unavailable(),
            code => ApiError {
                code,
                reason: match code {
                    400 => "BadRequest",
                    410 => "Gone",
                    422 => "Invalid",
                    429 => "TooManyRequests",
                    504 => "Timeout",
                    _ => "InternalError",
                },
                message: format!(
                    "injected failure {code} for {} {}",
                    self.verb,
                    kind.plural()
                ),
                details: None,
            },
        }
    }
}

impl Shared {
    pub fn new() -> Self {
        Self {
            store: Mutex::new(Store::default()),
            changes: watch::Sender::new(0),
            outage: watch::Sender::new(Outage::None),
            cut: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            requests: Mutex::new(Vec::new()),
            grants: Mutex::new(None),
            open_watches: AtomicUsize::new(0),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            faults: Mutex::new(Vec::new()),
            response_delay: Mutex::new(Duration::ZERO),
        }
    }

    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    /// Runs a mutation and wakes the open watches if it wrote anything.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = lock(&self.store);
            let out = f(&mut store);
            (out, store.resource_version())
        };
        self.changes.send_if_modified(|current| {
            let changed = *current != rv;
            *current = rv;
            changed
        });
        out
    }
}

/// Waits until the watched value satisfies `condition` (or its sender is gone). Returns nothing,
/// so no lock guard of the channel lives on inside a `select!`.
async fn until<T>(rx: &mut watch::Receiver<T>, condition: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(condition).await.map(|_| ());
}

pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = until(&mut shutdown, |stop| *stop) => return,
        };
        if *shared.outage.borrow() == Outage::Down {
            // Closed before a byte is read: the client sees the connection drop.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn_shared = shared.clone();
        tokio::spawn(async move {
            let mut outage = conn_shared.outage.subscribe();
            let mut shutdown = conn_shared.shutdown.subscribe();
            let service_shared = conn_shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = service_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = until(&mut outage, |o| *o == Outage::Down) => {}
                _ = until(&mut shutdown, |stop| *stop) => {}
            }
        });
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.status())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match decoded {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("true" | "1"))
}

/// The parts of a request the handlers need, owned so the request itself can be consumed.
struct Call {
    method: String,
    target: Target,
    verb: &'static str,
    query: HashMap<String, String>,
    content_type: String,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let mut record = RequestRecord {
        peer,
        at: std::time::Instant::now(),
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        verb: String::new(),
        group: String::new(),
        resource: String::new(),
        namespace: None,
        name: None,
        code: 0,
    };
    let response = respond(&shared, req, &mut record).await;
    record.code = response.status().as_u16();
    lock(&shared.requests).push(record);
    response
}

async fn respond(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    record: &mut RequestRecord,
) -> Response<Body> {
    // Outages first: a cut-off API server answers nothing about the request itself.
    let mut outage = shared.outage.subscribe();
    loop {
        let current = *outage.borrow_and_update();
        match current {
            Outage::None => break,
            Outage::ServiceUnavailable | Outage::Down => {
                return error_response(&ApiError::service_unavailable());
            }
            Outage::Hang => {
                if outage.changed().await.is_err() {
                    return error_response(&ApiError::service_unavailable());
                }
            }
        }
    }

    let query = parse_query(&record.query);
    let target = match resources::parse_path(&record.path) {
        Ok(target) => target,
        Err(PathError::NotFound) => return error_response(&ApiError::no_such_path()),
        Err(PathError::Unsupported(why)) => {
            return error_response(&ApiError {
                code: 404,
                reason: "NotFound",
                message: why,
                details: None,
            })
        }
    };
    record.group = target.kind.group().to_string();
    record.resource = target.kind.plural().to_string();
    record.namespace = target.namespace.clone();
    record.name = target.name.clone();
    let Some(verb) = resources::verb(&record.method, target.name.is_some(), flag(&query, "watch"))
    else {
        return error_response(&ApiError::method_not_allowed(&record.method));
    };
    record.verb = verb.to_string();

    let delay = *lock(&shared.response_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let denied = lock(&shared.grants).as_ref().is_some_and(|grants| {
        !rbac::allowed(
            grants,
            verb,
            target.kind.group(),
            target.kind.plural(),
            target.namespace.as_deref(),
            target.name.as_deref(),
        )
    });
    if denied {
        return error_response(&ApiError::forbidden(
            target.kind,
            verb,
            target.namespace.as_deref(),
            target.name.as_deref(),
        ));
    }

    let injected = {
        let mut faults = lock(&shared.faults);
        let hit = faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.verb == verb && f.resource == target.kind.plural());
        hit.map(|fault| {
            fault.remaining -= 1;
            fault.error(target.kind, target.name.as_deref())
        })
    };
    if let Some(error) = injected {
        lock(&shared.faults).retain(|f| f.remaining > 0);
        return error_response(&error);
    }

    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return error_response(&ApiError::too_large())
        }
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "could not read the request body: {e}"
            )))
        }
    };
    let call = Call {
        method: record.method.clone(),
        target,
        verb,
        query,
        content_type,
    };
    match dispatch(shared, &call, &body) {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn filter_from(query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
    Ok(Filter { labels, fields })
}

fn namespace_of(call: &Call) -> Result<&str, ApiError> {
    call.target
        .namespace
        .as_deref()
        .ok_or_else(|| ApiError::method_not_allowed(&call.method))
}

fn name_of(call: &Call) -> &str {
    call.target.name.as_deref().unwrap_or("")
}

fn dispatch(shared: &Arc<Shared>, call: &Call, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let kind = call.target.kind;
    let dry_run = call.query.get("dryRun").is_some_and(|v| v == "All");
    match call.verb {
        "list" => {
            let filter = filter_from(&call.query)?;
            let (items, rv) =
                shared.read(|s| s.list(kind, call.target.namespace.as_deref(), &filter));
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", kind.kind()),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        "watch" => start_watch(shared, call),
        "get" => {
            let ns = namespace_of(call)?;
            Ok(json_response(
                200,
                &shared.read(|s| s.get(kind, ns, name_of(call)))?,
            ))
        }
        "create" => {
            let ns = namespace_of(call)?;
            let object = parse_json(body)?;
            Ok(json_response(
                201,
                &shared.write(|s| s.create(kind, ns, object, dry_run))?,
            ))
        }
        "update" => {
            let ns = namespace_of(call)?;
            let object = parse_json(body)?;
            Ok(json_response(
                200,
                &shared.write(|s| s.update(kind, ns, name_of(call), object, dry_run))?,
            ))
        }
        "patch" => {
            let ns = namespace_of(call)?;
            let patch_type = PatchType::from_content_type(&call.content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&call.content_type))?;
            let patch = parse_json(body)?;
            Ok(json_response(
                200,
                &shared.write(|s| s.patch(kind, ns, name_of(call), patch_type, &patch, dry_run))?,
            ))
        }
        "delete" => {
            let ns = namespace_of(call)?;
            let options = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_json(body)?
            };
            let name = name_of(call);
            let deleted = shared.write(|s| s.delete(kind, ns, name, &options, dry_run))?;
            Ok(delete_response(kind, name, deleted))
        }
        "deletecollection" => {
            let ns = namespace_of(call)?;
            let filter = filter_from(&call.query)?;
            let options = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_json(body)?
            };
            let items = shared.write(|s| {
                let (matching, _) = s.list(kind, Some(ns), &filter);
                matching
                    .iter()
                    .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
                    .filter_map(|name| match s.delete(kind, ns, name, &options, dry_run) {
                        Ok(Deleted::Gone(o) | Deleted::Terminating(o)) => Some(o),
                        Err(_) => None,
                    })
                    .collect::<Vec<_>>()
            });
            let rv = shared.read(Store::resource_version);
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", kind.kind()),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        _ => Err(ApiError::method_not_allowed(&call.method)),
    }
}

/// Pods answer a delete with the pod (as the real registry does); other kinds with a Success Status.
fn delete_response(kind: Kind, name: &str, deleted: Deleted) -> Response<Body> {
    let object = match deleted {
        Deleted::Gone(o) | Deleted::Terminating(o) => o,
    };
    if kind == Kind::Pod {
        return json_response(200, &object);
    }
    json_response(
        200,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": kind.group(),
                "kind": kind.plural(),
                "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            },
        }),
    )
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

/// `?watch=true`: the stream starts with synthetic ADDED events when no resourceVersion (or
/// "0") is given, or with sendInitialEvents; otherwise it replays history after the given rv, or
/// answers 200 with a single ERROR 410 event if that rv was compacted (what the apiserver does,
/// and what makes kube's watcher relist).
fn start_watch(shared: &Arc<Shared>, call: &Call) -> Result<Response<Body>, ApiError> {
    let kind = call.target.kind;
    let filter = filter_from(&call.query)?;
    let bookmarks = flag(&call.query, "allowWatchBookmarks");
    let send_initial = flag(&call.query, "sendInitialEvents");
    let rv_param = call
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    if send_initial {
        if call.query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
            return Err(ApiError::invalid(kind, "", "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        }
        if !bookmarks {
            return Err(ApiError::invalid(kind, "", "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"));
        }
    }
    let requested = match rv_param {
        "" | "0" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::invalid(
                kind,
                "",
                &format!("resourceVersion: Invalid value: {rv:?}: must be an integer"),
            )
        })?),
    };
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|t| Duration::from_secs(t.max(1)))
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);

    let namespace = call.target.namespace.clone();
    let mut pending = VecDeque::new();
    let mut finished = false;
    let pos = shared.read(|store| {
        let now = store.resource_version();
        match requested {
            Some(rv) if !send_initial => {
                if let Err(gone) = store.check_watchable(rv) {
                    pending.push_back(event_line("ERROR", &gone.status()));
                    finished = true;
                }
                rv
            }
            _ => {
                let (items, _) = store.list(kind, namespace.as_deref(), &filter);
                for item in &items {
                    pending.push_back(event_line(EventType::Added.wire_name(), item));
                }
                if send_initial {
                    pending.push_back(bookmark_line(kind, now, true));
                }
                now
            }
        }
    });

    let interval = *lock(&shared.bookmark_interval);
    let now = Instant::now();
    let watch = WatchStream {
        shared: shared.clone(),
        kind,
        namespace,
        filter,
        pos,
        pending,
        finished,
        bookmarks,
        interval,
        next_bookmark: now + interval,
        deadline: now + timeout,
        changes: shared.changes.subscribe(),
        outage: shared.outage.subscribe(),
        cut: shared.cut.subscribe(),
        shutdown: shared.shutdown.subscribe(),
        _open: OpenWatch::new(shared.clone()),
    };
    let lines = futures::stream::unfold(watch, WatchStream::next_line)
        .map(|line| Ok::<_, Infallible>(Frame::data(line)));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(lines).boxed_unsync())
        .map_err(|e| ApiError::internal(format!("building the watch response: {e}")))
}

/// Counts open watches so tests can wait until a watcher is connected.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchStream {
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    filter: Filter,
    /// The rv this watch has delivered everything up to.
    pos: u64,
    pending: VecDeque<Bytes>,
    finished: bool,
    bookmarks: bool,
    interval: Duration,
    next_bookmark: Instant,
    deadline: Instant,
    changes: watch::Receiver<u64>,
    outage: watch::Receiver<Outage>,
    cut: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    _open: OpenWatch,
}

impl WatchStream {
    /// Queues every event after `pos`, or the 410 ERROR that ends the watch if they are gone.
    fn drain(&mut self) {
        self.changes.borrow_and_update();
        let result = self
            .shared
            .read(|s| s.events_since(self.pos, self.kind, self.namespace.as_deref(), &self.filter));
        match result {
            Ok((events, seen)) => {
                for (event, object) in &events {
                    self.pending
                        .push_back(event_line(event.wire_name(), object));
                }
                self.pos = seen;
            }
            Err(gone) => {
                self.pending.push_back(event_line("ERROR", &gone.status()));
                self.finished = true;
            }
        }
    }

    async fn next_line(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((line, self));
            }
            if self.finished {
                return None;
            }
            self.drain();
            if !self.pending.is_empty() || self.finished {
                continue;
            }
            let bookmarks = self.bookmarks;
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.finished = true;
                    }
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if bookmarks => {
                    self.pending.push_back(bookmark_line(self.kind, self.pos, false));
                    self.next_bookmark = Instant::now() + self.interval;
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    // The apiserver closes a timed-out watch with a last bookmark.
                    if bookmarks {
                        self.pending.push_back(bookmark_line(self.kind, self.pos, false));
                    }
                    self.finished = true;
                }
                _ = until(&mut self.outage, |o| *o != Outage::None) => self.finished = true,
                _ = self.cut.changed() => self.finished = true,
                _ = until(&mut self.shutdown, |stop| *stop) => self.finished = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=app%3Dx%2Ctier+in+%28a%2Cb%29&watch=true&bad=%zz&x");
        assert_eq!(
            q.get("labelSelector").map(String::as_str),
            Some("app=x,tier in (a,b)")
        );
        assert!(flag(&q, "watch"));
        assert_eq!(q.get("bad").map(String::as_str), Some("%zz"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
    }
}
