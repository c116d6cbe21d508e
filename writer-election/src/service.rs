//! Wiring: builds discovery, the record store, leadership, the engine and the HTTP API from a
//! config, and runs them until stopped. The binary calls [`start`] with a client from
//! `kube::Client::try_default()`; tests pass a client pointed at a fake API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{router, AppState};
use crate::config::{Discovery, ElectionConfig, StateConfig};
use crate::discovery::{self, kubernetes::PodWatch, MembershipTx};
use crate::drain::{ClientRegistry, DrainBarrier};
use crate::engine::{Engine, EngineDeps};
use crate::forward::Forwarder;
use crate::kube_actions::KubeActions;
use crate::leader::{LeaderConfig, LeaderElector, LeaderState};
use crate::metrics::{prime, Metrics};
use crate::publish::TopologyHub;
use crate::store::file::FileStore;
use crate::store::lease::LeaseStore;
use crate::store::{RecordStore, StoreError};
use crate::topology::Topology;
use topology_client::http::build_client;

#[derive(Default)]
pub struct ServiceOptions {
    /// Required for kubernetes discovery.
    pub kube_client: Option<kube::Client>,
    /// This replica's name (leader Lease holder, Event reporter). Default: `ha.identity`, env
    /// `POD_NAME`, env `HOSTNAME`, "writer-election".
    pub identity: Option<String>,
    /// Serve on this listener instead of binding `listen`.
    pub listener: Option<tokio::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Startup(String),
}

pub struct ServiceHandle {
    local_addr: SocketAddr,
    identity: String,
    stop_tx: watch::Sender<bool>,
    hub: Arc<TopologyHub>,
    leader: watch::Receiver<LeaderState>,
    tasks: Vec<JoinHandle<()>>,
    _membership_tx: Option<MembershipTx>,
}

impl ServiceHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.hub.current()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.borrow().leading_now()
    }

    /// Graceful: ends blocking queries, releases the leader Lease, stops probing.
    pub async fn stop(mut self) {
        self.stop_tx.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let all = futures::future::join_all(tasks.into_iter().map(|t| async move {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }));
        all.await;
    }

    /// Like a crash: every task ends at once, nothing is released.
    pub fn kill(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How the other replicas reach this one: `ha.advertise_url`, else `http://<env POD_IP>:<port>`,
/// else the listen address if it names one, else the first non-loopback address of the host name
/// (in a pod, the kubelet's /etc/hosts maps it to the pod IP).
async fn advertise_url(cfg: &ElectionConfig, local: SocketAddr) -> Option<String> {
    let given = cfg.ha.advertise_url.trim().trim_end_matches('/');
    if !given.is_empty() {
        return Some(given.to_string());
    }
    let port = local.port();
    if let Some(ip) = std::env::var("POD_IP")
        .ok()
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
    {
        return Some(format!("http://{}", SocketAddr::new(ip, port)));
    }
    if !local.ip().is_unspecified() {
        return Some(format!("http://{local}"));
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())?;
    let addrs = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?;
    let found = addrs
        .into_iter()
        .find(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
        .map(|a| format!("http://{a}"));
    found
}

fn default_identity(cfg: &ElectionConfig) -> String {
    if !cfg.ha.identity.trim().is_empty() {
        return cfg.ha.identity.trim().to_string();
    }
    for var in ["POD_NAME", "HOSTNAME"] {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return v.trim().to_string();
            }
        }
    }
    "writer-election".to_string()
}

