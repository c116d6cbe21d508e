//! Network faults between real hosts (network namespaces): the kit's fault API on its own, then
//! `loadtest failover --partition` against real nodes, writer-election and rw-proxy, checking
//! the promises of docs/network-faults.md. Needs root and `ip netns`; without them each test
//! says SKIPPED and why, and returns.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use loadtest::netns::{self, relay::Relay, Lab, NsHandle};
use support::*;

fn can_run(test: &str) -> bool {
    match netns::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// An echo server on `port` in `host`'s namespace, on a thread of its own; it serves until the
/// namespace is deleted (its accept then fails or never returns; the thread is detached).
fn echo_server(lab: &Lab, host: &str, port: u16) -> SocketAddr {
    let ip = lab.ip(host).unwrap();
    let ns = NsHandle::open(&lab.host(host).unwrap().ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        ns.enter().unwrap();
        let l = TcpListener::bind((ip, port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx.recv().unwrap();
    SocketAddr::from((ip, port))
}

/// One echo round trip from `host`'s namespace to `to`, on a fresh connection: Ok(elapsed) or
/// the error.
fn round_trip(
    lab: &Lab,
    host: &str,
    to: SocketAddr,
    timeout: Duration,
) -> Result<Duration, String> {
    let ns = NsHandle::open(&lab.host(host).unwrap().ns).unwrap();
    std::thread::spawn(move || {
        ns.enter().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok(t.elapsed())
    })
    .join()
    .unwrap()
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn the_kit_cuts_heals_drops_and_removes_everything_it_made() {
    if !can_run("the_kit_cuts_heals_drops_and_removes_everything_it_made") {
        return;
    }
    let t = Duration::from_millis(500);
    let lab = Lab::new(&["a", "b", "c"]).unwrap();
    let names: Vec<String> = lab.hosts().iter().map(|h| h.ns.clone()).collect();
    let b = echo_server(&lab, "b", 7000);
    let c = echo_server(&lab, "c", 7000);
    round_trip(&lab, "a", b, t).expect("a reaches b before any fault");

    // Both ways: neither side gets through, and the third host is not affected.
    lab.cut("a", "b").unwrap();
    assert!(
        round_trip(&lab, "a", b, t).is_err(),
        "a still reaches b after the cut"
    );
    let a_srv = echo_server(&lab, "a", 7001);
    assert!(
        round_trip(&lab, "b", a_srv, t).is_err(),
        "b still reaches a after the cut"
    );
    round_trip(&lab, "a", c, t).expect("a -- c is not part of the cut");
    lab.heal("a").unwrap();
    round_trip(&lab, "a", b, t).expect("healed");

    // One way, a -> b dropped in a: a's packets to b never leave; c is unaffected.
    lab.cut_one_way("a", "b").unwrap();
    assert!(round_trip(&lab, "a", b, t).is_err());
    round_trip(&lab, "a", c, t).unwrap();
    lab.heal_all().unwrap();

    // Isolation: nobody in, nobody out.
    lab.isolate("b").unwrap();
    assert!(round_trip(&lab, "a", b, t).is_err());
    assert!(round_trip(&lab, "c", b, t).is_err());
    round_trip(&lab, "a", c, t).unwrap();
    lab.heal_all().unwrap();
    round_trip(&lab, "c", b, t).unwrap();

    // 100 % loss is a cut; 0 % changes nothing.
    lab.loss("b", 100).unwrap();
    assert!(round_trip(&lab, "a", b, t).is_err());
    lab.heal("b").unwrap();
    lab.loss("b", 0).unwrap();
    round_trip(&lab, "a", b, t).unwrap();
    lab.heal("b").unwrap();

    // A relay in c's namespace in front of c's echo server, with 200 ms each way.
    let relay = Relay::start(
        Some(NsHandle::open(&lab.host("c").unwrap().ns).unwrap()),
        SocketAddr::from((lab.ip("c").unwrap(), 7100)),
        c,
    )
    .unwrap();
    let via = SocketAddr::from((lab.ip("c").unwrap(), 7100));
    let fast = round_trip(&lab, "a", via, Duration::from_secs(2)).unwrap();
    relay.set_delay(Duration::from_millis(200));
    let slow = round_trip(&lab, "a", via, Duration::from_secs(2)).unwrap();
    assert!(
        slow >= Duration::from_millis(400),
        "200 ms each way, round trip took {slow:?}"
    );
    assert!(
        fast < Duration::from_millis(200),
        "no delay, round trip took {fast:?}"
    );
    drop(relay);

    let before = namespaces();
    for n in &names {
        assert!(before.contains(n.as_str()), "{n} missing: {before}");
    }
    drop(lab);
    let after = namespaces();
    for n in &names {
        assert!(!after.contains(n.as_str()), "{n} left behind: {after}");
    }
}

#[test]
fn leftovers_of_a_dead_run_are_deleted_and_a_live_runs_are_not() {
    if !can_run("leftovers_of_a_dead_run_are_deleted_and_a_live_runs_are_not") {
        return;
    }
    // A pid that cannot be running: above the kernel's pid_max ceiling.
    let dead = format!("{}999999999-x", netns::PREFIX);
    let live = format!("{}{}-leftover-test", netns::PREFIX, std::process::id());
    for n in [&dead, &live] {
        assert!(Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap()
            .success());
    }
    netns::cleanup_leftovers();
    let list = namespaces();
    let _ = Command::new("ip").args(["netns", "del", &live]).status();
    let _ = Command::new("ip").args(["netns", "del", &dead]).status();
    assert!(!list.contains(&dead), "{list}");
    assert!(list.contains(&live), "{list}");
}

fn partition(spec: &str) -> Option<(i32, serde_json::Value)> {
    if !can_run(&format!("failover --partition {spec}")) {
        return None;
    }
    Some(failover_json(&[
        "--partition",
        spec,
        "--duration",
        "7s",
        "--fault-after",
        "2s",
        "--fault-for",
        "3s",
        "--rate",
        "150",
    ]))
}

fn assert_safe(r: &serde_json::Value) {
    let a = &r["analysis"];
    assert_eq!(a["lost_acked_writes"], 0, "{r:#}");
    assert_eq!(
        a["log"]["epochs_on_two_nodes"],
        serde_json::json!({}),
        "{r:#}"
    );
    assert_eq!(a["log"]["epoch_regressions"], 0, "{r:#}");
    assert_eq!(a["applied_twice"], 0, "{r:#}");
    assert!(a["writes"]["acked"].as_u64().unwrap() > 100, "{r:#}");
    for (node, missing) in r["read_back"]["missing_on_node"].as_object().unwrap() {
        assert_eq!(missing, 0, "{node}: {r:#}");
    }
    assert_eq!(r["read_back"]["missing_via_proxy"], 0, "{r:#}");
    assert!(
        r["recovery_ms"].is_number(),
        "did not recover after the heal: {r:#}"
    );
}

fn assert_one_failover(code: i32, r: &serde_json::Value) {
    assert_safe(r);
    let old = r["old_writer"]["epoch"].as_u64().unwrap();
    assert_eq!(r["final_epoch"].as_u64().unwrap(), old + 1, "{r:#}");
    assert_eq!(r["writer_changes"], 1, "{r:#}");
    assert_ne!(r["new_writer"]["name"], r["old_writer"]["name"], "{r:#}");
    assert!(r["analysis"]["first_new_ack_ms"].is_number(), "{r:#}");
    assert_eq!(r["failed_after_publish"], 0, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn an_isolated_writer_is_replaced_once_and_no_acknowledged_write_is_lost() {
    let Some((code, r)) = partition("writer-isolated") else {
        return;
    };
    assert_eq!(r["expect"], "one_failover");
    assert_one_failover(code, &r);
}

#[test]
fn election_cut_from_the_writer_fails_over_and_the_old_writer_takes_no_write_after_it() {
    let Some((code, r)) = partition("election-writer") else {
        return;
    };
    assert_one_failover(code, &r);
    // The old writer's records all come before the new epoch's (no regression, checked above),
    // and it appended under its own epoch only.
    let old = r["old_writer"]["name"].as_str().unwrap();
    let epochs = &r["analysis"]["log"]["epochs_by_node"][old];
    assert_eq!(
        epochs,
        &serde_json::json!([r["old_writer"]["epoch"]]),
        "{r:#}"
    );
}

#[test]
fn a_proxy_cut_from_the_election_keeps_serving_with_its_last_topology() {
    let Some((code, r)) = partition("proxy-election") else {
        return;
    };
    assert_safe(&r);
    assert_eq!(r["final_epoch"], r["old_writer"]["epoch"], "{r:#}");
    assert_eq!(r["writer_changes"], 0, "{r:#}");
    assert_eq!(r["analysis"]["writes"]["failed"], 0, "{r:#}");
    let d = &r["proxy_during_fault"];
    assert!(d["ready_samples"].as_u64().unwrap() >= 10, "{r:#}");
    assert_eq!(d["not_ready_samples"], 0, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn a_one_way_cut_from_the_writer_to_the_election_is_a_failover_like_a_full_cut() {
    let Some((code, r)) = partition("one-way:writer->election") else {
        return;
    };
    assert_eq!(r["expect"], "one_failover");
    assert_one_failover(code, &r);
}

#[test]
fn a_proxy_cut_from_the_writer_holds_writes_through_the_cut_without_a_failover() {
    let Some((code, r)) = partition("proxy-writer") else {
        return;
    };
    assert_safe(&r);
    assert_eq!(r["final_epoch"], r["old_writer"]["epoch"], "{r:#}");
    assert_eq!(r["writer_changes"], 0, "{r:#}");
    // The cut (3 s) is shorter than failover.hold_writes (5 s): held, then through.
    assert_eq!(r["analysis"]["writes"]["failed"], 0, "{r:#}");
    let max = r["load"]["latency"]["write"]["max_us"].as_u64().unwrap();
    assert!(
        max >= 1_500_000,
        "no write waited through the cut (max {max} us): {r:#}"
    );
    assert_eq!(r["proxy_during_fault"]["not_ready_samples"], 0, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn loss_on_the_writers_link_breaks_no_safety_rule() {
    let Some((code, r)) = partition("loss:writer=30%") else {
        return;
    };
    assert_eq!(r["expect"], "safety_only");
    assert_safe(&r);
    // At most one failover: the old writer, once replaced, is not elected back mid-run.
    assert!(r["writer_changes"].as_u64().unwrap() <= 1, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn delay_on_the_writers_link_breaks_no_safety_rule() {
    let Some((code, r)) = partition("delay:writer=300ms") else {
        return;
    };
    assert_safe(&r);
    // The relay really delayed: some write took at least one delayed round trip.
    let max = r["load"]["latency"]["write"]["max_us"].as_u64().unwrap();
    assert!(max >= 600_000, "no write was slowed (max {max} us): {r:#}");
    assert!(r["writer_changes"].as_u64().unwrap() <= 1, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(code, 0);
}

#[test]
fn partition_specs_that_make_no_sense_are_refused_before_anything_starts() {
    for spec in [
        "writer",
        "loss:writer=200%",
        "delay:proxy=1s",
        "one-way:writer->writer",
    ] {
        let out = Command::new(loadtest_bin())
            .args(["failover", "--partition", spec])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--partition"), "{spec}: {err}");
    }
}
