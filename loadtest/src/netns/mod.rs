//! A test-host kit: network namespaces joined by veth links to a bridge namespace, each with an
//! address of its own, and a fault API (cuts both ways or one way, isolation, random loss) made
//! of nftables rules inside the namespaces. Nothing touches the machine's own network. The
//! namespaces, links and rules themselves are [`lab`]'s; this module gives the scenarios their
//! `anyhow` results.

pub mod cluster;
pub mod lab;
pub mod relay;

pub use lab::{available, block_on_in, cleanup_leftovers, Host, NsHandle, DEV, PREFIX};

/// The namespaces of one run ([`lab::Lab`]); dropping it deletes them all. Queries (`host`,
/// `ip`, `command`, ...) come from the lab itself; the faults answer in `anyhow` so a scenario
/// can return them as they are.
#[derive(Debug)]
pub struct Lab(lab::Lab);

impl std::ops::Deref for Lab {
    type Target = lab::Lab;

    fn deref(&self) -> &lab::Lab {
        &self.0
    }
}

impl Lab {
    /// One namespace per host name, all on one bridge, addresses 10.213.0.1, .2, ... in order.
    pub fn new(names: &[&str]) -> anyhow::Result<Lab> {
        Ok(Lab(lab::Lab::new(names)?))
    }

    /// No packet between `a` and `b`, either way.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        Ok(self.0.cut(a, b)?)
    }

    /// Packets from `from` to `to` are dropped; `to`'s packets still reach `from`.
    pub fn cut_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        Ok(self.0.cut_one_way(from, to)?)
    }

    /// `host` reaches nobody and nobody reaches it (its loopback still works).
    pub fn isolate(&self, host: &str) -> anyhow::Result<()> {
        Ok(self.0.isolate(host)?)
    }

    /// Each packet in or out of `host`'s link is dropped with probability `percent`/100.
    pub fn loss(&self, host: &str, percent: u8) -> anyhow::Result<()> {
        Ok(self.0.loss(host, percent)?)
    }

    /// Removes every fault rule of `host`.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        Ok(self.0.heal(host)?)
    }

    pub fn heal_all(&self) -> anyhow::Result<()> {
        Ok(self.0.heal_all()?)
    }
}
