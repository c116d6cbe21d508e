//! The write hold: a write that cannot go to a writer right now waits for one instead
//! of failing, so a failover or a planned switchover shows up to clients as a slow request.
//!
//! Everything about it is here:
//! - [`gate`], the decision (pure): dial the writer, or hold and why. A write is held while the
//!   topology has no writer, while a switchover is under way (the drain barrier), and while the
//!   writer is *suspect*: one of our connects to it failed before anything was sent, or it
//!   refused a write as not the distributor (see [`WriteHold::mark_refused`]).
//! - [`WriteHold`], the state: the suspect writer (a `watch`, so held writes wake up when it is
//!   cleared), the number of held writes (bounded by `failover.max_held_writes`), and the writes
//!   in flight to the writer (the switchover drain waits for them to reach zero).
//! - [`admit`], the wait: re-evaluates [`gate`] each time the topology or the suspect changes
//!   (woken by the `watch`es, never by polling), up to `failover.hold_writes` per request.
//!
//! A request is only ever held *before* any of it went upstream; what was sent is never replayed
//! (the attempt rules, `attempt.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::state::{Active, Shared};
use crate::topology::TopologySnapshot;

/// How often a suspect writer is re-dialled (TCP connect) to find out it is back.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a held request checks that its client is still there. A write whose client gave
/// up (and may be retrying it elsewhere) must not be sent later: that would apply it twice.
pub const CLIENT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long writes wait after the writer's first refusal before one is sent again; each
/// further refusal in a row doubles it, up to [`REFUSED_RECHECK_MAX`]. writer-election
/// re-promotes a writer that lost its role without publishing anything new, so time is the
/// only signal the proxy gets.
pub const REFUSED_RECHECK_FIRST: Duration = Duration::from_millis(50);
pub const REFUSED_RECHECK_MAX: Duration = Duration::from_secs(1);

/// The writer one of our connects failed on (or that refused a write), at the epoch it happened
/// at. It stops mattering as soon as the topology names another writer or another epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    /// `host:port` as published.
    pub address: Arc<str>,
    pub socket: SocketAddr,
    pub epoch: u64,
    pub kind: SuspectKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspectKind {
    /// A connect failed, or a pooled connection was found closed: cleared when a fresh TCP
    /// connect gets through.
    Unreachable,
    /// The node answered a write `400` with `StorageNode-NAD: true` / `Microstream-NAD: true` (not the distributor, nothing
    /// applied): cleared after a backoff, when the next write tries again.
    Refused,
}

/// Why a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The topology has no writer.
    NoWriter,
    /// A connect to this writer, at this epoch, failed; no new topology since and the recheck
    /// has not reached it either.
    Suspect,
    /// A planned switchover is under way (`topology.switchover` set): new writes wait so the old
    /// writer can drain. Only writes; reads served by the writer go on.
    Switchover,
    /// The writer refused a write as not the distributor; it gets another write after a backoff
    /// (it may be promoted meanwhile) or when the topology changes.
    Refused,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::NoWriter => "no_writer",
            HoldReason::Suspect => "writer_suspect",
            HoldReason::Switchover => "switchover",
            HoldReason::Refused => "writer_refused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Dial,
    Hold(HoldReason),
}

/// The hold decision for a request that needs the writer. `is_write`: a write (as opposed to a
/// read served by the writer, which a switchover does not hold).
///
/// A switchover holds writes whatever its `state`: while it is set the election has not yet
/// published the new writer, and a write sent to the old one now could land after it stopped
/// being the writer.
pub fn gate(topology: &TopologySnapshot, suspect: Option<&Suspect>, is_write: bool) -> Gate {
    if is_write && topology.switchover.is_some() {
        return Gate::Hold(HoldReason::Switchover);
    }
    let Some(writer) = &topology.writer else {
        return Gate::Hold(HoldReason::NoWriter);
    };
    match suspect {
        Some(s) if s.epoch == topology.epoch && *s.address == *writer.address => {
            Gate::Hold(match s.kind {
                SuspectKind::Unreachable => HoldReason::Suspect,
                SuspectKind::Refused => HoldReason::Refused,
            })
        }
        _ => Gate::Dial,
    }
}

