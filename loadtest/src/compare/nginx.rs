//! The reference nginx: its config, filled in from the template shared with
//! loadtest/bench/instructions.sh, and its process.

use std::path::Path;
use std::process::{Command, Stdio};

use super::setup::{wait_ready, Started};
use crate::procs::{free_port, Group};

/// The ConfigMap's shape (map $request_method -> writer or readers, access log off, HTTP/1.1
/// upstream) with pooled upstream connections (`keepalive` + `Connection ""`) instead of one
/// request per connection, and the header work rw-proxy does on every request (X-Forwarded-*,
/// X-Request-Id both ways, the fencing token to the writer only), so that both proxies do the
/// same work per request.
const NGINX_TEMPLATE: &str = include_str!("../../bench/nginx-reference.conf");

/// nginx.conf of the reference proxy: `worker_processes auto` under a master process.
pub fn nginx_conf(
    dir: &Path,
    listen: u16,
    writer: &str,
    readers: &[String],
    worker_connections: u64,
) -> String {
    let readers: Vec<String> = readers.iter().map(|r| format!("    server {r};")).collect();
    NGINX_TEMPLATE
        .replace("@MASTER_PROCESS@", "on")
        .replace("@WORKER_PROCESSES@", "auto")
        .replace("@RLIMIT_NOFILE@", &(worker_connections * 2).to_string())
        .replace("@WORKER_CONNECTIONS@", &worker_connections.to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@WRITER@", writer)
        .replace("@READERS@", &readers.join("\n"))
        .replace("@LISTEN@", &listen.to_string())
}

/// Room for `--idle` client connections on top of the load's, never below the default of the
/// reference config.
pub fn worker_connections(idle: usize) -> u64 {
    (idle as u64 + 1024).max(4096)
}

/// What `nginx -v` says (on stderr), for the report.
pub fn version(nginx: Option<&Path>) -> String {
    nginx
        .and_then(|n| Command::new(n).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|| "not installed".into())
}

/// Starts nginx with its prefix, config and error log in `dir` in front of `writer` and
/// `readers`, and waits until it answers through to a reader.
pub async fn start(
    nginx: &Path,
    dir: &Path,
    writer: &str,
    readers: &[String],
    idle: usize,
    group: &mut Group,
) -> anyhow::Result<Started> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    let text = nginx_conf(dir, port, writer, readers, worker_connections(idle));
    std::fs::write(&conf, text)?;
    let log = dir.join("nginx-error.log");
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = group.spawn("nginx", cmd)?;
    wait_ready(
        "nginx",
        &format!("http://127.0.0.1:{port}/health"),
        &log,
        group,
    )
    .await?;
    Ok(Started {
        url: format!("http://127.0.0.1:{port}"),
        pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> String {
        nginx_conf(
            Path::new("/tmp/x"),
            8088,
            "127.0.0.1:9001",
            &["127.0.0.1:9002".into(), "127.0.0.1:9003".into()],
            4096,
        )
    }

    #[test]
    fn nginx_conf_keeps_the_reference_shape_with_keepalive() {
        let c = conf();
        assert!(c.contains("map $request_method $upstream_location"));
        assert!(c.contains("keepalive 256;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("    server 127.0.0.1:9002;\n    server 127.0.0.1:9003;\n"));
        assert!(c.contains("server 127.0.0.1:9001;"));
        assert!(c.contains("listen 127.0.0.1:8088;"));
        assert!(c.contains("access_log off;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        assert!(c.contains("worker_connections 4096;"));
        assert!(c.contains("worker_rlimit_nofile 8192;"));
        assert!(c.contains("master_process on;"));
        assert!(c.contains("worker_processes auto;"));
        assert!(!c.contains("Connection close"));
        assert!(!c.contains('@'), "every marker is filled in:\n{c}");
    }

    #[test]
    fn nginx_conf_does_the_header_work_rw_proxy_does() {
        let c = conf();
        // Appends the client address to the client's X-Forwarded-For.
        assert!(c.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));
        // X-Forwarded-Proto and -Host: the client's if sent, else this hop's scheme and Host.
        assert!(c.contains("map $http_x_forwarded_proto $forwarded_proto {\n    \"\" $scheme;"));
        assert!(c.contains("proxy_set_header X-Forwarded-Proto $forwarded_proto;"));
        assert!(c.contains("map $http_x_forwarded_host $forwarded_host {\n    \"\" $http_host;"));
        assert!(c.contains("proxy_set_header X-Forwarded-Host $forwarded_host;"));
        // X-Request-Id: the client's, else generated; upstream, and on the response unless the
        // upstream's response has one.
        assert!(c.contains("map $http_x_request_id $request_id_out {\n    \"\" $request_id;"));
        assert!(c.contains("proxy_set_header X-Request-Id $request_id_out;"));
        assert!(c.contains("map $upstream_http_x_request_id $response_request_id {"));
        assert!(c.contains("add_header X-Request-Id $response_request_id always;"));
        // The fencing token goes to the writer only and replaces any the client sent.
        assert!(
            c.contains("map $upstream_location $writer_epoch {\n    writer 1;\n    default \"\";")
        );
        assert!(c.contains("proxy_set_header X-Writer-Epoch $writer_epoch;"));
    }

    #[test]
    fn worker_connections_grow_with_idle_above_the_default() {
        assert_eq!(worker_connections(0), 4096);
        assert_eq!(worker_connections(3072), 4096);
        assert_eq!(worker_connections(10_000), 11_024);
    }
}