pub async fn start(
    cfg: ElectionConfig,
    opts: ServiceOptions,
) -> Result<ServiceHandle, ServiceError> {
    let cfg = Arc::new(cfg);
    let identity = opts.identity.unwrap_or_else(|| default_identity(&cfg));
    let metrics = Arc::new(Metrics::new());
    prime(&metrics);
    let client = build_client(cfg.probe.timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (membership_tx, membership_rx) = discovery::channel();
    let (api_up_tx, api_up_rx) = watch::channel(true);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (switch_tx, switch_rx) = mpsc::channel(16);
    let mut tasks = Vec::new();
    let mut keep_membership_tx = None;

    let kube_ctx = match cfg.discovery() {
        Discovery::Kubernetes(k) => {
            let Some(kc) = opts.kube_client.clone() else {
                return Err(ServiceError::Startup(
                    "discovery.kubernetes needs a Kubernetes client (in-cluster config or KUBECONFIG)".into(),
                ));
            };
            let ns = discovery::kubernetes::resolve_namespace(&k.namespace, &kc);
            Some((kc, ns, k.clone()))
        }
        _ => None,
    };

    // The record first: a corrupt one stops the start, before anything is probed or served.
    let (store, initial): (Arc<dyn RecordStore>, Option<_>) = match (&cfg.state, &kube_ctx) {
        (StateConfig::File(path), _) => {
            let store = FileStore::open(path).map_err(|e| ServiceError::Startup(e.to_string()))?;
            let rec = store
                .load()
                .await
                .map_err(|e| ServiceError::Startup(e.to_string()))?;
            (Arc::new(store), Some(rec))
        }
        (StateConfig::Lease(lease), Some((kc, ns, _))) => {
            let store = LeaseStore::new(Api::<Lease>::namespaced(kc.clone(), ns), ns, &lease.name);
            let rec = match store.load().await {
                Ok(r) => Some(r),
                Err(StoreError::Corrupt(e)) => return Err(ServiceError::Startup(e)),
                Err(e) => {
                    warn!(error = %e, "cannot read the writer Lease yet; will retry (not ready meanwhile)");
                    None
                }
            };
            (Arc::new(store), rec)
        }
        (StateConfig::Lease(_), None) => {
            return Err(ServiceError::Startup(
                "state.lease: needs kubernetes discovery; static and dns modes use state.file"
                    .into(),
            ))
        }
    };
    if let Some(r) = &initial {
        info!(
            epoch = r.epoch,
            holder = ?r.holder.as_ref().map(|h| &h.name),
            active = r.active,
            store = %store.describe(),
            "resuming from the record"
        );
    }

    match cfg.discovery() {
        Discovery::Static(s) => {
            membership_tx.send_replace(Arc::new(discovery::static_membership(s)));
            keep_membership_tx = Some(membership_tx);
        }
        Discovery::Dns(d) => {
            tasks.push(tokio::spawn(discovery::dns::run(
                d.clone(),
                membership_tx,
                stop_rx.clone(),
            )));
        }
        Discovery::Kubernetes(_) => {
            if let Some((kc, ns, k)) = &kube_ctx {
                let w = PodWatch {
                    api: Api::<Pod>::namespaced(kc.clone(), ns),
                    label_selector: k.label_selector.clone(),
                    port: k.port.clone(),
                    label_key: Some(cfg.label_pods.key.clone()),
                };
                tasks.push(tokio::spawn(discovery::kubernetes::run(
                    w,
                    membership_tx,
                    api_up_tx.clone(),
                    stop_rx.clone(),
                )));
            }
        }
    }
    let metrics_api = metrics.clone();
    let mut api_up_watch = api_up_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            metrics_api
                .kubernetes_api_up
                .set(i64::from(*api_up_watch.borrow_and_update()));
            if api_up_watch.changed().await.is_err() {
                return;
            }
        }
    }));

    let kube_actions = kube_ctx.as_ref().map(|(kc, ns, _)| {
        Arc::new(KubeActions::new(
            kc.clone(),
            ns,
            &identity,
            cfg.label_pods.enabled.then(|| cfg.label_pods.key.clone()),
        ))
    });

    let listener = match opts.listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServiceError::Startup(format!("listen {}: {e}", cfg.listen)))?,
    };
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServiceError::Startup(format!("listen: {e}")))?;

    let (leader_tx, leader_rx) = if cfg.ha.enabled {
        let (kc, ns, _) = kube_ctx
            .as_ref()
            .ok_or_else(|| ServiceError::Startup("ha.enabled needs kubernetes discovery".into()))?;
        let (tx, rx) = watch::channel(LeaderState::follower(None, None));
        let url = advertise_url(&cfg, local_addr).await;
        match &url {
            Some(u) => info!(url = %u, "HA: followers forward topology queries and drain acknowledgements here while this replica leads"),
            None => warn!("HA: no URL to advertise (set ha.advertise_url or env POD_IP): while this replica leads, followers cannot forward to it and proxies following them are outside the switchover drain barrier"),
        }
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(kc.clone(), ns),
            LeaderConfig {
                lease_name: cfg.ha.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: cfg.ha.lease_duration,
                renew_deadline: cfg.ha.renew_deadline,
                retry_period: cfg.ha.retry_period,
                url,
            },
        );
        let stop = stop_rx.clone();
        let tx2 = tx.clone();
        tasks.push(tokio::spawn(async move { elector.run(tx2, stop).await }));
        (Some(tx), rx)
    } else {
        let (tx, rx) = watch::channel(LeaderState::always(&identity));
        (Some(tx), rx)
    };

    let hub = Arc::new(TopologyHub::new());
    let clients = Arc::new(ClientRegistry::default());
    let drain = Arc::new(DrainBarrier::new());
    let table = Arc::new(crate::probe::HealthTable::default());
    let engine = Engine::new(EngineDeps {
        cfg: cfg.clone(),
        store,
        initial,
        membership: membership_rx,
        hub: hub.clone(),
        metrics: metrics.clone(),
        switch_rx,
        leader: leader_rx.clone(),
        api_up: api_up_rx,
        kube: kube_actions,
        ready: ready_tx,
        stop: stop_rx.clone(),
        client,
        clients: clients.clone(),
        drain: drain.clone(),
        table: table.clone(),
    });
    // Keep the leader sender alive as long as the engine runs (non-HA: nobody else holds it).
    let engine_task = tokio::spawn(async move {
        let _leader_tx = leader_tx;
        engine.run().await
    });
    tasks.push(engine_task);

    let state = AppState {
        hub: hub.clone(),
        metrics,
        switch_tx,
        token: cfg.token_source(),
        ready: ready_rx,
        leader: leader_rx.clone(),
        stop: stop_rx.clone(),
        clients,
        drain,
        drain_timeout: cfg.switchover.drain_timeout,
        forward: Arc::new(Forwarder::new(&identity)),
        identity: identity.clone(),
        probes: table,
    };
    let mut stop_srv = stop_rx.clone();
    let app = router(state);
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_srv.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "HTTP server ended");
        }
    }));
    info!(listen = %local_addr, identity = %identity, ha = cfg.ha.enabled, "writer-election started");
    Ok(ServiceHandle {
        local_addr,
        identity,
        stop_tx,
        hub,
        leader: leader_rx,
        tasks,
        _membership_tx: keep_membership_tx,
    })
}
