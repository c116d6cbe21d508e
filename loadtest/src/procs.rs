//! Child processes of the demo, the failover scenario, the comparison and the tests.
//!
//! All children of a [`Group`] share one process group, so a stop reaches every one of them
//! (and anything they fork) with one `killpg`. Each child also gets `PR_SET_PDEATHSIG`, so
//! that even a `kill -9` of loadtest itself leaves no process behind.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

pub use libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM};
pub use test_kit::ports::local;

pub struct Managed {
    pub name: String,
    pub child: Child,
    exited: Option<ExitStatus>,
}

impl Managed {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

#[derive(Default)]
pub struct Group {
    pgid: Option<i32>,
    children: Vec<Managed>,
}

/// Sends `sig` to one process.
pub fn signal_pid(pid: u32, sig: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory effects; pid comes from a Child we spawned.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(anyhow!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: as above. ESRCH (group gone) is fine.
    unsafe {
        libc::killpg(pgid as libc::pid_t, sig);
    }
}

/// Makes `cmd` die with its parent. Must be called on a thread that outlives the child (the
/// death signal follows the thread that forked): the main thread or a runtime worker.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl and getppid are async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent already gone"));
            }
            Ok(())
        });
    }
}

impl Group {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> anyhow::Result<u32> {
        // The first child founds the group; the others join it. If the founder has exited,
        // the group lives on as long as any member does.
        cmd.process_group(self.pgid.unwrap_or(0));
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        if self.pgid.is_none() {
            self.pgid = Some(pid as i32);
        }
        tracing::debug!(name, pid, "started");
        self.children.push(Managed {
            name: name.to_owned(),
            child,
            exited: None,
        });
        Ok(pid)
    }

    pub fn get(&self, name: &str) -> Option<&Managed> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn signal(&self, name: &str, sig: i32) -> anyhow::Result<()> {
        let c = self
            .get(name)
            .ok_or_else(|| anyhow!("no child named {name}"))?;
        signal_pid(c.pid(), sig)
    }

    /// SIGTERM to one child, SIGKILL after `grace`, and waits for it.
    pub fn stop_one(&mut self, name: &str, grace: Duration) {
        let Some(c) = self.children.iter_mut().find(|c| c.name == name) else {
            return;
        };
        if c.exited.is_some() {
            return;
        }
        let _ = signal_pid(c.pid(), libc::SIGCONT);
        let _ = signal_pid(c.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.child.try_wait() {
                c.exited = Some(st);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.child.kill();
        if let Ok(st) = c.child.wait() {
            c.exited = Some(st);
        }
    }

    /// Drops the record of an exited child, so that a new one may take its name.
    pub fn forget(&mut self, name: &str) {
        self.children
            .retain(|c| !(c.name == name && c.exited.is_some()));
    }

    /// Reaps children that have exited and returns their names and statuses (once each).
    pub fn reap(&mut self) -> Vec<(String, ExitStatus)> {
        let mut out = Vec::new();
        for c in &mut self.children {
            if c.exited.is_none() {
                if let Ok(Some(st)) = c.child.try_wait() {
                    c.exited = Some(st);
                    out.push((c.name.clone(), st));
                }
            }
        }
        out
    }

    /// SIGTERM to the whole group, up to `grace` for everyone to exit, then SIGKILL; waits for
    /// every child, so nothing is left behind (no zombie, no listening port).
    pub fn shutdown(&mut self, grace: Duration) {
        let Some(pgid) = self.pgid else { return };
        // A stopped process cannot act on SIGTERM: resume it first.
        signal_group(pgid, libc::SIGCONT);
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            self.reap();
            if self.children.iter().all(|c| c.exited.is_some()) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(pgid, libc::SIGKILL);
        for c in &mut self.children {
            if c.exited.is_none() {
                if let Ok(st) = c.child.wait() {
                    c.exited = Some(st);
                }
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Orderly stops call shutdown() first; this is the panic / early-return path.
        if self.children.iter().any(|c| c.exited.is_none()) {
            self.shutdown(Duration::ZERO);
        }
    }
}

/// A port free right now on 127.0.0.1, for children whose port must be known up front: from
/// test-kit's allocator (below the ephemeral range, a block per process, never the same port twice
/// in one process; the reasons are with [`test_kit::ports`]).
pub fn free_port() -> anyhow::Result<u16> {
    test_kit::ports::free_port().context("finding a free port on 127.0.0.1")
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
