//! `loadtest demo` as a user runs it: start, use through the proxy, Ctrl-C, nothing left.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::procs::{free_port, signal_pid, SIGINT};
use support::*;

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first of `n` consecutive ports that are all free right now.
fn free_port_run(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port().unwrap();
        let held: Vec<_> = (base..base.saturating_add(n))
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_through_the_proxy_and_ctrl_c_leaves_nothing_behind() {
    let bin_dir = ensure_service_binaries();
    let ports: Vec<u16> = (0..3).map(|_| free_port().unwrap()).collect();
    let base = free_port_run(3);
    let mut child = KillOnDrop(
        Command::new(loadtest_bin())
            .args(["demo", "--proxy-port", &ports[0].to_string()])
            .args(["--admin-port", &ports[1].to_string()])
            .args(["--election-port", &ports[2].to_string()])
            .args(["--base-port", &base.to_string()])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no banner; got {banner:#?}"));
        let done = line.starts_with("try:");
        banner.push(line);
        if done {
            break;
        }
    }
    let files = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("files").map(|p| p.trim().to_owned()))
        .expect("banner names the files directory");
    assert!(std::path::Path::new(&files).is_dir());

    let proxy = format!("http://127.0.0.1:{}", ports[0]);
    let r = put(&proxy, "greeting", "hello", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The demo's proxy has read-your-writes on: the write's answer carries the token.
    let cookie = r.header("set-cookie").unwrap_or_default();
    assert!(cookie.starts_with("rwp_read_after=v1-"), "{cookie:?}");
    let c = client();
    let got = get_ok(
        "the value through the proxy",
        &format!("{proxy}/kv/greeting"),
    )
    .await;
    assert_eq!(got.text(), "hello");

    // The write went to the one node writer-election promoted through the MicroStream calls;
    // the others are not distributors.
    let api = loadtest::node::api::Api::Microstream;
    let mut distributors = Vec::new();
    for port in base..base + 3 {
        let url = format!("http://127.0.0.1:{port}");
        let d = c
            .get(&format!("{url}{}", api.distributor_path()))
            .await
            .unwrap();
        assert_eq!(d.status, 200, "{url}: {}", d.text());
        if d.text() == "true" {
            let who = whoami(&url).await;
            distributors.push(who["name"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(distributors.len(), 1, "{distributors:?}");
    assert_eq!(r.header("x-node"), Some(distributors[0].as_str()));
    let cfg = std::fs::read_to_string(std::path::Path::new(&files).join("election.yaml")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["promotion"]["preset"], "microstream");

    signal_pid(child.0.id(), SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    for p in ports.iter().copied().chain(base..base + 3) {
        assert!(
            !port_in_use(p),
            "port {p} still answers after the demo stopped"
        );
    }
    assert!(
        !std::path::Path::new(&files).exists(),
        "{files} was not removed"
    );
}

#[test]
fn demo_names_the_build_command_when_binaries_are_missing() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(loadtest_bin())
        .args(["demo", "--bin-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release --bins"), "{err}");
}