/// Shared state of the hold (one per process, inside [`Shared`]).
pub struct WriteHold {
    suspect: watch::Sender<Option<Suspect>>,
    held: AtomicUsize,
    /// Writes admitted to the writer and not finished yet.
    writes_in_flight: AtomicUsize,
    /// Tasks waiting in [`WriteHold::writes_idle`]; the hot path only notifies when there are.
    idle_waiters: AtomicUsize,
    idle: Notify,
    /// Refusals in a row by one writer at one epoch (it, and the count), for the backoff of
    /// [`WriteHold::mark_refused`]. Touched only when a refusal is seen or a streak ends.
    refusals: std::sync::Mutex<Option<(Arc<str>, u64, u32)>>,
    /// Whether `refusals` holds a streak: lets the hot path skip the lock.
    refusal_streak: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// What [`admit`] decided.
pub enum Admission {
    /// Go to the writer of this view. `ticket` is `Some` for writes: keep it until the request
    /// is finished (it counts the write as in flight for the switchover drain).
    Dial {
        active: Arc<Active>,
        ticket: Option<WriteTicket>,
    },
    /// `failover.max_held_writes` writes are already waiting.
    Overflow,
    /// Nothing changed in time (`failover.hold_writes`).
    TimedOut(HoldReason),
    /// The client closed its connection while the request was held; nothing was sent.
    ClientGone,
}

impl WriteHold {
    pub fn new(metrics: Arc<Metrics>) -> WriteHold {
        WriteHold {
            suspect: watch::channel(None).0,
            held: AtomicUsize::new(0),
            writes_in_flight: AtomicUsize::new(0),
            idle_waiters: AtomicUsize::new(0),
            idle: Notify::new(),
            refusals: std::sync::Mutex::new(None),
            refusal_streak: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight.load(Ordering::SeqCst)
    }

    pub fn suspect(&self) -> Option<Suspect> {
        self.suspect.borrow().clone()
    }

    /// Talking to the writer failed (`why`): hold new writes to it without dialling until the
    /// topology changes or [`recheck`] gets through.
    pub fn mark_suspect(self: &Arc<Self>, suspect: Suspect, connect_timeout: Duration, why: &str) {
        let newly = self.set_suspect(&suspect);
        if newly {
            tracing::warn!(
                writer = %suspect.address, epoch = suspect.epoch, why,
                "the writer looks gone: holding writes until the topology changes or it accepts connections again"
            );
            tokio::spawn(recheck(self.clone(), suspect, connect_timeout));
        }
    }

    /// The writer answered a write `400` + a NAD header (`StorageNode-NAD` / `Microstream-NAD`:
    /// true): it is not the distributor (restarted, or not promoted yet) and applied nothing. Holds writes to it until the
    /// topology changes or a backoff passes, which grows while the refusals go on, so a node
    /// that stays unpromoted gets a few writes a second, not every held write at once.
    pub fn mark_refused(self: &Arc<Self>, suspect: Suspect) {
        let newly = self.set_suspect(&suspect);
        if !newly {
            // Another write released by the same backoff was refused too: one step, not many.
            return;
        }
        let delay = {
            let mut streak = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let n = match streak.as_mut() {
                Some((address, epoch, n))
                    if *address == suspect.address && *epoch == suspect.epoch =>
                {
                    *n = n.saturating_add(1);
                    *n
                }
                _ => {
                    *streak = Some((suspect.address.clone(), suspect.epoch, 0));
                    0
                }
            };
            self.refusal_streak.store(true, Ordering::Relaxed);
            refused_backoff(n)
        };
        tracing::warn!(
            writer = %suspect.address, epoch = suspect.epoch,
            retry_in_ms = delay.as_millis() as u64,
            "the writer refused a write as not the distributor (NAD): holding writes"
        );
        let hold = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            hold.clear_suspect(Some(&suspect));
        });
    }

