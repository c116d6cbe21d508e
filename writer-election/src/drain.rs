//! The planned-switchover drain barrier (docs/failover.md): which proxies must
//! acknowledge before the new writer is promoted, and their acknowledgements.
//!
//! - [`ClientRegistry`]: every `GET /v1/topology?client=<id>` is a sighting. A client is *live*
//!   while one of its queries is open, and for `wait + 5s` after its last query began or ended
//!   (`wait` = what it asked for, at most the server's maximum): the server answers every blocking
//!   query within `wait`, and a live follower asks again at once, so one not seen for that long
//!   has gone (or follows another replica).
//! - [`DrainBarrier`]: the running switchover's drain set and the acknowledgements received
//!   (shared by the API, which records acks, and the engine, which waits on them).
//! - [`drain_verdict`]: **the barrier decision**, a plain function: wait, proceed, or abort.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Added to a client's own `wait` before it counts as gone.
pub const CLIENT_SLACK: Duration = Duration::from_secs(5);
/// Distinct client ids tracked at once (the topology API needs no credentials: this bounds the
/// memory an abuser can make us spend; real deployments have tens of proxies).
pub const MAX_CLIENTS: usize = 10_000;
/// Longest accepted client id (rw-proxy's are `<hostname>-<pid>-<8 hex>`).
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// `Err(reason)` unless `id` is 1..=256 bytes without control characters.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("client must not be empty".into());
    }
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!("client is longer than {MAX_CLIENT_ID_LEN} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("client must not contain control characters".into());
    }
    Ok(())
}

/// What we know of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// The last time one of its queries began or ended.
    pub last: Instant,
    /// The `wait` of its last query.
    pub wait: Duration,
    /// Queries of this client being answered right now.
    pub open: u32,
}

impl Sighting {
    pub fn live(&self, now: Instant) -> bool {
        self.open > 0 || now.saturating_duration_since(self.last) <= self.wait + CLIENT_SLACK
    }
}

/// The clients seen polling (see the module documentation).
#[derive(Debug, Default)]
pub struct ClientRegistry {
    seen: Mutex<HashMap<String, Sighting>>,
}

/// One query of one client; ends the query's sighting when dropped (answered, or the client hung
/// up and the server dropped the request).
pub struct Visit {
    registry: Arc<ClientRegistry>,
    id: String,
}

impl Drop for Visit {
    fn drop(&mut self) {
        let mut seen = self.registry.lock();
        if let Some(s) = seen.get_mut(&self.id) {
            s.open = s.open.saturating_sub(1);
            s.last = Instant::now();
        }
    }
}

impl ClientRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sighting>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the start of a query by `id` that may wait `wait`. `None` when [`MAX_CLIENTS`]
    /// live clients are already tracked (the query is served, the client is not tracked).
    pub fn visit(self: &Arc<Self>, id: &str, wait: Duration) -> Option<Visit> {
        let now = Instant::now();
        let mut seen = self.lock();
        if !seen.contains_key(id) && seen.len() >= MAX_CLIENTS {
            seen.retain(|_, s| s.live(now));
            if seen.len() >= MAX_CLIENTS {
                return None;
            }
        }
        let s = seen.entry(id.to_string()).or_insert(Sighting {
            last: now,
            wait,
            open: 0,
        });
        s.last = now;
        s.wait = wait;
        s.open += 1;
        Some(Visit {
            registry: self.clone(),
            id: id.to_string(),
        })
    }

    /// The live clients, sorted; forgets the others.
    pub fn live(&self, now: Instant) -> BTreeSet<String> {
        let mut seen = self.lock();
        seen.retain(|_, s| s.live(now));
        seen.keys().cloned().collect()
    }
}

/// The switchover being drained: who must acknowledge, who did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub id: u64,
    pub drain_set: BTreeSet<String>,
    /// Every client that acknowledged this switchover (also ones outside the drain set, e.g. a
    /// proxy that started during the drain: harmless, and it keeps acks idempotent).
    pub acked: BTreeSet<String>,
}

impl Barrier {
    /// Drain-set members that have not acknowledged yet, sorted.
    pub fn pending(&self) -> Vec<String> {
        self.drain_set.difference(&self.acked).cloned().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("switchover {given} is not running (running: {})", running.map(|r| r.to_string()).unwrap_or_else(|| "none".into()))]
    Unknown { given: u64, running: Option<u64> },
}

/// The running switchover's barrier, if any. The engine begins and ends it; the API records acks.
#[derive(Debug)]
pub struct DrainBarrier {
    tx: watch::Sender<Option<Barrier>>,
    last_id: Mutex<u64>,
}

impl Default for DrainBarrier {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainBarrier {
    pub fn new() -> Self {
        DrainBarrier {
            tx: watch::channel(None).0,
            last_id: Mutex::new(0),
        }
    }

    /// A switchover id that no earlier switchover of this or an earlier process used:
    /// `max(last + 1, unix ms)`, so an ack meant for a switchover of a process that since
    /// restarted is answered 409, never counted for a new one.
    pub fn next_id(&self) -> u64 {
        let mut last = self.last_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        *last = (*last + 1).max(now);
        *last
    }

    pub fn begin(&self, id: u64, drain_set: BTreeSet<String>) {
        self.tx.send_replace(Some(Barrier {
            id,
            drain_set,
            acked: BTreeSet::new(),
        }));
    }

    pub fn end(&self) {
        self.tx.send_replace(None);
    }

