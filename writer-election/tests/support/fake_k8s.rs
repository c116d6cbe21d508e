//! A fake Kubernetes API server for tests, driven by the real kube client.
//!
//! It speaks the apiserver's wire protocol for the resources writer-election uses — pods (list,
//! watch, get, patch, delete), `coordination.k8s.io/v1` leases (get, create, replace with
//! optimistic concurrency, patch, delete, list, watch) and events (`v1` and `events.k8s.io/v1`) —
//! with JSON bodies, one global resourceVersion, watches that stream newline-delimited events
//! with bookmarks and answer 410 Gone from a compacted resourceVersion, and every error as a
//! `Status` object. Tests control it through [`FakeApiServer`]'s methods: seed and change pods,
//! play a competing lease writer, read the request log, cut the API off, compact the watch
//! history, and enforce a Role.
//!
//! ```ignore
//! mod support;
//! use support::fake_k8s::{FakeApiServer, StoragePod};
//!
//! let api = FakeApiServer::start().await.expect("fake api server");
//! api.add_pod(StoragePod::new("storagenode-0").port("http", node0_port));
//! let client = api.kube_client();
//! ```

mod patch;
mod pods;
mod rbac;
mod resources;
mod selector;
mod server;
mod status;
mod store;
mod time;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::Role;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

pub use pods::{StoragePod, STORAGE_LABEL_KEY, STORAGE_LABEL_VALUE};
pub use rbac::role_from_manifests;

/// The Role writer-election ships (k8s/writer-election/rbac.yaml), for [`FakeApiServer::with_role`]:
/// a call it does not grant fails the test.
pub fn shipped_role() -> Role {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/writer-election/rbac.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    role_from_manifests(&yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
pub use resources::Kind;

use server::{lock, Shared};

/// The namespace [`FakeApiServer::kube_client`] defaults to and the `*_in`-less helpers use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How the API is unreachable, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Serving normally.
    None,
    /// Lost API: open connections (and the watches on them) are dropped, new connections are
    /// accepted and closed at once, so every call fails fast with a transport error.
    Down,
    /// Every request gets 503 ServiceUnavailable (a Status); open watches end. Note that kube's
    /// default client retries 503 with backoff (up to 15 times) before returning the error.
    ServiceUnavailable,
    /// Requests are accepted and never answered until the outage ends (a partition); open
    /// watches end. Only a client-side timeout gets a caller out.
    Hang,
}

/// One request as the server saw it, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Who sent it: in a network namespace test, which host.
    pub peer: SocketAddr,
    /// When it arrived (before any injected delay).
    pub at: std::time::Instant,
    pub method: String,
    pub path: String,
    /// The raw query string (percent-encoded, as sent).
    pub query: String,
    /// get, list, watch, create, update, patch, delete, deletecollection; empty when the path
    /// named no served resource.
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// Resource plural: pods, leases, events.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status code of the answer (200 for a watch that started).
    pub code: u16,
}

/// An Event a client posted, from either events API.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// "v1" or "events.k8s.io/v1".
    pub api_version: String,
    pub namespace: String,
    pub name: String,
    pub type_: Option<String>,
    pub reason: Option<String>,
    /// `message` (v1) or `note` (events.k8s.io/v1).
    pub message: Option<String>,
    pub action: Option<String>,
    /// `involvedObject` (v1) or `regarding` (events.k8s.io/v1): (kind, name).
    pub regarding: Option<(String, String)>,
    pub object: Value,
}

impl StoredEvent {
    fn from_json(object: Value) -> Self {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let regarding_ptr = if object.get("regarding").is_some() {
            "/regarding"
        } else {
            "/involvedObject"
        };
        let regarding = match (
            text(&format!("{regarding_ptr}/kind")),
            text(&format!("{regarding_ptr}/name")),
        ) {
            (Some(kind), Some(name)) => Some((kind, name)),
            (None, Some(name)) => Some((String::new(), name)),
            _ => None,
        };
        Self {
            api_version: text("/apiVersion").unwrap_or_default(),
            namespace: text("/metadata/namespace").unwrap_or_default(),
            name: text("/metadata/name").unwrap_or_default(),
            type_: text("/type"),
            reason: text("/reason"),
            message: text("/note").or_else(|| text("/message")),
            action: text("/action"),
            regarding,
            object,
        }
    }
}

/// Converts a stored JSON object to its k8s-openapi type. The fake only stores objects that
/// were valid JSON objects of the right kind; one that still does not parse (a client stored
/// nonsense in a typed field) fails the test loudly here.
fn typed<T: DeserializeOwned>(object: Value) -> T {
    match serde_json::from_value(object.clone()) {
        Ok(typed) => typed,
        Err(e) => panic!(
            "fake API server: stored object does not parse as {}: {e}\n{object}",
            std::any::type_name::<T>()
        ),
    }
}

fn untyped<T: Serialize>(object: &T) -> Value {
    match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => panic!(
            "fake API server: cannot serialize {}: {e}",
            std::any::type_name::<T>()
        ),
    }
}

