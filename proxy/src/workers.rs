//! The worker model, as nginx and Envoy have it: `threads` workers, each a single-threaded
//! event loop on its own OS thread with its own listening socket on `listen` (SO_REUSEPORT: the
//! kernel spreads new connections over them), its own upstream connection pool, and every task
//! of a connection on that worker. Nothing on the request path wakes another thread; what the
//! workers share is read-mostly (the topology snapshot) or counted per worker here and summed
//! when read ([`Sharded`]).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};

/// Counter slots of a [`Sharded`]. Workers past this many share slots (still exact, only no
/// longer free of contention).
pub const SHARDS: usize = 64;

thread_local! {
    /// This thread's worker number; 0 on threads that are not workers (admin, control, tests).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index` (called once, first thing on the worker).
pub fn enter(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The worker the current thread is (0 outside the workers).
pub fn current() -> usize {
    WORKER.with(|w| w.get())
}

/// Binds one listening socket per worker on `addr`, all with SO_REUSEPORT.
///
/// SO_REUSEPORT would also let a second proxy (same user) bind the same port without an error
/// and silently take half of the connections, so the address is first bound once without it:
/// if anything holds it, that fails with a clear error at startup, as it did before there were
/// several sockets.
pub fn bind(
    addr: SocketAddr,
    workers: usize,
    backlog: i32,
) -> io::Result<Vec<std::net::TcpListener>> {
    drop(new_socket(addr, false)?);
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(workers.max(1));
    for _ in 0..workers.max(1) {
        // Port 0 (any free port) is resolved by the first socket; the others must share it.
        let at = listeners
            .first()
            .map(|l| l.local_addr())
            .transpose()?
            .unwrap_or(addr);
        let socket = new_socket(at, true)?;
        socket.listen(backlog)?;
        socket.set_nonblocking(true)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// One slot on its own cache line, so two workers counting never touch the same line.
#[repr(align(128))]
struct Slot(AtomicI64);

/// A counter (or up-down gauge) that each worker changes in its own slot; reading sums the
/// slots. For the counts every request touches, where one shared atomic would bounce its cache
/// line between the cores on every request.
pub struct Sharded {
    slots: [Slot; SHARDS],
}

impl Sharded {
    pub const fn new() -> Self {
        Sharded {
            slots: [const { Slot(AtomicI64::new(0)) }; SHARDS],
        }
    }

    fn slot(&self) -> &AtomicI64 {
        &self.slots[current() % SHARDS].0
    }

    pub fn add(&self, n: i64) {
        self.slot().fetch_add(n, Ordering::Relaxed);
    }

    /// Decrements with release ordering: a reader that [`Sharded::sum`]s to zero sees
    /// everything the finished work did.
    pub fn sub(&self, n: i64) {
        self.slot().fetch_sub(n, Ordering::Release);
    }

    /// The total over all workers. Slots are read one after the other, so while workers are
    /// counting the total is of a moment within the read, not of one instant.
    pub fn sum(&self) -> i64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Acquire)).sum()
    }
}

impl Default for Sharded {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counts_sum_over_workers_and_slots_are_per_worker() {
        static C: Sharded = Sharded::new();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    enter(i);
                    for _ in 0..1000 {
                        C.add(2);
                        C.sub(1);
                    }
                    assert_eq!(current(), i);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(C.sum(), 8000);
        // Each worker wrote its own slot only.
        for i in 0..8 {
            assert_eq!(C.slots[i].0.load(Ordering::Relaxed), 1000);
        }
        // A worker's decrement may land in another slot than the increment (a value moved
        // between workers): the sum stays exact.
        enter(9);
        C.sub(8000);
        assert_eq!(C.sum(), 0);
    }

    #[test]
    fn each_worker_gets_a_socket_and_a_taken_address_is_an_error() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let addr = first[0].local_addr().unwrap();
        drop(first);
        let socks = bind(addr, 3, 16).unwrap();
        assert_eq!(socks.len(), 3);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        // Any free port: every worker on the same one.
        let any = bind("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let port = any[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(any.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Held by our own reuse-port sockets or by anyone else: refused, not shared.
        let e = bind(addr, 2, 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind(plain.local_addr().unwrap(), 2, 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
