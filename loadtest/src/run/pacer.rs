//! Precise wake-ups for the open-loop schedule.
//!
//! Tokio's timer wheel has 1 ms resolution and rounds deadlines up, so `sleep_until(t)` wakes
//! anywhere up to ~2 ms after `t`; in open loop that lateness lands in every request's latency.
//! One dedicated thread serves the deadlines of all workers instead: it sleeps in the kernel
//! (high-resolution timers, with this thread's timer slack lowered) until shortly before the
//! earliest deadline, then yields the CPU in a loop until the deadline passes and wakes the task.
//!
//! Handing the wake-up to a tokio worker thread takes tens of µs more (unpark, reschedule).
//! The thread fires that much early ([`Inner::lead_us`], tracking the median hand-off as the
//! woken tasks measure it) and the task yields until its deadline, so the median send is on
//! time instead of one hand-off late. A task never proceeds before its deadline.
//!
//! How far ahead of a deadline the kernel sleep ends (the margin) adapts to how late the kernel
//! actually woke the thread, within [`MIN_MARGIN`]..[`MAX_MARGIN`]. The yield loop therefore
//! costs about one margin of CPU per wake-up (a few % of a core at a few hundred req/s), not a
//! core, and `sched_yield` hands the CPU to any other runnable thread (the server under test on
//! a small machine) while it waits.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Never wake the kernel sleep closer than this to a deadline: below it, a wake-up that is a
/// little late would already be late for the deadline.
const MIN_MARGIN: Duration = Duration::from_micros(30);
/// Never yield-loop longer than this per deadline: with a kernel that late (a badly overloaded
/// machine) burning more CPU would make things worse, not more precise.
const MAX_MARGIN: Duration = Duration::from_millis(1);
/// Until measured: a typical VM wakes a sleeping thread well within this.
const INITIAL_MARGIN: Duration = Duration::from_micros(200);
/// Added to the worst recent oversleep, for the next one being a little worse.
const SAFETY: Duration = Duration::from_micros(20);
/// Cap on firing early: a task yields at most this long for its deadline, whatever the
/// measured hand-off (a machine that slow needs CPU, not spinning tasks).
const MAX_LEAD_US: u64 = 100;

struct Entry {
    due: Instant,
    /// Ties on `due` fire in registration order.
    seq: u64,
    /// Carries the moment the thread fired, for the hand-off measurement.
    tx: oneshot::Sender<Instant>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    shutdown: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    cv: Condvar,
    /// How early (µs) the thread fires: the median time from firing to the task running.
    lead_us: AtomicU64,
}

impl Inner {
    /// The state stays consistent whatever panicked while holding the lock (every update is a
    /// single heap operation), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The timer thread; stops (and is joined) when dropped.
pub struct Pacer {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    pub fn start() -> std::io::Result<Pacer> {
        let inner = Arc::new(Inner::default());
        let thread = std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn({
                let inner = inner.clone();
                move || run(&inner)
            })?;
        Ok(Pacer {
            inner,
            thread: Some(thread),
        })
    }

