//! The namespaces, links and fault rules of a test lab, with nothing but std, tokio and tracing:
//! writer-election's own network-fault test includes this file as it is (it cannot depend on
//! loadtest, which depends on it), so both crates build their hosts the same way.
//!
//! Every link, address and rule lives in a namespace the [`Lab`] created, and [`Lab`]'s Drop
//! deletes them all (a deleted namespace takes its veth ends and its nftables tables with it).
//! Namespaces are named `ltn-<pid>-<host>`; [`cleanup_leftovers`] deletes those whose process is
//! gone (a run that was killed with SIGKILL), never those of a live run, so parallel tests keep
//! their own.

use std::future::Future;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

pub const PREFIX: &str = "ltn-";
/// Every lab uses the same subnet: labs are separate bridges that never meet.
const SUBNET: [u8; 3] = [10, 213, 0];
/// The device every host namespace reaches the bridge through.
pub const DEV: &str = "eth0";
const TABLE: &str = "ltfault";
const CLONE_NEWNET: i32 = 0x4000_0000;

// The C library std links anyway; declared here so that neither crate needs `libc` for two calls.
extern "C" {
    fn geteuid() -> u32;
    fn setns(fd: i32, nstype: i32) -> i32;
}

fn fail(what: String) -> io::Error {
    io::Error::other(what)
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("running {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> io::Result<String> {
    run(Command::new("ip").args(args))
}

/// Why namespaces cannot be used here, or Ok: root, `ip netns` works, and `nft` is installed.
/// Creates and deletes a probe namespace.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Err("not running as root: network namespaces need CAP_SYS_ADMIN".into());
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| format!("`ip netns add` does not work: {e}"))?;
    let nft = run(Command::new("ip").args(["netns", "exec", &probe, "nft", "list", "tables"]));
    let _ = ip(&["netns", "del", &probe]);
    nft.map(drop)
        .map_err(|e| format!("nftables is not usable inside a namespace: {e}"))
}

/// Deletes `ltn-<pid>-*` namespaces whose process no longer exists.
pub fn cleanup_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(
                namespace = name,
                "deleting a namespace left by a run that is gone"
            );
            let _ = ip(&["netns", "del", name]);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Host {
    /// Logical name (`node-1`, `election`, `proxy`, `client` ...).
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one run. Dropping it deletes them all.
#[derive(Debug)]
pub struct Lab {
    bridge: String,
    hosts: Vec<Host>,
}

/// Distinct labs of one process (tests in one binary) need distinct names; the clock part keeps
/// a later process that got the same pid off a leftover that was not cleaned up yet.
fn lab_tag() -> String {
    static LABS: AtomicU32 = AtomicU32::new(0);
    let n = LABS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:04x}",
        std::process::id(),
        (nanos >> 8) as u16 ^ n as u16
    )
}

