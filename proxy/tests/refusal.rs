//! A write refused by a storage node that is not the distributor (`400` + `StorageNode-NAD:
//! true`, or `Microstream-NAD: true` from older node libraries; nothing applied) is held and
//! sent again, never passed to the client; any other 400 is. Real rw-proxy process, real backends and a fake writer-election on 127.0.0.1.

mod support;

use support::election::{doc, FakeElection};
use support::{eventually, send, Backend, Proxy, Reply};

fn election_cfg(url: &str, extra: &str) -> String {
    format!("topology: {{ election_url: \"{url}\" }}\n{extra}")
}

fn put(proxy: &Proxy, path: &str, body: Vec<u8>) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let (addr, path) = (proxy.addr, path.to_string());
    tokio::spawn(async move { send(addr, "PUT", &path, &[], &body).await })
}

const HELD: &str = r#"rw_proxy_writer_refusals_total{outcome="held"}"#;
const NOT_RESENDABLE: &str = r#"rw_proxy_writer_refusals_total{outcome="not_resendable"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_held_and_applied_once_on_the_new_writer() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    // a was published but is not the distributor (its promotion was lost).
    a.refuse_writes(true);
    let fake = FakeElection::start(doc(1, 1, Some(("a", a.addr)), &[("b", b.addr)], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 30s }\n")).await;

    let write = put(&proxy, "/kv/x", b"value-1".to_vec());
    eventually("a refused the write", || async { !a.refused().is_empty() }).await;
    eventually("the proxy counted the refusal", || async {
        proxy.metric(HELD).await >= 1.0
    })
    .await;
    assert!(
        !write.is_finished(),
        "the refusal must not reach the client"
    );

    // The election fails over to b: the held write goes there, once, whole, at the new epoch.
    fake.publish(doc(2, 2, Some(("b", b.addr)), &[("a", a.addr)], None));
    let r = write.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "b".to_string()));
    let applied: Vec<_> = b.seen().into_iter().filter(|s| s.path == "/kv/x").collect();
    assert_eq!(applied.len(), 1, "applied exactly once");
    assert_eq!(&applied[0].body[..], b"value-1");
    assert_eq!(
        applied[0]
            .headers
            .get("x-writer-epoch")
            .unwrap()
            .to_str()
            .unwrap(),
        "2"
    );
    assert_eq!(
        a.count_path("/kv/x"),
        0,
        "nothing applied on the refusing node"
    );
    for refused in a.refused() {
        assert_eq!(
            &refused.body[..],
            b"value-1",
            "every try carried the whole body"
        );
    }
    // A try that was refused just as the new topology arrived marks the old writer once more;
    // that mark names the old epoch, holds nothing, and lapses with its backoff.
    eventually("the refusal mark lapses", || async {
        proxy.metric("rw_proxy_writer_suspect").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_promoted_again_takes_the_held_write_without_a_new_topology() {
    let a = Backend::start("a").await;
    // The MicroStream releases' name of the header.
    a.refuse_writes_as_microstream();
    let fake = FakeElection::start(doc(3, 1, Some(("a", a.addr)), &[], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 30s }\n")).await;

    let write = put(&proxy, "/kv/y", b"value-2".to_vec());
    // Several tries, each after a backoff: the node keeps refusing meanwhile.
    eventually("a refused the write twice", || async {
        a.refused().len() >= 2
    })
    .await;
    assert!(!write.is_finished());
    // writer-election re-promotes a at its own epoch: nothing new is published.
    a.refuse_writes(false);
    let r = write.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "a".to_string()));
    assert_eq!(a.count_path("/kv/y"), 1);
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="released"}"#)
            .await,
        proxy.metric(HELD).await,
        "every refusal held the write once, and every hold was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_400_goes_back_to_the_client_unchanged_and_is_sent_once() {
    let a = Backend::start("a").await;
    let fake = FakeElection::start(doc(1, 1, Some(("a", a.addr)), &[], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "")).await;
    let r = send(proxy.addr, "PUT", "/bad/z", &[], b"junk")
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (400, "bad input".to_string())
    );
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(a.count_path("/bad/z"), 1);
    assert_eq!(proxy.metric(HELD).await, 0.0);
    assert_eq!(proxy.metric("rw_proxy_held_writes").await, 0.0);
    // A read is never a refused write, whatever it is answered.
    a.refuse_writes(true);
    let r = send(proxy.addr, "GET", "/bad/r", &[], b"").await.unwrap();
    assert_eq!(r.status.as_u16(), 400);
    assert_eq!(proxy.metric(HELD).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_until_the_hold_ends_gets_503_no_writer() {
    let a = Backend::start("a").await;
    a.refuse_writes(true);
    let fake = FakeElection::start(doc(1, 1, Some(("a", a.addr)), &[], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 1s }\n")).await;
    let r = send(proxy.addr, "PUT", "/kv/w", &[], b"v").await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.json()["error"], "no_writer");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_ne!(
        r.header("x-backend"),
        Some("a"),
        "the node's answer stays behind"
    );
    assert!(!a.refused().is_empty());
    assert_eq!(a.count_path("/kv/w"), 0);
    assert!(proxy.metric(HELD).await >= 1.0);
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_write_holds_total{outcome="timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_too_large_to_send_again_gets_503_at_once() {
    let a = Backend::start("a").await;
    a.refuse_writes(true);
    let fake = FakeElection::start(doc(1, 1, Some(("a", a.addr)), &[], None)).await;
    let proxy = Proxy::start(&election_cfg(&fake.url, "failover: { hold_writes: 30s }\n")).await;
    // Larger than the request body Pingora keeps for a retry.
    let body = vec![b'x'; 256 * 1024];
    let r = send(proxy.addr, "PUT", "/kv/big", &[], &body)
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.json()["error"], "no_writer");
    assert_eq!(a.refused().len(), 1, "not sent again");
    assert_eq!(proxy.metric(NOT_RESENDABLE).await, 1.0);
    assert_eq!(proxy.metric(HELD).await, 0.0);
}
