//! The worker model: `threads` event loops, each with its own listening socket, serving every
//! connection it accepted from start to end. Real rw-proxy process, real backends on 127.0.0.1;
//! which worker served a request is read from the access log (`worker=`).

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::election::{doc, FakeElection};
use support::{eventually, send, static_topology, Backend, KeepAlive, Proxy};

/// `worker=` of the access log line for `path`, once it is there.
fn worker_of(log: &str, path: &str) -> Option<usize> {
    let needle = format!("path={path} ");
    let line = log
        .lines()
        .find(|l| l.contains("rw_proxy::access") && l.contains(&needle))?;
    let rest = line.split("worker=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn workers_of(proxy: &Proxy, paths: &[String]) -> Vec<usize> {
    eventually("every request is in the access log", || async {
        let log = proxy.log();
        paths.iter().all(|p| worker_of(&log, p).is_some())
    })
    .await;
    let log = proxy.log();
    paths.iter().filter_map(|p| worker_of(&log, p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_workers_and_each_stays_on_one() {
    let writer = Backend::start("w").await;
    let backend = Backend::start("n").await;
    let cfg = format!(
        "{}threads: 4\naccess_log: all\n",
        static_topology(Some(writer.addr), &[backend.addr])
    );
    let proxy = Proxy::start(&cfg).await;

    let mut per_connection = BTreeMap::new();
    for c in 0..24 {
        let mut conn = KeepAlive::open(proxy.addr).await;
        let mut paths = Vec::new();
        for r in 0..4 {
            let path = format!("/c{c}/r{r}");
            assert_eq!(conn.get(&path).await.status, 200);
            paths.push(path);
        }
        assert!(!conn.closed(), "kept alive");
        per_connection.insert(c, paths);
    }
    let mut used = BTreeSet::new();
    for (c, paths) in &per_connection {
        let workers: BTreeSet<_> = workers_of(&proxy, paths).await.into_iter().collect();
        assert_eq!(workers.len(), 1, "connection {c} was served by {workers:?}");
        used.extend(workers);
    }
    // The kernel hashes each new connection to one of the four sockets: 24 connections all on
    // one worker would mean the sockets are not shared out.
    assert!(used.len() >= 2, "only workers {used:?} served");
    assert!(used.iter().all(|w| *w < 4), "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_on_every_worker_finish() {
    let writer = Backend::start("w").await;
    let backend = Backend::start("n").await;
    let cfg = format!(
        "{}threads: 3\nshutdown_grace: 20s\naccess_log: all\n",
        static_topology(Some(writer.addr), &[backend.addr])
    );
    let mut proxy = Proxy::start(&cfg).await;
    let paths: Vec<String> = (0..12).map(|i| format!("/slow/{}", 2000 + i)).collect();
    let mut slow = Vec::new();
    for p in &paths {
        let (addr, p) = (proxy.addr, p.clone());
        slow.push(tokio::spawn(async move {
            send(addr, "GET", &p, &[], b"").await
        }));
    }
    eventually("every slow request reached the backend", || async {
        backend.count() == paths.len()
    })
    .await;
    proxy.signal("TERM");
    for s in slow {
        let r = s.await.unwrap().expect("answered, not cut off");
        assert_eq!(r.status, 200);
    }
    let status = proxy.wait_exit().await;
    assert!(status.success(), "{status:?}");
    let used: BTreeSet<_> = workers_of(&proxy, &paths).await.into_iter().collect();
    assert!(used.len() >= 2, "in flight on several workers: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_writer_releases_the_writes_held_on_every_worker() {
    let a = Backend::start("a").await;
    let fake = FakeElection::start(doc(1, 1, None, &[("a", a.addr)], None)).await;
    let cfg = format!(
        "topology: {{ election_url: \"{}\" }}\nthreads: 3\naccess_log: all\nfailover: {{ hold_writes: 30s }}\n",
        fake.url
    );
    let proxy = Proxy::start(&cfg).await;
    let paths: Vec<String> = (0..12).map(|i| format!("/kv/held-{i}")).collect();
    let mut writes = Vec::new();
    for p in &paths {
        let (addr, p) = (proxy.addr, p.clone());
        writes.push(tokio::spawn(async move {
            send(addr, "PUT", &p, &[], b"v").await
        }));
    }
    eventually("every write is held", || async {
        proxy.metric("rw_proxy_held_writes").await == paths.len() as f64
    })
    .await;
    assert_eq!(a.count(), 0);
    fake.publish(doc(2, 2, Some(("a", a.addr)), &[], None));
    for w in writes {
        let r = w.await.unwrap().unwrap();
        assert_eq!((r.status.as_u16(), r.text()), (200, "a".to_string()));
    }
    for p in &paths {
        assert_eq!(a.count_path(p), 1, "{p} applied once");
    }
    let used: BTreeSet<_> = workers_of(&proxy, &paths).await.into_iter().collect();
    assert!(used.len() >= 2, "held on several workers: {used:?}");
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 0.0);
}
