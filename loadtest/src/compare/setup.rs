//! The processes under test: three demo nodes (node-1 the writer, no election) and, in front of
//! them, the targets asked for: rw-proxy, nginx, and the nodes themselves for `direct`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::{nginx, CompareArgs};
use crate::cluster::{log_tail, Binaries};
use crate::httpc::HttpClient;
use crate::logging::LogFormat;
use crate::procs::{free_port, wait_for, Group};

/// A target's base URL and extra headers for writes.
pub type Target = (String, Vec<(String, String)>);

pub struct Setup {
    _dir: tempfile::TempDir,
    pub group: Group,
    /// target name -> where to send its load; `direct-writer` is where direct sends PUTs.
    pub urls: BTreeMap<String, Target>,
    /// target name -> pid whose RSS tree is measured
    pub pids: BTreeMap<String, u32>,
}

/// A proxy that answers.
pub struct Started {
    pub url: String,
    pub pid: u32,
}

/// Waits until `url` answers, and fails early with the end of `log` if anything in `group` exits
/// meanwhile.
pub async fn wait_ready(
    name: &str,
    url: &str,
    log: &Path,
    group: &mut Group,
) -> anyhow::Result<()> {
    let c = HttpClient::new(Duration::from_secs(2));
    let mut exited = None;
    let r = wait_for(name, Duration::from_secs(30), || {
        if exited.is_none() {
            exited = group.reap().into_iter().next();
        }
        let done = exited.is_some();
        let c = c.clone();
        let url = url.to_owned();
        async move {
            if done {
                return Some(false);
            }
            c.get(&url).await.ok().map(|_| true)
        }
    })
    .await;
    match (r, exited) {
        (Ok(true), _) => Ok(()),
        (_, Some((n, st))) => bail!("{n} exited at start ({st}):\n{}", log_tail(log, 20)),
        (Err(e), _) => Err(anyhow!("{e}:\n{}", log_tail(log, 20))),
        (Ok(false), None) => bail!("{name} did not start"),
    }
}

pub async fn setup(
    args: &CompareArgs,
    log_format: LogFormat,
    nginx: Option<&Path>,
) -> anyhow::Result<Setup> {
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("loadtest-compare-")
        .tempdir()?;
    let d = dir.path().to_path_buf();
    let mut group = Group::new();
    let stream = d.join("stream.log");
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let port = free_port()?;
        let name = format!("node-{i}");
        let log = d.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bins.loadtest);
        cmd.args(["--log-format", log_format.as_str(), "node", "--name", &name])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log")
            .arg(&stream)
            .arg("--no-sync")
            // A static writer with no election: nobody promotes node-1.
            .arg("--no-promotion-needed")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        group.spawn(&name, cmd)?;
        let addr = format!("127.0.0.1:{port}");
        wait_ready(&name, &format!("http://{addr}/health"), &log, &mut group).await?;
        nodes.push(addr);
    }
    let writer = nodes[0].clone();
    let readers = nodes[1..].to_vec();
    let mut urls = BTreeMap::new();
    let mut pids = BTreeMap::new();
    let want = |t: &str| args.targets.iter().any(|x| x == t);

    if want("direct") {
        // Reads to one reader, writes to the writer with the epoch the proxies would add.
        urls.insert(
            "direct".to_owned(),
            (format!("http://{}", readers[0]), vec![]),
        );
        urls.insert(
            "direct-writer".to_owned(),
            (
                format!("http://{writer}"),
                vec![("X-Writer-Epoch".to_owned(), "1".to_owned())],
            ),
        );
    }
    let mut started = Vec::new();
    if want("rw-proxy") {
        let p = start_rw_proxy(
            &bins.rw_proxy,
            &d,
            log_format,
            &writer,
            &readers,
            &mut group,
        );
        started.push(("rw-proxy", p.await?));
    }
    if want("nginx") {
        let nginx = nginx.ok_or_else(|| {
            anyhow!(
                "nginx not found (--nginx {}): install it with `apt-get install nginx wrk` \
                 (scripts/bootstrap.sh --bench), or leave nginx out of --targets",
                args.nginx.display()
            )
        })?;
        let p = nginx::start(nginx, &d, &writer, &readers, args.idle, &mut group);
        started.push(("nginx", p.await?));
    }
    for (name, p) in started {
        urls.insert(name.to_owned(), (p.url, vec![]));
        pids.insert(name.to_owned(), p.pid);
    }
    Ok(Setup {
        _dir: dir,
        group,
        urls,
        pids,
    })
}

/// rw-proxy's config: the nodes as a static topology, only failed requests logged.
fn rw_proxy_config(port: u16, admin: u16, writer: &str, readers: &[String]) -> serde_json::Value {
    let node = |a: &str, i: usize| serde_json::json!({"name": format!("node-{i}"), "address": a});
    serde_json::json!({
        "listen": format!("127.0.0.1:{port}"),
        "admin_listen": format!("127.0.0.1:{admin}"),
        "topology": {"static": {
            "writer": node(writer, 1),
            "readers": readers.iter().enumerate().map(|(i, r)| node(r, i + 2)).collect::<Vec<_>>()
        }},
        "access_log": "errors"
    })
}

async fn start_rw_proxy(
    bin: &Path,
    dir: &Path,
    log_format: LogFormat,
    writer: &str,
    readers: &[String],
    group: &mut Group,
) -> anyhow::Result<Started> {
    let port = free_port()?;
    let admin = free_port()?;
    let path = dir.join("proxy.yaml");
    let cfg = rw_proxy_config(port, admin, writer, readers);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    let log = dir.join("rw-proxy.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--log-format")
        .arg(log_format.as_str())
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let pid = group.spawn("rw-proxy", cmd)?;
    let ready = format!("http://127.0.0.1:{admin}/health/ready");
    wait_ready("rw-proxy", &ready, &log, group).await?;
    Ok(Started {
        url: format!("http://127.0.0.1:{port}"),
        pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_proxy_gets_the_nodes_in_order_as_a_static_topology() {
        let c = rw_proxy_config(
            8080,
            9090,
            "127.0.0.1:1",
            &["127.0.0.1:2".into(), "127.0.0.1:3".into()],
        );
        assert_eq!(c["listen"], "127.0.0.1:8080");
        assert_eq!(c["admin_listen"], "127.0.0.1:9090");
        let t = &c["topology"]["static"];
        assert_eq!(
            t["writer"],
            serde_json::json!({"name": "node-1", "address": "127.0.0.1:1"})
        );
        assert_eq!(
            t["readers"],
            serde_json::json!([
                {"name": "node-2", "address": "127.0.0.1:2"},
                {"name": "node-3", "address": "127.0.0.1:3"},
            ])
        );
    }
}