    pub fn current(&self) -> Option<Barrier> {
        self.tx.borrow().clone()
    }

    /// Woken on every begin, ack and end.
    pub fn subscribe(&self) -> watch::Receiver<Option<Barrier>> {
        self.tx.subscribe()
    }

    /// Records that `client` drained for `switchover`. `Ok(true)` the first time, `Ok(false)` for
    /// a repeat (idempotent); an id that is not the running switchover is an error.
    pub fn ack(&self, switchover: u64, client: &str) -> Result<bool, AckError> {
        let mut result = Err(AckError::Unknown {
            given: switchover,
            running: None,
        });
        self.tx.send_if_modified(|cur| match cur {
            Some(b) if b.id == switchover => {
                let new = b.acked.insert(client.to_string());
                result = Ok(new);
                new
            }
            Some(b) => {
                result = Err(AckError::Unknown {
                    given: switchover,
                    running: Some(b.id),
                });
                false
            }
            None => false,
        });
        result
    }
}

/// What a draining switchover does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainVerdict {
    /// Acknowledgements are missing and there is time left.
    Wait,
    /// Every client of the drain set acknowledged (or none was there), or the operator forced it
    /// past the timeout: promote the target.
    Proceed { forced_past: Vec<String> },
    /// Timed out without `force`: publish the old writer again, answer 504 naming `pending`.
    Abort { pending: Vec<String> },
}

/// **The barrier decision.** `pending` = drain-set members that have not acknowledged.
pub fn drain_verdict(pending: Vec<String>, timed_out: bool, force: bool) -> DrainVerdict {
    if pending.is_empty() {
        DrainVerdict::Proceed {
            forced_past: Vec::new(),
        }
    } else if !timed_out {
        DrainVerdict::Wait
    } else if force {
        DrainVerdict::Proceed {
            forced_past: pending,
        }
    } else {
        DrainVerdict::Abort { pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            drain_verdict(vec![], false, false),
            DrainVerdict::Proceed {
                forced_past: vec![]
            }
        );
        assert_eq!(
            drain_verdict(vec![], true, false),
            DrainVerdict::Proceed {
                forced_past: vec![]
            }
        );
        assert_eq!(
            drain_verdict(vec!["a".into()], false, true),
            DrainVerdict::Wait
        );
        assert_eq!(
            drain_verdict(vec!["a".into()], true, false),
            DrainVerdict::Abort {
                pending: vec!["a".into()]
            }
        );
        assert_eq!(
            drain_verdict(vec!["a".into()], true, true),
            DrainVerdict::Proceed {
                forced_past: vec!["a".into()]
            }
        );
    }

    #[test]
    fn liveness_window() {
        let t0 = Instant::now();
        let s = Sighting {
            last: t0,
            wait: Duration::from_secs(10),
            open: 0,
        };
        assert!(s.live(t0 + Duration::from_secs(15)));
        assert!(!s.live(t0 + Duration::from_secs(16)));
        let open = Sighting { open: 1, ..s };
        assert!(open.live(t0 + Duration::from_secs(3600)), "a query is open");
    }

    #[test]
    fn registry_counts_open_queries_and_forgets_the_gone() {
        let r = Arc::new(ClientRegistry::default());
        let a = r.visit("a", Duration::from_secs(10)).unwrap();
        let _b = r.visit("b", Duration::ZERO).unwrap();
        drop(r.visit("c", Duration::ZERO));
        let now = Instant::now();
        assert_eq!(r.live(now), set(&["a", "b", "c"]));
        // Six seconds on: b still has its query open, c's ended and its window (0 + 5 s) passed,
        // a's is open.
        let later = now + Duration::from_secs(6);
        assert_eq!(r.live(later), set(&["a", "b"]));
        drop(a);
        // a's query ended just now: live for its wait + slack after that.
        assert!(r
            .live(Instant::now() + Duration::from_secs(14))
            .contains("a"));
        assert!(!r
            .live(Instant::now() + Duration::from_secs(3600))
            .contains("a"));
    }

    #[test]
    fn client_ids() {
        assert!(check_client_id("host-12-0a0b0c0d").is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("a\nb").is_err());
        assert!(check_client_id(&"x".repeat(257)).is_err());
        assert!(check_client_id(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn acks_are_idempotent_and_only_for_the_running_switchover() {
        let d = DrainBarrier::new();
        assert_eq!(
            d.ack(7, "a"),
            Err(AckError::Unknown {
                given: 7,
                running: None
            })
        );
        let id = d.next_id();
        assert!(d.next_id() > id, "ids grow");
        d.begin(id, set(&["a", "b"]));
        let mut rx = d.subscribe();
        rx.borrow_and_update();
        assert_eq!(d.ack(id, "a"), Ok(true));
        assert!(rx.has_changed().unwrap(), "the engine is woken");
        rx.borrow_and_update();
        assert_eq!(d.ack(id, "a"), Ok(false));
        assert!(!rx.has_changed().unwrap(), "a repeat changes nothing");
        assert_eq!(d.ack(id, "late-proxy"), Ok(true));
        assert_eq!(d.current().unwrap().pending(), vec!["b".to_string()]);
        assert_eq!(
            d.ack(id + 1, "b"),
            Err(AckError::Unknown {
                given: id + 1,
                running: Some(id)
            })
        );
        d.ack(id, "b").unwrap();
        assert!(d.current().unwrap().pending().is_empty());
        d.end();
        assert!(d.ack(id, "b").is_err(), "finished: 409");
    }
}
