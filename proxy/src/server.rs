//! Assembles the Pingora server: the proxy service, the admin service, the control service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ListenFds, RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};

use crate::admin::Admin;
use crate::config::ProxyConfig;
use crate::control::Control;
use crate::downstream::{self, ClientEdge, ClientRules, Downstream, RulesSource};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Fails fast and clearly when an address is taken. Pingora would retry a busy address for
/// 30 s and then panic inside its service task, leaving a process that runs but never serves.
fn check_bind(key: &'static str, addr: SocketAddr) -> Result<(), StartError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// Runs a service in its own task and ends the process if that task panics (Pingora
/// `expect`s a successful bind inside its service task; a proxy that is up but does not
/// listen is worse than one that exits and gets restarted).
struct ExitOnPanic<S> {
    inner: Option<S>,
    name: String,
    threads: Option<usize>,
    addresses: Option<Vec<String>>,
}

impl<S: ServiceWithDependents> ExitOnPanic<S> {
    fn new(inner: S) -> Self {
        ExitOnPanic {
            name: inner.name().to_string(),
            threads: inner.threads(),
            addresses: inner.listen_addresses(),
            inner: Some(inner),
        }
    }
}

#[async_trait]
impl<S: ServiceWithDependents + 'static> ServiceWithDependents for ExitOnPanic<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let task = tokio::spawn(async move {
            inner
                .start_service(fds, shutdown, listeners_per_fd, ready)
                .await
        });
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!(service = %self.name, "service failed; exiting");
                crate::logging::exit(1);
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.addresses.clone()
    }
}

/// The connection loop's view of the proxy: the current config's client rules, the metrics.
struct Edge(Arc<Shared>);

impl ClientEdge for Edge {
    fn rules(&self) -> ClientRules {
        let config = &self.0.load().settings.config;
        ClientRules {
            header_timeout: config.timeouts.client_header,
            max_header_bytes: config.limits.max_header_bytes,
        }
    }

    fn refused(&self, reason: &'static str) {
        self.0.metrics.client_refused(reason);
    }
}

/// Runs the proxy until SIGTERM (graceful) or SIGINT (immediate).
pub fn run(
    config_path: PathBuf,
    config: ProxyConfig,
    config_text: String,
) -> Result<(), StartError> {
    let client_listeners =
        downstream::bind(config.listen, config.threads).map_err(|source| StartError::Bind {
            key: "listen",
            addr: config.listen,
            source,
        })?;
    check_bind("admin_listen", config.admin_listen)?;

    let conf = ServerConf {
        threads: config.threads,
        // Every service gets single-threaded runtimes: one per worker (workers.rs), and one
        // each for admin and control.
        work_stealing: false,
        // Pingora's default grace period is 300 s. The control service exits as soon as the
        // in-flight requests are done; this is the backstop.
        grace_period_seconds: Some(config.shutdown_grace.as_secs_f64().ceil() as u64 + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let shared = Shared::new(config.clone(), metrics);
    let listening = Arc::new(AtomicBool::new(false));

    // One service per worker, each with one thread, its own listener, its own request handling
    // and its own upstream connection pool (pool.rs).
    let workers: Vec<_> = client_listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let app = Forwarder::new(shared.clone(), i);
            let rules: RulesSource = Arc::new(Edge(shared.clone()));
            let mut worker = background_service(
                &format!("rw-proxy worker {i}"),
                Downstream::new(i, app, rules, listener),
            );
            worker.threads = Some(1);
            worker
        })
        .collect();

    let mut admin = Service::new(
        "rw-proxy admin".to_string(),
        Admin::new(shared.clone(), listening.clone()),
    );
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    let control = background_service(
        "rw-proxy control",
        Control::new(shared, config_path, config.clone(), config_text, listening),
    );

    tracing::info!(
        listen = %config.listen,
        admin_listen = %config.admin_listen,
        threads = config.threads,
        "rw-proxy starting"
    );
    for worker in workers {
        server.add_service(ExitOnPanic::new(worker));
    }
    server.add_service(ExitOnPanic::new(admin));
    server.add_service(control);
    server.run(RunArgs::default());
    Ok(())
}
