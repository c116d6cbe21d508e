//! Each worker's idle upstream connections, by node address.
//!
//! A worker is one thread with its own event loop (workers.rs), so its pool is a plain
//! thread-local map: taking and returning a connection is a lookup and a push, with no lock,
//! no task per connection and no allocation. One sweeper task per worker closes connections
//! that outlived `timeouts.idle_upstream` or that the node closed while they sat idle.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept by one worker, over all nodes.
pub const MAX_IDLE_PER_WORKER: usize = 1024;

/// How often a worker's sweeper looks at its idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Bytes read from a node at a time; the answer's head must fit (more is a 502).
pub const READ_BUFFER: usize = 16 * 1024;

/// A connection to a node, with the buffers it reads and writes through: they live as long as
/// the connection, so a request that reuses it allocates none.
pub struct Upstream {
    pub tcp: TcpStream,
    pub read: BytesMut,
    pub write: Vec<u8>,
}

impl Upstream {
    pub fn new(tcp: TcpStream) -> Upstream {
        Upstream {
            tcp,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: Vec::with_capacity(4096),
        }
    }
}

struct Idle {
    conn: Upstream,
    until: Instant,
}

#[derive(Default)]
struct Pool {
    by_node: HashMap<SocketAddr, Vec<Idle>>,
    count: usize,
    sweeping: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The most recently returned idle connection to `node` that has not expired, if any.
/// `alive`: also ask the kernel whether the node closed it meanwhile ([`peer_closed`]); when it
/// did, the node's other idle connections most likely went with it (it restarted, or is gone),
/// so they are all closed.
pub fn take(node: SocketAddr, alive: bool) -> Option<Upstream> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let now = Instant::now();
        let list = p.by_node.get_mut(&node)?;
        let mut taken = None;
        let mut dropped = 0;
        while let Some(idle) = list.pop() {
            dropped += 1;
            if idle.until <= now {
                continue;
            }
            if alive && peer_closed(idle.conn.tcp.as_raw_fd()) {
                dropped += list.len();
                list.clear();
                break;
            }
            taken = Some(idle.conn);
            break;
        }
        p.count -= dropped;
        taken
    })
}

/// Closes every idle connection to `node`.
pub fn forget(node: SocketAddr) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(list) = p.by_node.remove(&node) {
            p.count -= list.len();
        }
    })
}

/// Keeps `conn` for reuse until `idle_for` from now, if there is room.
pub fn put(node: SocketAddr, mut conn: Upstream, idle_for: Duration) {
    conn.read.clear();
    conn.write.clear();
    let start_sweeper = POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.count >= MAX_IDLE_PER_WORKER {
            return false;
        }
        p.count += 1;
        p.by_node.entry(node).or_default().push(Idle {
            conn,
            until: Instant::now() + idle_for,
        });
        !std::mem::replace(&mut p.sweeping, true)
    });
    if start_sweeper {
        tokio::spawn(sweep());
    }
}

/// Idle connections this worker holds.
pub fn idle_count() -> usize {
    POOL.with(|p| p.borrow().count)
}

/// Runs while the worker holds idle connections.
async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let more = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let now = Instant::now();
            let mut removed = 0;
            p.by_node.retain(|_, list| {
                let before = list.len();
                list.retain(|idle| idle.until > now && !peer_closed(idle.conn.tcp.as_raw_fd()));
                removed += before - list.len();
                !list.is_empty()
            });
            p.count -= removed;
            if p.count == 0 {
                p.sweeping = false;
            }
            p.count > 0
        });
        if !more {
            return;
        }
    }
}

/// Whether the peer already closed (or reset) this idle connection, or sent bytes nobody asked
/// for, asking the kernel directly: tokio's readiness cache can lag behind a FIN that already
/// arrived (a node killed a moment ago), and a write sent on such a connection fails after it
/// was sent and must not be replayed.
pub fn peer_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller; a one-byte MSG_PEEK | MSG_DONTWAIT
    // recv into a local neither blocks, consumes data, nor touches the descriptor's lifetime.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        // Nothing to read: open and idle, as it should be.
        -1 => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
        // 0: FIN. > 0: bytes on an idle connection.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_by_the_peer_is_noticed_without_tokio() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(!peer_closed(client.as_raw_fd()), "open and idle");
        // Unasked-for bytes on an idle connection: not reusable either.
        server.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !peer_closed(client.as_raw_fd()) {
            assert!(std::time::Instant::now() < deadline, "data not seen");
            std::thread::sleep(Duration::from_millis(5));
        }
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!peer_closed(client.as_raw_fd()));
        drop(server);
        while !peer_closed(client.as_raw_fd()) {
            assert!(std::time::Instant::now() < deadline, "FIN not seen");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The peek consumed nothing and closed nothing: the socket is still ours.
        assert!(client.peer_addr().is_ok());
    }

    async fn connected(listener: &tokio::net::TcpListener) -> (Upstream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Upstream::new(c.unwrap()), s.unwrap().0)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_newest_connection_is_reused_and_expired_ones_are_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = listener.local_addr().unwrap();
        let (a, _sa) = connected(&listener).await;
        let (b, _sb) = connected(&listener).await;
        let b_port = b.tcp.local_addr().unwrap().port();
        put(node, a, Duration::from_secs(5));
        put(node, b, Duration::from_secs(60));
        assert_eq!(idle_count(), 2);
        let got = take(node, false).expect("one is idle");
        assert_eq!(got.tcp.local_addr().unwrap().port(), b_port, "newest first");
        put(node, got, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(10)).await;
        // `a` expired; `b` is still good.
        let got = take(node, false).expect("b is idle");
        assert_eq!(got.tcp.local_addr().unwrap().port(), b_port);
        assert!(
            take(node, false).is_none(),
            "the expired one is not handed out"
        );
        assert_eq!(idle_count(), 0);
        let (c, _sc) = connected(&listener).await;
        put(node, c, Duration::from_secs(60));
        forget(node);
        assert_eq!(idle_count(), 0);
        assert!(take(node, false).is_none());
        assert!(take("127.0.0.1:1".parse().unwrap(), false).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_sweeper_closes_connections_the_node_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = listener.local_addr().unwrap();
        let (a, sa) = connected(&listener).await;
        put(node, a, Duration::from_secs(600));
        drop(sa);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while idle_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(take(node, false).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_live_connection_is_asked_for_and_a_closed_one_takes_the_others_with_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = listener.local_addr().unwrap();
        let (a, _sa) = connected(&listener).await;
        let (b, sb) = connected(&listener).await;
        put(node, a, Duration::from_secs(600));
        put(node, b, Duration::from_secs(600));
        drop(sb);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !POOL.with(|p| {
            p.borrow().by_node[&node]
                .last()
                .is_some_and(|i| peer_closed(i.conn.tcp.as_raw_fd()))
        }) {
            assert!(std::time::Instant::now() < deadline, "FIN not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            take(node, true).is_none(),
            "a closed connection was handed out"
        );
        assert_eq!(idle_count(), 0, "the node's other idle connections stayed");
    }
}