    /// The writer took a write: a streak of refusals is over (the next one starts the backoff
    /// from the beginning). Cheap when there is none.
    pub fn writer_answered(&self) {
        if self.refusal_streak.load(Ordering::Relaxed) {
            self.refusal_streak.store(false, Ordering::Relaxed);
            *self.refusals.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Makes `suspect` the suspect; false if it already was. The gauge changes under the
    /// watch's lock, together with the value: set outside it, a clear by a topology change
    /// on another thread could land in between and leave the gauge at 1 with no suspect.
    fn set_suspect(&self, suspect: &Suspect) -> bool {
        self.suspect.send_if_modified(|cur| {
            if cur.as_ref() == Some(suspect) {
                return false;
            }
            *cur = Some(suspect.clone());
            self.metrics.writer_suspect.set(1);
            true
        })
    }

    /// Clears the suspect if it is still `which` (or any suspect, with `None`).
    fn clear_suspect(&self, which: Option<&Suspect>) -> bool {
        self.suspect.send_if_modified(|cur| {
            if cur.is_some() && (which.is_none() || cur.as_ref() == which) {
                *cur = None;
                self.metrics.writer_suspect.set(0);
                true
            } else {
                false
            }
        })
    }

    /// A new topology was swapped in: a suspect for another writer or epoch is moot.
    pub fn topology_changed(&self, topology: &TopologySnapshot) {
        let moot = self.suspect.borrow().as_ref().is_some_and(|s| {
            s.epoch != topology.epoch
                || topology
                    .writer
                    .as_ref()
                    .is_none_or(|w| *w.address != *s.address)
        });
        if moot {
            let current = self.suspect();
            self.clear_suspect(current.as_ref());
        }
    }

    /// Counts a write as in flight to the writer. Taken *before* the gate looks at the topology
    /// (see [`admit`]), so the switchover drain cannot miss a write that slipped through.
    fn begin_write(self: &Arc<Self>) -> WriteTicket {
        self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `writes_idle`: either the drain sees this write, or this
        // write sees the switchover and is held.
        fence(Ordering::SeqCst);
        WriteTicket(self.clone())
    }

    /// Returns once no admitted write is in flight (the switchover drain barrier). Call it only
    /// after the switchover topology was published: writes admitted later are held.
    pub async fn writes_idle(&self) {
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            fence(Ordering::SeqCst);
            if self.writes_in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        self.idle_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One write in flight to the writer (see [`WriteHold::begin_write`]).
pub struct WriteTicket(Arc<WriteHold>);

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let h = &self.0;
        if h.writes_in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && h.idle_waiters.load(Ordering::SeqCst) > 0
        {
            h.idle.notify_waiters();
        }
    }
}

/// Counts a held request for as long as it waits (also if its future is dropped).
struct Held<'a> {
    hold: &'a WriteHold,
    since: Instant,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.hold.held.fetch_sub(1, Ordering::Relaxed);
        self.hold.metrics.held_writes.dec();
        self.hold
            .metrics
            .write_hold_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// Whether the peer of a client connection has gone (FIN, reset), asked of the kernel without
/// reading: unread request body bytes do not hide a FIN from `POLLRDHUP`.
pub fn client_gone(fd: std::os::unix::io::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, zero timeout; `fd` is the open client socket of the
    // request being held (the request path keeps it open for the request's lifetime).
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Lets a request that needs the writer through, or holds it until it can go or its time is up.
///
/// `deadline` belongs to the request: set by its first hold (`now + failover.hold_writes`) and
/// kept across later ones, so a request is never held longer than `hold_writes` in total.
/// `client`: the client's socket, checked every [`CLIENT_CHECK_INTERVAL`] while held.
pub async fn admit(
    shared: &Shared,
    is_write: bool,
    deadline: &mut Option<Instant>,
    client: Option<std::os::unix::io::RawFd>,
) -> Admission {
    let hold = &shared.hold;
    // Subscribed before the first look, so no change between the look and the wait is missed.
    let mut topology_rx = shared.subscribe();
    let mut suspect_rx = hold.suspect.subscribe();
    let mut held: Option<Held<'_>> = None;
    // Made when the first hold starts: the common case (dial at once) allocates no timer.
    let mut client_check: Option<tokio::time::Interval> = None;
    loop {
        let ticket = is_write.then(|| hold.begin_write());
        topology_rx.borrow_and_update();
        let active = shared.load();
        let decision = gate(
            &active.topology,
            suspect_rx.borrow_and_update().as_ref(),
            is_write,
        );
        let reason = match decision {
            Gate::Dial => {
                if held.is_some() {
                    hold.metrics.write_holds_released.inc();
                }
                return Admission::Dial { active, ticket };
            }
            Gate::Hold(reason) => reason,
        };
        drop(ticket);

        if held.is_none() {
            let failover = active.settings.config.failover;
            let until = *deadline.get_or_insert_with(|| Instant::now() + failover.hold_writes);
            if Instant::now() >= until {
                hold.metrics.write_holds_timed_out.inc();
                return Admission::TimedOut(reason);
            }
            if hold.held.fetch_add(1, Ordering::Relaxed) >= failover.max_held_writes {
                hold.held.fetch_sub(1, Ordering::Relaxed);
                hold.metrics.write_holds_overflow.inc();
                return Admission::Overflow;
            }
            hold.metrics.held_writes.inc();
            held = Some(Held {
                hold,
                since: Instant::now(),
            });
            tracing::debug!(reason = reason.as_str(), "holding a request for the writer");
        }
        let until = deadline.unwrap_or_else(Instant::now);
        let check = client_check.get_or_insert_with(|| {
            let mut i = tokio::time::interval_at(
                Instant::now() + CLIENT_CHECK_INTERVAL,
                CLIENT_CHECK_INTERVAL,
            );
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let closed = tokio::select! {
            r = topology_rx.changed() => r.is_err(),
            r = suspect_rx.changed() => r.is_err(),
            _ = check.tick() => {
                if client.is_some_and(client_gone) {
                    hold.metrics.write_holds_abandoned.inc();
                    return Admission::ClientGone;
                }
                false
            }
            _ = tokio::time::sleep_until(until) => {
                // One last look: a change may have landed together with the deadline.
                let active = shared.load();
                if gate(&active.topology, hold.suspect.borrow().as_ref(), is_write) == Gate::Dial {
                    continue;
                }
                hold.metrics.write_holds_timed_out.inc();
                return Admission::TimedOut(reason);
            }
        };
        if closed {
            // Cannot happen while `shared` lives (it owns both senders); if it did, nothing
            // would wake us any more: wait out the deadline instead of spinning.
            tokio::time::sleep_until(until).await;
            hold.metrics.write_holds_timed_out.inc();
            return Admission::TimedOut(reason);
        }
    }
}

/// How long writes wait after refusal number `n` (from 0) in a row.
pub fn refused_backoff(n: u32) -> Duration {
    topology_client::backoff::doubled(REFUSED_RECHECK_FIRST, REFUSED_RECHECK_MAX, n)
}

/// Re-dials a suspect writer every [`RECHECK_INTERVAL`] until a TCP connect succeeds (then held
/// writes go to it again) or the suspect is cleared or replaced by a topology change.
async fn recheck(hold: Arc<WriteHold>, suspect: Suspect, connect_timeout: Duration) {
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if hold.suspect.borrow().as_ref() != Some(&suspect) {
            return;
        }
        let attempt = tokio::time::timeout(
            connect_timeout.min(Duration::from_secs(1)),
            tokio::net::TcpStream::connect(suspect.socket),
        )
        .await;
        if let Ok(Ok(_stream)) = attempt {
            if hold.clear_suspect(Some(&suspect)) {
                tracing::info!(
                    writer = %suspect.address, epoch = suspect.epoch,
                    "the writer accepts connections again; releasing held writes"
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::UpstreamStats;
    use crate::config::ProxyConfig;
    use crate::topology::{SwitchoverView, TopologySink, Upstream};
    use http::HeaderValue;
    use std::time::Instant as StdInstant;

    fn up(port: u16) -> Upstream {
        Upstream {
            name: format!("n{port}").into(),
            address: format!("127.0.0.1:{port}").into(),
            socket: ([127, 0, 0, 1], port).into(),
            stats: Arc::new(UpstreamStats::default()),
            progress: None,
        }
    }

    fn topo(epoch: u64, revision: u64, writer: Option<u16>) -> TopologySnapshot {
        TopologySnapshot {
            epoch,
            revision,
            writer: writer.map(up),
            readers: Vec::new(),
            switchover: None,
            replication: None,
            epoch_header: HeaderValue::from(epoch),
            received_at: Some(StdInstant::now()),
        }
    }

    fn suspect(port: u16, epoch: u64) -> Suspect {
        Suspect {
            address: format!("127.0.0.1:{port}").into(),
            socket: ([127, 0, 0, 1], port).into(),
            epoch,
            kind: SuspectKind::Unreachable,
        }
    }

    fn refused(port: u16, epoch: u64) -> Suspect {
        Suspect {
            kind: SuspectKind::Refused,
            ..suspect(port, epoch)
        }
    }

    fn switchover(t: &mut TopologySnapshot, state: &str) {
        t.switchover = Some(SwitchoverView {
            id: 1,
            state: state.into(),
            from: "n1".into(),
            to: "n2".into(),
        });
    }

    #[test]
    fn the_gate() {
        use HoldReason::*;
        let t = topo(3, 9, Some(1));
        assert_eq!(gate(&t, None, true), Gate::Dial);
        assert_eq!(gate(&topo(3, 9, None), None, true), Gate::Hold(NoWriter));
        assert_eq!(gate(&topo(3, 9, None), None, false), Gate::Hold(NoWriter));
        // Suspect: only for that writer at that epoch.
        assert_eq!(gate(&t, Some(&suspect(1, 3)), true), Gate::Hold(Suspect));
        assert_eq!(gate(&t, Some(&suspect(1, 3)), false), Gate::Hold(Suspect));
        assert_eq!(gate(&t, Some(&suspect(1, 2)), true), Gate::Dial);
        assert_eq!(gate(&t, Some(&suspect(2, 3)), true), Gate::Dial);
        // A refusal (not the distributor): the same scope, its own reason.
        assert_eq!(gate(&t, Some(&refused(1, 3)), true), Gate::Hold(Refused));
        assert_eq!(gate(&t, Some(&refused(1, 2)), true), Gate::Dial);
        assert_eq!(gate(&t, Some(&refused(2, 3)), true), Gate::Dial);
        // A switchover holds writes (in any state), not reads served by the writer.
        for state in ["draining", "promoting"] {
            let mut s = topo(3, 10, Some(1));
            switchover(&mut s, state);
            assert_eq!(gate(&s, None, true), Gate::Hold(Switchover));
            assert_eq!(gate(&s, None, false), Gate::Dial);
        }
    }

    fn shared(yaml: &str) -> Arc<Shared> {
        let cfg = ProxyConfig::from_yaml_str(yaml).unwrap();
        Shared::new(cfg, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn a_held_write_is_released_by_a_new_writer_not_by_a_reader_change() {
        let s = shared("failover: { hold_writes: 30s }");
        assert!(s.publish(topo(1, 1, None)));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut deadline = None;
                admit(&s, true, &mut deadline, None).await
            })
        };
        let held = async {
            while s.hold.held() == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("the write is held");
        assert_eq!(s.metrics.held_writes.get(), 1);
        // Same (no) writer, new revision: still held.
        assert!(s.publish(topo(1, 2, None)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(s.hold.held(), 1);
        assert!(!waiter.is_finished());
        assert!(s.publish(topo(2, 3, Some(7))));
        let a = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released in time")
            .unwrap();
        match a {
            Admission::Dial { active, ticket } => {
                assert_eq!(active.topology.epoch, 2);
                assert!(ticket.is_some());
                assert_eq!(s.hold.writes_in_flight(), 1);
                drop(ticket);
                assert_eq!(s.hold.writes_in_flight(), 0);
            }
            _ => panic!("not admitted"),
        }
        assert_eq!(s.hold.held(), 0);
        assert_eq!(s.metrics.held_writes.get(), 0);
        assert_eq!(s.metrics.write_holds_released.get(), 1);
        assert_eq!(s.metrics.write_hold_seconds.get_sample_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hold_ends_at_the_deadline_across_holds() {
        let s = shared("failover: { hold_writes: 2s }");
        assert!(s.publish(topo(1, 1, None)));
        let mut deadline = None;
        let t0 = tokio::time::Instant::now();
        match admit(&s, true, &mut deadline, None).await {
            Admission::TimedOut(HoldReason::NoWriter) => {}
            _ => panic!("expected a timeout"),
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        // The same request held again has no time left.
        let t1 = tokio::time::Instant::now();
        assert!(matches!(
            admit(&s, true, &mut deadline, None).await,
            Admission::TimedOut(_)
        ));
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(s.metrics.write_holds_timed_out.get(), 2);
        assert_eq!(s.hold.held(), 0);
        assert_eq!(s.hold.writes_in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_held_writes_is_refused_at_once() {
        let s = shared("failover: { hold_writes: 10s, max_held_writes: 2 }");
        assert!(s.publish(topo(1, 1, None)));
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let s = s.clone();
            waiters.push(tokio::spawn(async move {
                admit(&s, true, &mut None, None).await;
            }));
        }
        while s.hold.held() < 2 {
            tokio::task::yield_now().await;
        }
        let t0 = tokio::time::Instant::now();
        assert!(matches!(
            admit(&s, true, &mut None, None).await,
            Admission::Overflow
        ));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(s.metrics.write_holds_overflow.get(), 1);
        assert_eq!(s.hold.held(), 2);
        for w in waiters {
            w.abort();
            let _ = w.await;
        }
        // A dropped (cancelled) hold gives its place back.
        assert_eq!(s.hold.held(), 0);
        assert_eq!(s.metrics.held_writes.get(), 0);
    }

    #[tokio::test]
    async fn a_suspect_writer_holds_until_the_recheck_connects() {
        let s = shared("failover: { hold_writes: 30s }");
        // Reserve a port, then free it: connects are refused until we listen again.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(s.publish(topo(4, 1, Some(port))));
        s.hold
            .mark_suspect(suspect(port, 4), Duration::from_millis(200), "test");
        assert_eq!(s.metrics.writer_suspect.get(), 1);
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { admit(&s, true, &mut None, None).await })
        };
        // Several rechecks fail while nothing listens.
        tokio::time::sleep(RECHECK_INTERVAL * 3).await;
        assert!(!waiter.is_finished());
        assert_eq!(s.hold.held(), 1);
        let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let a = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released once the writer accepts connections")
            .unwrap();
        assert!(matches!(a, Admission::Dial { .. }));
        assert!(s.hold.suspect().is_none());
        assert_eq!(s.metrics.writer_suspect.get(), 0);
    }

    #[tokio::test]
    async fn a_held_request_whose_client_left_is_dropped() {
        use std::os::unix::io::AsRawFd;
        let s = shared("failover: { hold_writes: 30s }");
        assert!(s.publish(topo(1, 1, None)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        // Unread request bytes must not hide the client's FIN.
        std::io::Write::write_all(&mut client, b"PUT /x HTTP/1.1\r\n").unwrap();
        assert!(!client_gone(ours.as_raw_fd()));
        let fd = ours.as_raw_fd();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { admit(&s, true, &mut None, Some(fd)).await })
        };
        while s.hold.held() == 0 {
            tokio::task::yield_now().await;
        }
        drop(client);
        let a = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("noticed the client left")
            .unwrap();
        assert!(matches!(a, Admission::ClientGone));
        assert_eq!(s.hold.held(), 0);
        assert_eq!(s.metrics.write_holds_abandoned.get(), 1);
        drop(ours);
    }

    #[test]
    fn the_refusal_backoff_doubles_up_to_its_cap() {
        let ms = |n| refused_backoff(n).as_millis();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 40].map(ms),
            [50, 100, 200, 400, 800, 1000, 1000, 1000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_writer_gets_the_held_write_again_after_a_growing_backoff() {
        let s = shared("failover: { hold_writes: 30s }");
        assert!(s.publish(topo(4, 1, Some(1))));
        let admitted_after = |s: Arc<Shared>| async move {
            let t0 = Instant::now();
            match admit(&s, true, &mut None, None).await {
                Admission::Dial { .. } => t0.elapsed(),
                _ => panic!("not admitted"),
            }
        };
        s.hold.mark_refused(refused(1, 4));
        assert_eq!(s.metrics.writer_suspect.get(), 1);
        assert_eq!(
            gate(&s.topology(), s.hold.suspect().as_ref(), true),
            Gate::Hold(HoldReason::Refused)
        );
        assert_eq!(admitted_after(s.clone()).await, REFUSED_RECHECK_FIRST);
        assert!(s.hold.suspect().is_none());
        assert_eq!(s.metrics.writer_suspect.get(), 0);
        // Refused again: twice as long. Several writes refused by one release count once.
        s.hold.mark_refused(refused(1, 4));
        s.hold.mark_refused(refused(1, 4));
        assert_eq!(admitted_after(s.clone()).await, REFUSED_RECHECK_FIRST * 2);
        // The writer took a write: the next refusal starts from the beginning.
        s.hold.writer_answered();
        s.hold.mark_refused(refused(1, 4));
        assert_eq!(admitted_after(s.clone()).await, REFUSED_RECHECK_FIRST);
        // A new topology ends the hold at once.
        s.hold.mark_refused(refused(1, 4));
        let waiter = tokio::spawn(admitted_after(s.clone()));
        while s.hold.held() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(s.publish(topo(5, 2, Some(2))));
        assert_eq!(waiter.await.unwrap(), Duration::ZERO);
        assert!(s.hold.suspect().is_none());
    }

    #[tokio::test]
    async fn a_new_epoch_clears_the_suspect() {
        let s = shared("");
        assert!(s.publish(topo(4, 1, Some(1))));
        s.hold
            .mark_suspect(suspect(1, 4), Duration::from_millis(100), "test");
        assert!(matches!(
            gate(&s.topology(), s.hold.suspect().as_ref(), true),
            Gate::Hold(HoldReason::Suspect)
        ));
        // A reader change keeps it.
        assert!(s.publish(topo(4, 2, Some(1))));
        assert!(s.hold.suspect().is_some());
        // The same node re-elected with a new epoch: dial it again.
        assert!(s.publish(topo(5, 3, Some(1))));
        assert!(s.hold.suspect().is_none());
        assert_eq!(gate(&s.topology(), None, true), Gate::Dial);
    }

    #[tokio::test]
    async fn the_drain_waits_for_writes_in_flight_and_holds_new_ones() {
        let s = shared("failover: { hold_writes: 30s }");
        assert!(s.publish(topo(1, 1, Some(1))));
        let Admission::Dial {
            ticket: Some(in_flight),
            ..
        } = admit(&s, true, &mut None, None).await
        else {
            panic!("admitted")
        };
        // Reads served by the writer carry no ticket.
        let Admission::Dial { ticket: None, .. } = admit(&s, false, &mut None, None).await else {
            panic!("admitted")
        };
        let mut t = topo(1, 2, Some(1));
        switchover(&mut t, "draining");
        assert!(s.publish(t));
        let drained = {
            let s = s.clone();
            tokio::spawn(async move { s.hold.writes_idle().await })
        };
        let new_write = {
            let s = s.clone();
            tokio::spawn(async move { admit(&s, true, &mut None, None).await })
        };
        while s.hold.held() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "a write is still in flight");
        drop(in_flight);
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("drained once the write finished")
            .unwrap();
        assert_eq!(s.hold.held(), 1, "the new write is still held");
        // The election promotes: new writer, next epoch, no switchover.
        assert!(s.publish(topo(2, 3, Some(2))));
        match tokio::time::timeout(Duration::from_secs(10), new_write)
            .await
            .expect("released")
            .unwrap()
        {
            Admission::Dial { active, .. } => {
                assert_eq!(active.topology.epoch, 2);
                assert_eq!(&*active.topology.writer.as_ref().unwrap().name, "n2");
            }
            _ => panic!("not admitted"),
        }
    }
}
