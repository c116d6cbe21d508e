//! A node's in-memory copy of the shared log: the key-value map readers serve from, and the
//! tail position it was built from.
//!
//! Two locks, always taken in this order: `replica` (the tail of the log and the records read
//! but not applied yet because of the simulated lag), then `kv`. Readers of `/kv` only take
//! `kv` for reading, so a slow disk flush in the committer never blocks a GET.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::log::{now_ms, Line, LogTail, OpKind, Record};

#[derive(Debug, Default)]
pub struct KvState {
    pub map: HashMap<String, Bytes>,
    /// Lines of the log applied so far (`/replication/offset`).
    pub applied: u64,
    /// Node and epoch of the last applied record.
    pub last_writer: Option<(String, u64)>,
    pub corrupt_lines: u64,
    /// Keys plus values held in `map` (the storage-bytes gauge).
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Replica {
    pub tail: LogTail,
    /// Read from the log, waiting for `ts_ms + lag` (the lag as it is when the line is due, so
    /// a lag changed at runtime also moves lines already read). `None` = a corrupt line
    /// (applied as a no-op, so that the offset still counts it; due with whatever is before it).
    pending: VecDeque<(u64, Option<Record>)>,
    /// Highest epoch in any line read (applied or not): the fencing check needs all of them.
    pub highest_log_epoch: u64,
}

#[derive(Debug)]
pub struct Store {
    /// The simulated replication lag, changeable while the node runs (`POST /admin/lag`).
    lag_ms: AtomicU64,
    replica: Mutex<Replica>,
    kv: RwLock<KvState>,
    highest_request_epoch: AtomicU64,
    /// Mirror of `Replica::highest_log_epoch` for `/whoami` without taking the replica lock.
    highest_log_epoch: AtomicU64,
}

impl Store {
    pub fn open(log: &Path, lag: Duration) -> io::Result<Self> {
        Ok(Store {
            lag_ms: AtomicU64::new(lag.as_millis() as u64),
            replica: Mutex::new(Replica {
                tail: LogTail::open(log)?,
                pending: VecDeque::new(),
                highest_log_epoch: 0,
            }),
            kv: RwLock::new(KvState::default()),
            highest_request_epoch: AtomicU64::new(0),
            highest_log_epoch: AtomicU64::new(0),
        })
    }

    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_ms.load(Ordering::Relaxed))
    }

    /// Sets the simulated lag; returns the previous one. A shorter lag lets the lines it held
    /// back apply at the next poll, a longer one holds back lines not applied yet.
    pub fn set_lag(&self, lag: Duration) -> Duration {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.lag_ms.swap(ms, Ordering::Relaxed))
    }

    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock leaves consistent data (each step is complete), so a
        // poisoned lock is still usable.
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn kv(&self) -> std::sync::RwLockReadGuard<'_, KvState> {
        self.kv.read().unwrap_or_else(|p| p.into_inner())
    }

    fn kv_mut(&self) -> std::sync::RwLockWriteGuard<'_, KvState> {
        self.kv.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.kv().map.get(key).cloned()
    }

    pub fn highest_epoch(&self) -> u64 {
        self.highest_log_epoch
            .load(Ordering::Relaxed)
            .max(self.highest_request_epoch.load(Ordering::Relaxed))
    }

    pub fn highest_request_epoch(&self) -> u64 {
        self.highest_request_epoch.load(Ordering::Relaxed)
    }

    pub fn note_request_epoch(&self, epoch: u64) {
        self.highest_request_epoch
            .fetch_max(epoch, Ordering::Relaxed);
    }

    /// Reads what was appended since the last call; applies what is due (everything when
    /// `force`: a writer or a promoted node must have caught up completely).
    pub fn poll(&self, replica: &mut Replica, force: bool) -> io::Result<()> {
        let lines = replica.tail.read_new()?;
        for line in lines {
            match line {
                Line::Record(r) => {
                    replica.highest_log_epoch = replica.highest_log_epoch.max(r.epoch);
                    replica.pending.push_back((r.ts_ms, Some(r)));
                }
                Line::Corrupt { line_no, reason } => {
                    tracing::warn!(line_no, %reason, "skipping a log line that is not a record");
                    replica.pending.push_back((0, None));
                }
            }
        }
        self.highest_log_epoch
            .fetch_max(replica.highest_log_epoch, Ordering::Relaxed);
        self.apply_due(replica, force);
        Ok(())
    }

    fn apply_due(&self, replica: &mut Replica, force: bool) {
        if replica.pending.is_empty() {
            return;
        }
        let now = now_ms();
        let lag_ms = self.lag_ms.load(Ordering::Relaxed);
        let mut kv = self.kv_mut();
        while let Some((ts_ms, _)) = replica.pending.front() {
            if !force && ts_ms.saturating_add(lag_ms) > now {
                break;
            }
            if let Some((_, rec)) = replica.pending.pop_front() {
                match rec {
                    Some(r) => apply(&mut kv, r),
                    None => {
                        kv.applied += 1;
                        kv.corrupt_lines += 1;
                    }
                }
            }
        }
    }

    pub fn apply_all_pending(&self, replica: &mut Replica) {
        self.apply_due(replica, true);
    }

    /// Applies records this node appended itself (the caller holds the replica lock and has
    /// applied everything before them).
    pub fn apply_own(&self, replica: &mut Replica, records: Vec<Record>) {
        if let Some(max) = records.iter().map(|r| r.epoch).max() {
            replica.highest_log_epoch = replica.highest_log_epoch.max(max);
            self.highest_log_epoch.fetch_max(max, Ordering::Relaxed);
        }
        let mut kv = self.kv_mut();
        for r in records {
            apply(&mut kv, r);
        }
    }
}

