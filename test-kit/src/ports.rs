//! Ports for child processes whose port must be known before they start.
//!
//! A port the kernel picks for `bind(0)` comes from the ephemeral range, and so does the source
//! port of every outgoing connection: between the moment such a port is found free and the moment
//! a child binds it, any connection of a test running beside this one can take it (seen as
//! "Address already in use" at a child's start-up). So the ports handed out here come from below
//! that range, and each one is reserved for the life of the process that took it: an exclusive
//! lock on `<temp dir>/test-kit-ports/<port>.lock`, which the kernel drops when the process ends.
//! A process never hands out a port another live process holds, nor one twice itself. Each
//! process starts looking in a block of its own, so the locks are rarely contended.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Ports [`free_port`] hands out: below the kernel's ephemeral range (Linux's default starts at
/// 32768).
pub const PORTS: std::ops::Range<u16> = 20_000..32_000;
/// Ports of one process's block (see [`port_candidate`]).
const BLOCK: u32 = 24;

/// The `n`th port to try for process `pid`: each process starts in its own block of [`PORTS`], so
/// test processes running side by side do not hand out the same ports, and goes on through the
/// range from there.
fn port_candidate(pid: u32, n: u32) -> u16 {
    let span = u32::from(PORTS.end - PORTS.start);
    let start = (pid % (span / BLOCK)) * BLOCK;
    // The remainder is below `span`, which fits in u16.
    PORTS.start + ((start + n) % span) as u16
}

/// The locks of the ports this process handed out, held until it ends.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The lock of `port`, if no other holder has it.
fn reserve(port: u16) -> std::io::Result<Option<File>> {
    let dir = std::env::temp_dir().join("test-kit-ports");
    std::fs::create_dir_all(&dir)?;
    let file = File::create(dir.join(format!("{port}.lock")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// A port free right now on 127.0.0.1 and reserved for this process, for a child process to
/// bind. Never one another live process took from here, never the same port twice.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let span = u32::from(PORTS.end - PORTS.start);
    for _ in 0..span {
        let port = port_candidate(pid, NEXT.fetch_add(1, Ordering::Relaxed));
        let Some(lock) = reserve(port)? else {
            continue;
        };
        if TcpListener::bind(local(port)).is_ok() {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!(
            "no free port left in {}..{} on 127.0.0.1",
            PORTS.start, PORTS.end
        ),
    ))
}

/// [`free_port`] as an address on 127.0.0.1.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    free_port().map(local)
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_stay_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| PORTS.contains(p)), "{ports:?}");
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_addr().unwrap();
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn a_handed_out_port_stays_reserved_against_other_holders() {
        let port = free_port().unwrap();
        // Another process (here: another open file) cannot take its lock while this one lives.
        assert!(reserve(port).unwrap().is_none(), "port {port} not reserved");
    }

    #[test]
    fn processes_start_in_blocks_of_their_own() {
        let a: Vec<u16> = (0..BLOCK).map(|n| port_candidate(1000, n)).collect();
        let b: Vec<u16> = (0..BLOCK).map(|n| port_candidate(1001, n)).collect();
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} {b:?}");
        assert!((0..30_000).all(|n| PORTS.contains(&port_candidate(4_000_000, n))));
    }
}