/// The running fake API server. Dropping it stops the server and closes every connection.
///
/// It serves from its own thread and tokio runtime, so it keeps answering while the test's
/// runtime is blocked (waiting on a child process, a current-thread runtime busy elsewhere) and
/// works the same under any runtime flavour the test picks.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // The server thread's accept loop and every connection end on this; the thread then
        // drops its runtime by itself (a runtime cannot be dropped from async context).
        self.shared.shutdown.send_replace(true);
    }
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on an ephemeral port and serves on a thread of its own.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(std::net::TcpListener::bind(("127.0.0.1", 0))?)
    }

    /// Serves on `listener`, e.g. one made inside a network namespace: the server is then that
    /// host's, reached at its address ([`Self::url`]), whichever thread serves it.
    pub fn start_on(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("fake-k8s-api-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = ready_tx.send(Ok(()));
                            server::accept_loop(listener, thread_shared).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        // Answers within microseconds: the thread only registers the listener.
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { addr, shared }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other(
                "fake API server thread died while starting",
            )),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<listening address>:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube config for this server: plain HTTP, no auth, default namespace "default", and
    /// otherwise kube's defaults (including its retry of 429/503/504).
    pub fn kube_config(&self) -> kube::Config {
        let url: http::Uri = match self.url().parse() {
            Ok(url) => url,
            Err(e) => panic!(
                "fake API server: own URL {} does not parse: {e}",
                self.url()
            ),
        };
        let mut config = kube::Config::new(url);
        config.default_namespace = DEFAULT_NAMESPACE.into();
        config
    }

    /// A real kube client talking to this server. Needs a tokio runtime (kube spawns a task).
    pub fn kube_client(&self) -> kube::Client {
        match kube::Client::try_from(self.kube_config()) {
            Ok(client) => client,
            Err(e) => panic!(
                "fake API server: kube client for {} failed: {e}",
                self.url()
            ),
        }
    }

    /// A kubeconfig for this server (plain HTTP, no credentials) whose context defaults to
    /// `namespace`: for a writer-election child process, via `KUBECONFIG`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace:?}\n\
             current-context: fake\n",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    // ---- RBAC -------------------------------------------------------------------------------

    /// From now on only what this Role (and any others granted) allows is served; the rest gets
    /// 403 Forbidden. A Role without a namespace grants in every namespace.
    pub fn with_role(self, role: Role) -> Self {
        self.grant_role(role);
        self
    }

    pub fn grant_role(&self, role: Role) {
        lock(&self.shared.grants)
            .get_or_insert_with(Vec::new)
            .push(role.into());
    }

    /// Back to allowing everything (no RBAC).
    pub fn allow_everything(&self) {
        *lock(&self.shared.grants) = None;
    }

    // ---- pods -------------------------------------------------------------------------------

    /// Creates or replaces the pod (one ADDED or MODIFIED watch event).
    pub fn add_pod(&self, pod: StoragePod) -> Pod {
        let namespace = pod.namespace_name().to_string();
        self.store_object(Kind::Pod, &namespace, pod.to_json())
    }

    /// Creates or replaces any pod (namespace from its metadata, else "default").
    pub fn upsert_pod(&self, pod: Pod) -> Pod {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        self.store_object(Kind::Pod, &namespace, untyped(&pod))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.get_object(Kind::Pod, namespace, name).map(typed)
    }

    pub fn pods(&self, namespace: &str) -> Vec<Pod> {
        self.list_objects(Kind::Pod, namespace)
            .into_iter()
            .map(typed)
            .collect()
    }

    /// Changes a pod in one write (one MODIFIED event); None if there is no such pod.
    pub fn update_pod(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Pod),
    ) -> Option<Pod> {
        self.shared
            .write(|s| {
                s.modify(Kind::Pod, namespace, name, |object| {
                    let mut pod: Pod = typed(object.clone());
                    change(&mut pod);
                    *object = untyped(&pod);
                })
            })
            .map(typed)
    }

    /// Removes the pod at once (DELETED event), as a force delete or the kubelet finishing a
    /// graceful one would. False if there was no such pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .write(|s| s.remove(Kind::Pod, namespace, name))
            .is_some()
    }

    /// `set_pod_running_in` in the default namespace.
    pub fn set_pod_running(&self, name: &str, running: bool) -> bool {
        self.set_pod_running_in(DEFAULT_NAMESPACE, name, running)
    }

    /// false: the container stops (state.terminated) and the pod turns unready. true: the
    /// container runs again and the pod is ready again (restart + passing readiness, as one
    /// write). False if there is no such pod.
    pub fn set_pod_running_in(&self, namespace: &str, name: &str, running: bool) -> bool {
        self.shared
            .write(|s| {
                s.modify(Kind::Pod, namespace, name, |pod| {
                    pods::set_running(pod, running);
                    if running {
                        pods::set_ready(pod, true);
                    }
                })
            })
            .is_some()
    }

    /// `set_pod_ready_in` in the default namespace.
    pub fn set_pod_ready(&self, name: &str, ready: bool) -> bool {
        self.set_pod_ready_in(DEFAULT_NAMESPACE, name, ready)
    }

    /// The Ready / ContainersReady conditions and the containers' ready flags.
    pub fn set_pod_ready_in(&self, namespace: &str, name: &str, ready: bool) -> bool {
        self.shared
            .write(|s| {
                s.modify(Kind::Pod, namespace, name, |pod| {
                    pods::set_ready(pod, ready)
                })
            })
            .is_some()
    }

    /// While on, a client's DELETE of a pod (without gracePeriodSeconds: 0) only marks it
    /// terminating (deletionTimestamp set, MODIFIED event); [`Self::delete_pod`] then finishes it.
    pub fn hold_pod_deletions(&self, hold: bool) {
        self.shared.write(|s| s.set_hold_pod_deletions(hold));
    }

    // ---- leases -----------------------------------------------------------------------------

    pub fn get_lease(&self, namespace: &str, name: &str) -> Option<Lease> {
        self.get_object(Kind::Lease, namespace, name).map(typed)
    }

    /// Writes the lease unconditionally as a competing writer would (creates it if missing),
    /// bumping its resourceVersion; a client holding the old version then gets 409 on replace.
    /// Namespace from the lease's metadata, else "default".
    pub fn put_lease(&self, lease: Lease) -> Lease {
        let namespace = lease
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let mut object = untyped(&lease);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        self.store_object(Kind::Lease, &namespace, object)
    }

    pub fn delete_lease(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .write(|s| s.remove(Kind::Lease, namespace, name))
            .is_some()
    }

    pub fn leases(&self, namespace: &str) -> Vec<Lease> {
        self.list_objects(Kind::Lease, namespace)
            .into_iter()
            .map(typed)
            .collect()
    }

    // ---- events, requests -------------------------------------------------------------------

    /// Every Event posted through either events API, in the order they were created.
    pub fn events(&self) -> Vec<StoredEvent> {
        self.shared
            .read(|s| s.in_creation_order(&[Kind::CoreEvent, Kind::Event]))
            .into_iter()
            .map(StoredEvent::from_json)
            .collect()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    // ---- faults -----------------------------------------------------------------------------

    /// true: [`Outage::Down`] (connections dropped and refused-by-close); false: serving again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.set_outage(if unavailable {
            Outage::Down
        } else {
            Outage::None
        });
    }

    pub fn set_outage(&self, outage: Outage) {
        self.shared.outage.send_replace(outage);
    }

    pub fn outage(&self) -> Outage {
        *self.shared.outage.borrow()
    }

    /// The next `count` requests with this RBAC verb on this resource (e.g. "update", "leases")
    /// fail with `code` as a Status (404 NotFound, 409 Conflict, 403 Forbidden, 503, 429, 500 ...)
    /// without touching the store. Note that kube's default client retries 429/503/504 itself.
    pub fn fail_requests(&self, verb: &str, resource: &str, code: u16, count: usize) {
        lock(&self.shared.faults).push(server::Fault {
            verb: verb.to_string(),
            resource: resource.to_string(),
            code,
            remaining: count,
        });
    }

    /// Delays every answer (after outage handling, before RBAC and the store) by `delay`: a slow
    /// API. Zero (the default) turns it off.
    pub fn set_response_delay(&self, delay: Duration) {
        *lock(&self.shared.response_delay) = delay;
    }

    /// Compacts the watch history: every open watch gets an ERROR 410 Gone event and ends, and
    /// any watch resumed from a resourceVersion older than now gets the same, so kube's watcher
    /// must relist.
    pub fn expire_watch_history(&self) {
        self.shared.write(|s| s.expire_history());
    }

    /// Ends every open watch cleanly (as the server-side timeout does); watchers resume from
    /// their last resourceVersion without relisting.
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// How many write events watches can resume across (default 1000); older ones are 410.
    pub fn set_watch_history_capacity(&self, events: usize) {
        self.shared.write(|s| s.set_history_capacity(events));
    }

    /// How often an idle watch with allowWatchBookmarks gets a BOOKMARK (default 5 s); applies
    /// to watches started afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval.max(Duration::from_millis(10));
    }

    /// Watch streams currently open (to wait until a watcher is connected).
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The global resourceVersion (the last write's).
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|s| s.resource_version())
    }

    // ---- generic ----------------------------------------------------------------------------

    pub fn get_object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared.read(|s| s.get(kind, namespace, name).ok())
    }

    pub fn list_objects(&self, kind: Kind, namespace: &str) -> Vec<Value> {
        self.shared
            .read(|s| s.list(kind, Some(namespace), &store::Filter::default()).0)
    }

    fn store_object<T: DeserializeOwned>(&self, kind: Kind, namespace: &str, object: Value) -> T {
        match self.shared.write(|s| s.upsert(kind, namespace, object)) {
            Ok(stored) => typed(stored),
            Err(e) => panic!("fake API server: cannot store {}: {e}", kind.kind()),
        }
    }
}