impl Lab {
    /// One namespace per host name, all on one bridge, addresses 10.213.0.1, .2, ... in order.
    pub fn new(names: &[&str]) -> io::Result<Lab> {
        if names.len() > 250 {
            return Err(fail("at most 250 hosts on one bridge".into()));
        }
        cleanup_leftovers();
        let tag = lab_tag();
        let mut lab = Lab {
            bridge: format!("{PREFIX}{tag}-br"),
            hosts: Vec::new(),
        };
        // From here on Drop deletes whatever was created, if a step fails.
        ip(&["netns", "add", &lab.bridge])?;
        let br = lab.bridge.clone();
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{PREFIX}{tag}-{name}");
            ip(&["netns", "add", &ns])?;
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1);
            lab.hosts.push(Host {
                name: (*name).to_owned(),
                ns: ns.clone(),
                ip: addr,
            });
            let port = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", DEV, "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", DEV])?;
            ip(&["-n", &ns, "link", "set", DEV, "up"])?;
        }
        Ok(lab)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> io::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| fail(format!("no host {name} in this lab")))
    }

    pub fn ip(&self, name: &str) -> io::Result<Ipv4Addr> {
        Ok(self.host(name)?.ip)
    }

    /// `program` run inside `host`'s namespace (`ip netns exec` execs it: the pid is the
    /// program's own, so signals reach it).
    pub fn command(&self, host: &str, program: &std::path::Path) -> io::Result<Command> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host)?.ns])
            .arg(program);
        Ok(cmd)
    }

    /// `host`'s namespace, to move threads into.
    pub fn handle(&self, host: &str) -> io::Result<NsHandle> {
        NsHandle::open(&self.host(host)?.ns)
    }

    /// Moves the calling thread (only it) into `host`'s namespace: sockets it opens from now on
    /// are that host's.
    pub fn enter_thread(&self, host: &str) -> io::Result<NsHandle> {
        let h = self.handle(host)?;
        h.enter()?;
        Ok(h)
    }

    /// A listening socket on `host`'s address: made on a short-lived thread inside the
    /// namespace, so it and every connection it accepts belong to that host, whichever thread
    /// serves them.
    pub fn listen(&self, host: &str, port: u16) -> io::Result<std::net::TcpListener> {
        let ns = self.handle(host)?;
        let addr = (self.ip(host)?, port);
        std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter()?;
                std::net::TcpListener::bind(addr)
            })
            .join()
            .map_err(|_| fail("the listening thread panicked".into()))?
        })
    }

    fn nft(&self, host: &str, script: &str) -> io::Result<()> {
        let ns = &self.host(host)?.ns;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("running nft: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "nft in {host} refused {script:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Adds drop rules to `host`'s fault table (created on first use). The hooks see every
    /// packet, established connections included: a cut stops connections already open too.
    fn add_rules(&self, host: &str, input: &[String], output: &[String]) -> io::Result<()> {
        let mut s = format!(
            "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept; }}\n \
             chain output {{ type filter hook output priority 0; policy accept; }}\n}}\n"
        );
        for r in input {
            s.push_str(&format!("add rule inet {TABLE} input {r}\n"));
        }
        for r in output {
            s.push_str(&format!("add rule inet {TABLE} output {r}\n"));
        }
        self.nft(host, &s)
    }

    /// No packet between `a` and `b`, either way.
    pub fn cut(&self, a: &str, b: &str) -> io::Result<()> {
        let peer = self.ip(b)?;
        self.add_rules(
            a,
            &[format!("ip saddr {peer} drop")],
            &[format!("ip daddr {peer} drop")],
        )
    }

    /// Packets from `from` to `to` are dropped; `to`'s packets still reach `from`.
    pub fn cut_one_way(&self, from: &str, to: &str) -> io::Result<()> {
        let peer = self.ip(to)?;
        self.add_rules(from, &[], &[format!("ip daddr {peer} drop")])
    }

    /// `host` reaches nobody and nobody reaches it (its loopback still works).
    pub fn isolate(&self, host: &str) -> io::Result<()> {
        self.add_rules(
            host,
            &[format!("iifname \"{DEV}\" drop")],
            &[format!("oifname \"{DEV}\" drop")],
        )
    }

    /// Each packet in or out of `host`'s link is dropped with probability `percent`/100.
    pub fn loss(&self, host: &str, percent: u8) -> io::Result<()> {
        if percent > 100 {
            return Err(fail(format!("loss of {percent}%: at most 100")));
        }
        // numgen's range is 0-99: 100 % is an unconditional drop, 0 % no rule at all.
        let rule = |dir: &str| match percent {
            100 => format!("{dir} \"{DEV}\" drop"),
            p => format!("{dir} \"{DEV}\" numgen random mod 100 < {p} drop"),
        };
        if percent == 0 {
            return self.add_rules(host, &[], &[]);
        }
        self.add_rules(host, &[rule("iifname")], &[rule("oifname")])
    }

    /// Removes every fault rule of `host`.
    pub fn heal(&self, host: &str) -> io::Result<()> {
        self.nft(
            host,
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )
    }

    pub fn heal_all(&self) -> io::Result<()> {
        for h in &self.hosts {
            self.heal(&h.name)?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            if let Err(e) = ip(&["netns", "del", &h.ns]) {
                tracing::warn!(namespace = %h.ns, error = %e, "cannot delete a namespace");
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.bridge]) {
            tracing::warn!(namespace = %self.bridge, error = %e, "cannot delete a namespace");
        }
    }
}

/// An open network namespace (`/run/netns/<name>`), to move threads into.
#[derive(Debug)]
pub struct NsHandle {
    file: std::fs::File,
}

impl NsHandle {
    pub fn open(ns: &str) -> io::Result<NsHandle> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(|e| fail(format!("opening {path}: {e}")))?;
        Ok(NsHandle { file })
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: the fd is a valid open namespace file for the duration of the call; setns
        // of a network namespace affects only the calling thread.
        let rc = unsafe { setns(self.file.as_raw_fd(), CLONE_NEWNET) };
        if rc != 0 {
            return Err(fail(format!("setns: {}", io::Error::last_os_error())));
        }
        Ok(())
    }
}

/// A future made on the thread that runs it: it need not be Send.
pub type LocalTask<T> = Pin<Box<dyn Future<Output = T>>>;

/// Runs `f`'s future on a thread inside `ns`, on a runtime whose every thread (workers and the
/// blocking pool) enters `ns` too, so every socket the future opens is that host's. A panic of
/// the future goes on in the caller, with its own message (a test's failed assertion).
pub fn block_on_in<T: Send + 'static>(
    ns: NsHandle,
    thread: &str,
    f: impl FnOnce() -> LocalTask<T> + Send + 'static,
) -> io::Result<T> {
    let t = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || -> io::Result<T> {
            ns.enter()?;
            let ns = Arc::new(ns);
            let failed = Arc::new(AtomicBool::new(false));
            let (n, fl) = (ns.clone(), failed.clone());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    if n.enter().is_err() {
                        fl.store(true, Ordering::Relaxed);
                    }
                })
                .build()?;
            let out = rt.block_on(f());
            drop(rt);
            if failed.load(Ordering::Relaxed) {
                return Err(fail(
                    "a runtime thread could not enter the namespace".into(),
                ));
            }
            Ok(out)
        })?;
    t.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
