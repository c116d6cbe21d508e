//! A test-host kit: network namespaces joined by veth links to a bridge namespace, each with an
//! address of its own, and a fault API (cuts both ways or one way, isolation, random loss) made
//! of nftables rules inside the namespaces. Nothing touches the machine's own network: every
//! link, address and rule lives in a namespace the [`Lab`] created, and [`Lab`]'s Drop deletes
//! them all (a deleted namespace takes its veth ends and its nftables tables with it).
//!
//! Namespaces are named `ltn-<pid>-<host>`; [`cleanup_leftovers`] deletes those whose process is
//! gone (a run that was killed with SIGKILL), never those of a live run, so parallel tests keep
//! their own.

pub mod cluster;
pub mod relay;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

pub const PREFIX: &str = "ltn-";
/// Every lab uses the same subnet: labs are separate bridges that never meet.
const SUBNET: [u8; 3] = [10, 213, 0];
/// The device every host namespace reaches the bridge through.
pub const DEV: &str = "eth0";
const TABLE: &str = "ltfault";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Why namespaces cannot be used here, or Ok: root, `ip netns` works, and `nft` is installed.
/// Creates and deletes a probe namespace.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root: network namespaces need CAP_SYS_ADMIN".into());
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| format!("`ip netns add` does not work: {e:#}"))?;
    let nft = run(Command::new("ip").args(["netns", "exec", &probe, "nft", "list", "tables"]));
    let _ = ip(&["netns", "del", &probe]);
    nft.map(drop)
        .map_err(|e| format!("nftables is not usable inside a namespace: {e:#}"))
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

impl Lab {
    /// One namespace per host name, all on one bridge, addresses 10.213.0.1, .2, ... in order.
    pub fn new(names: &[&str]) -> anyhow::Result<Lab> {
        if names.len() > 250 {
            bail!("at most 250 hosts on one bridge");
        }
        cleanup_leftovers();
        let pid = std::process::id();
        // Distinct labs of one process (tests in one binary) need distinct names too.
        let tag = format!("{pid}-{:04x}", rand::random::<u16>());
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

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| anyhow!("no host {name} in this lab"))
    }

    pub fn ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.host(name)?.ip)
    }

    /// `program` run inside `host`'s namespace (`ip netns exec` execs it: the pid is the
    /// program's own, so signals reach it).
    pub fn command(&self, host: &str, program: &std::path::Path) -> anyhow::Result<Command> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host)?.ns])
            .arg(program);
        Ok(cmd)
    }

    /// Moves the calling thread (only it) into `host`'s namespace: sockets it opens from now on
    /// are that host's.
    pub fn enter_thread(&self, host: &str) -> anyhow::Result<NsHandle> {
        let h = NsHandle::open(&self.host(host)?.ns)?;
        h.enter()?;
        Ok(h)
    }

    fn nft(&self, host: &str, script: &str) -> anyhow::Result<()> {
        let ns = &self.host(host)?.ns;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {host} refused {script:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Adds drop rules to `host`'s fault table (created on first use). The hooks see every
    /// packet, established connections included: a cut stops connections already open too.
    fn add_rules(&self, host: &str, input: &[String], output: &[String]) -> anyhow::Result<()> {
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
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let peer = self.ip(b)?;
        self.add_rules(
            a,
            &[format!("ip saddr {peer} drop")],
            &[format!("ip daddr {peer} drop")],
        )
    }

    /// Packets from `from` to `to` are dropped; `to`'s packets still reach `from`.
    pub fn cut_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let peer = self.ip(to)?;
        self.add_rules(from, &[], &[format!("ip daddr {peer} drop")])
    }

    /// `host` reaches nobody and nobody reaches it (its loopback still works).
    pub fn isolate(&self, host: &str) -> anyhow::Result<()> {
        self.add_rules(
            host,
            &[format!("iifname \"{DEV}\" drop")],
            &[format!("oifname \"{DEV}\" drop")],
        )
    }

    /// Each packet in or out of `host`'s link is dropped with probability `percent`/100.
    pub fn loss(&self, host: &str, percent: u8) -> anyhow::Result<()> {
        if percent > 100 {
            bail!("loss of {percent}%: at most 100");
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
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        self.nft(
            host,
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )
    }

    pub fn heal_all(&self) -> anyhow::Result<()> {
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
    pub fn open(ns: &str) -> anyhow::Result<NsHandle> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(NsHandle { file })
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> anyhow::Result<()> {
        // SAFETY: the fd is a valid open namespace file for the duration of the call; setns
        // of a network namespace affects only the calling thread.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}