fn apply(kv: &mut KvState, r: Record) {
    kv.applied = r.seq;
    kv.last_writer = Some((r.node, r.epoch));
    let entry = |k: &str, v: &Bytes| (k.len() + v.len()) as u64;
    let old = match r.op {
        OpKind::Put => {
            let v = Bytes::from(r.value.unwrap_or_default());
            kv.bytes += entry(&r.key, &v);
            let key = r.key.clone();
            kv.map.insert(r.key, v).map(|o| (key, o))
        }
        OpKind::Delete => kv.map.remove_entry(&r.key),
    };
    if let Some((k, v)) = old {
        kv.bytes = kv.bytes.saturating_sub(entry(&k, &v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64, ts_ms: u64, epoch: u64, key: &str, value: Option<&str>) -> String {
        let r = crate::node::log::record(seq, ts_ms, "w", epoch, key, value);
        serde_json::to_string(&r).unwrap() + "\n"
    }

    #[test]
    fn lag_delays_apply_but_not_the_epoch_and_force_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = Store::open(&path, Duration::from_secs(3600)).unwrap();
        let mut f = super::super::log::open_for_append(&path).unwrap();
        f.write_all(line(1, now_ms(), 4, "a", Some("1")).as_bytes())
            .unwrap();
        f.write_all(line(2, now_ms(), 4, "a", None).as_bytes())
            .unwrap();
        f.write_all(line(3, now_ms(), 5, "b", Some("2")).as_bytes())
            .unwrap();

        let mut rep = store.replica();
        store.poll(&mut rep, false).unwrap();
        assert_eq!(store.get("b"), None, "an hour of lag: nothing applied yet");
        assert_eq!(store.highest_epoch(), 5, "the epoch is known before apply");
        assert_eq!(store.kv().applied, 0);

        store.poll(&mut rep, true).unwrap();
        assert_eq!(store.get("a"), None, "deleted");
        assert_eq!(store.get("b").as_deref(), Some(&b"2"[..]));
        assert_eq!(store.kv().applied, 3);
        assert_eq!(store.kv().last_writer, Some(("w".into(), 5)));
        assert_eq!(store.kv().bytes, 2, "only b=2 is held");
    }

    #[test]
    fn a_lag_changed_at_runtime_holds_back_and_releases_lines_already_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = Store::open(&path, Duration::ZERO).unwrap();
        let mut f = super::super::log::open_for_append(&path).unwrap();
        let mut rep = store.replica();
        f.write_all(line(1, now_ms(), 1, "a", Some("1")).as_bytes())
            .unwrap();
        store.poll(&mut rep, false).unwrap();
        assert_eq!(store.kv().applied, 1, "no lag: applied at once");

        assert_eq!(store.set_lag(Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(store.lag(), Duration::from_secs(3600));
        f.write_all(line(2, now_ms(), 1, "b", Some("2")).as_bytes())
            .unwrap();
        f.write_all(b"{torn\n").unwrap();
        store.poll(&mut rep, false).unwrap();
        assert_eq!(store.kv().applied, 1, "held back by the new lag");
        assert_eq!(store.get("b"), None);

        store.set_lag(Duration::ZERO);
        store.poll(&mut rep, false).unwrap();
        assert_eq!(
            store.kv().applied,
            3,
            "released, the corrupt line behind it too"
        );
        assert_eq!(store.get("b").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn storage_bytes_follow_overwrites_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = Store::open(&path, Duration::ZERO).unwrap();
        let mut f = super::super::log::open_for_append(&path).unwrap();
        let mut rep = store.replica();
        let mut step = |line: String| {
            f.write_all(line.as_bytes()).unwrap();
            store.poll(&mut rep, true).unwrap();
            store.kv().bytes
        };
        assert_eq!(step(line(1, 0, 1, "key", Some("12345"))), 8);
        assert_eq!(step(line(2, 0, 1, "key", Some("1"))), 4, "overwrite");
        assert_eq!(step(line(3, 0, 1, "k2", Some("ab"))), 8);
        assert_eq!(step(line(4, 0, 1, "key", None)), 4, "delete");
        assert_eq!(step(line(5, 0, 1, "absent", None)), 4, "delete of nothing");
    }

    #[test]
    fn corrupt_lines_count_in_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = Store::open(&path, Duration::ZERO).unwrap();
        let mut f = super::super::log::open_for_append(&path).unwrap();
        f.write_all(b"{torn\n").unwrap();
        f.write_all(line(2, 0, 1, "k", Some("v")).as_bytes())
            .unwrap();
        let mut rep = store.replica();
        store.poll(&mut rep, false).unwrap();
        let kv = store.kv();
        assert_eq!(kv.applied, 2);
        assert_eq!(kv.corrupt_lines, 1);
        assert_eq!(kv.map.get("k").map(|b| &b[..]), Some(&b"v"[..]));
    }
}
