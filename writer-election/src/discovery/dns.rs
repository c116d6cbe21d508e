//! `dns` mode: the A records of a headless Service, re-resolved every `interval`.
//!
//! A node is named by its IP address (a headless Service's A records carry no pod names). A
//! failed lookup keeps the last list (a DNS hiccup must not look like every node leaving); an
//! answer without addresses is an empty cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{DiscoveredNode, Membership, MembershipTx};
use crate::config::DnsDiscovery;

pub async fn resolve(name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
        .await?
        .filter(|a| matches!(a.ip(), IpAddr::V4(_)))
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

pub fn membership_of(addrs: &[SocketAddr]) -> Membership {
    Membership::new(
        addrs
            .iter()
            .map(|a| DiscoveredNode {
                name: a.ip().to_string(),
                address: a.to_string(),
                uid: None,
                running: true,
                created: None,
                pod_ready: None,
                role_label: None,
            })
            .collect(),
    )
}

/// Runs until `stop` fires.
pub async fn run(cfg: DnsDiscovery, tx: MembershipTx, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        // A resolver that hangs must not keep the service from stopping.
        let answer = tokio::select! {
            a = resolve(&cfg.name, cfg.port) => a,
            _ = stop.changed() => return,
        };
        match answer {
            Ok(addrs) => {
                if failing {
                    info!(name = %cfg.name, "DNS discovery resolves again");
                    failing = false;
                }
                let m = membership_of(&addrs);
                tx.send_if_modified(|cur| {
                    if **cur == m {
                        false
                    } else {
                        info!(name = %cfg.name, nodes = m.nodes.len(), "DNS membership changed");
                        *cur = Arc::new(m);
                        true
                    }
                });
            }
            Err(e) => {
                if !failing {
                    warn!(name = %cfg.name, error = %e, "DNS lookup failed; keeping the last node list");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_an_ipv4_node_named_by_its_address() {
        let addrs = resolve("localhost", 9001).await.unwrap();
        assert!(addrs.iter().all(|a| a.is_ipv4()), "{addrs:?}");
        let m = membership_of(&addrs);
        assert!(m.get("127.0.0.1").is_some(), "{m:?}");
        assert_eq!(m.get("127.0.0.1").unwrap().address, "127.0.0.1:9001");
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_list() {
        let (tx, rx) = super::super::channel();
        let first = membership_of(&["127.0.0.1:1".parse().unwrap()]);
        tx.send_replace(Arc::new(first.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = DnsDiscovery {
            name: "no-such-host.invalid".into(),
            port: 80,
            interval: std::time::Duration::from_millis(20),
        };
        let task = tokio::spawn(run(cfg, tx, stop_rx));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(**rx.borrow(), first);
        stop_tx.send_replace(true);
        task.await.unwrap();
    }
}
