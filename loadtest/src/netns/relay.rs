//! A delaying TCP relay: the kernel here has no netem qdisc, so delay on a link is made by
//! relaying a host's listening port through this, which holds every chunk for the current
//! delay before passing it on (each direction, order kept). The delay can change while
//! connections are open; 0 is a plain relay.
//!
//! It runs on a thread of its own inside the host's namespace, so both its listening socket and
//! its connections to the target are that host's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::NsHandle;

/// A running relay; dropping it stops it (open connections end with it).
pub struct Relay {
    delay_us: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Listens on `listen` inside `ns` (None: the caller's namespace) and forwards to `target`.
    pub fn start(
        ns: Option<NsHandle>,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> anyhow::Result<Relay> {
        let delay_us = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let d = delay_us.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{listen}"))
            .spawn(move || {
                let setup =
                    || -> anyhow::Result<(tokio::runtime::Runtime, std::net::TcpListener)> {
                        if let Some(ns) = &ns {
                            ns.enter()?;
                        }
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        let l = std::net::TcpListener::bind(listen)
                            .with_context(|| format!("relay: binding {listen}"))?;
                        l.set_nonblocking(true)?;
                        Ok((rt, l))
                    };
                let (rt, listener) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, target, d) => {}
                    }
                });
            })
            .context("starting the relay thread")?;
        ready_rx
            .recv()
            .context("the relay thread ended before it listened")??;
        Ok(Relay {
            delay_us,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Arc<AtomicU64>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let delay = delay.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::join!(pipe(ir, ow, delay.clone()), pipe(or, iw, delay));
        });
    }
}

/// Copies `r` to `w`, each chunk written no earlier than its arrival + the delay at arrival.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}