    /// Returns at `due` or just after (tens of µs on an idle machine), at once when `due` has
    /// passed. Never before `due`.
    pub async fn sleep_until(&self, due: Instant) {
        if due <= Instant::now() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.lock();
            st.seq += 1;
            let seq = st.seq;
            let earliest = st.heap.peek().is_none_or(|Reverse(e)| due < e.due);
            st.heap.push(Reverse(Entry { due, seq, tx }));
            if earliest {
                // The thread may be asleep until a later deadline.
                self.inner.cv.notify_one();
            }
        }
        // Err: the pacer is shutting down; the caller goes ahead, which is all it can do.
        if let Ok(fired) = rx.await {
            let handoff = micros_since(fired);
            // One µs step towards each sample: converges on the median hand-off, and one slow
            // hand-off (a descheduled thread) moves it by 1 µs only.
            let _ = self.inner.lead_us.fetch_update(
                AtomicOrdering::Relaxed,
                AtomicOrdering::Relaxed,
                |l| {
                    Some(if handoff > l {
                        (l + 1).min(MAX_LEAD_US)
                    } else {
                        l.saturating_sub(1)
                    })
                },
            );
        }
        while Instant::now() < due {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.inner.lock().shutdown = true;
        self.inner.cv.notify_one();
        if let Some(t) = self.thread.take() {
            // Returns within one margin (≤ MAX_MARGIN): the thread checks the flag on every turn.
            let _ = t.join();
        }
    }
}

/// Next margin after the kernel woke us `oversleep` past the requested time: up at once to cover
/// the worst recent wake-up, down slowly (1/64 per sleep) once the machine calms down.
fn adapt(margin: Duration, oversleep: Duration) -> Duration {
    let decayed = margin.saturating_sub(margin / 64);
    decayed
        .max(oversleep + SAFETY)
        .clamp(MIN_MARGIN, MAX_MARGIN)
}

fn micros_since(t: Instant) -> u64 {
    Instant::now().saturating_duration_since(t).as_micros() as u64
}

fn lower_timer_slack() {
    // The default slack (50 µs) lets the kernel defer our wake-up to batch it with others; 1 ns
    // asks for the deadline as is. Only this thread is affected. Failing is harmless (the margin
    // adapts to the slack), so the result is ignored.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn run(inner: &Inner) {
    lower_timer_slack();
    let mut margin = INITIAL_MARGIN;
    let mut st = inner.lock();
    loop {
        if st.shutdown {
            // Dropping the senders releases any waiter.
            st.heap.clear();
            return;
        }
        let Some(Reverse(first)) = st.heap.peek() else {
            st = inner.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let lead = Duration::from_micros(inner.lead_us.load(AtomicOrdering::Relaxed));
        let due = first.due.checked_sub(lead).unwrap_or(first.due);
        let now = Instant::now();
        if due > now + margin {
            let target = due - margin;
            st = inner
                .cv
                .wait_timeout(st, target - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            let woke = Instant::now();
            // Woken before `target`: a notify (an earlier deadline came in), which says nothing
            // about how late the kernel is.
            if woke >= target {
                margin = adapt(margin, woke - target);
            }
            continue;
        }
        let Some(Reverse(entry)) = st.heap.pop() else {
            continue;
        };
        drop(st);
        let fire_at = entry.due.checked_sub(lead).unwrap_or(entry.due);
        while Instant::now() < fire_at {
            std::thread::yield_now();
        }
        // Err: the worker gave up waiting (its task was dropped); nothing to wake.
        let _ = entry.tx.send(Instant::now());
        st = inner.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_follows_the_worst_oversleep_and_stays_bounded() {
        let m = adapt(INITIAL_MARGIN, Duration::from_micros(500));
        assert_eq!(m, Duration::from_micros(520));
        // Decays slowly, never below what the last sleep needed.
        let m2 = adapt(m, Duration::from_micros(10));
        assert!(m2 < m && m2 > Duration::from_micros(500), "{m2:?}");
        assert_eq!(adapt(m, Duration::from_secs(1)), MAX_MARGIN);
        let mut m = MAX_MARGIN;
        for _ in 0..10_000 {
            m = adapt(m, Duration::ZERO);
        }
        assert_eq!(m, MIN_MARGIN);
    }

    #[tokio::test]
    async fn wakes_never_early_in_deadline_order_and_past_deadlines_at_once() {
        let pacer = Arc::new(Pacer::start().unwrap());
        let start = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Registered out of order on purpose.
        for ms in [30u64, 10, 20] {
            let pacer = pacer.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let due = start + Duration::from_millis(ms);
                pacer.sleep_until(due).await;
                assert!(Instant::now() >= due, "woke before its deadline");
                order.lock().unwrap().push(ms);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![10, 20, 30]);
        // Already due: no wait, no registration.
        pacer.sleep_until(start).await;
        assert!(pacer.inner.lock().heap.is_empty());
    }
}
