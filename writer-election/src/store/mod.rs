//! The durable record of the decision (holder, epoch, active), written before it is published.
//!
//! Static and dns modes: [`file::FileStore`] (temp file, fsync, rename, fsync of the directory).
//! Kubernetes mode: [`lease::LeaseStore`] (a `coordination.k8s.io/v1` Lease replaced with its
//! resourceVersion, so two deciders can never both write a change based on the same state).

use async_trait::async_trait;

use crate::decision::Recorded;

pub mod file;
pub mod lease;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Somebody else changed the record since we read it: re-read and decide again.
    #[error("the record changed since it was read: {0}")]
    Conflict(String),
    /// Cannot read or write now (API unreachable, disk error); retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The record exists but cannot be trusted. Never treated as "no record": that would reset
    /// the epoch to 0 and could elect a second writer.
    #[error("{0}")]
    Corrupt(String),
}

#[async_trait]
pub trait RecordStore: Send + Sync {
    /// The current record; `Recorded::default()` when none was ever written.
    async fn load(&self) -> Result<Recorded, StoreError>;
    /// Writes `rec`. Optimistic stores write only if the record is unchanged since the last
    /// `load`/`save` of this store, else [`StoreError::Conflict`].
    async fn save(&self, rec: &Recorded) -> Result<(), StoreError>;
    /// For logs: where the record lives.
    fn describe(&self) -> String;
}

/// A history as the stores must keep it, field for field.
#[cfg(test)]
fn sample_history() -> Vec<crate::topology::HistoryEntry> {
    vec![crate::topology::HistoryEntry {
        at: "2026-11-22T10:00:00.123Z".into(),
        from: Some("node-0".into()),
        to: "node-1".into(),
        epoch: 7,
        reason: "writer-gone".into(),
        no_writer_ms: Some(312),
        drain_ms: None,
    }]
}
