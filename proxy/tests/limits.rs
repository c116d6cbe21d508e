//! Limits and malformed requests, with raw sockets where a well-behaved client would not go.

mod support;

use std::time::Duration;

use support::{raw, send, static_topology, Backend, Proxy};

async fn setup() -> (Backend, Backend, Proxy) {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}limits: {{ max_body: 1KiB, max_header_bytes: 2KiB }}\n",
        static_topology(Some(writer.addr), &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    (writer, reader, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_and_the_backend_never_sees_it() {
    let (writer, reader, proxy) = setup().await;

    // Declared length over the limit: refused on the headers, before any body byte.
    let head = format!(
        "PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b'a', 4096));
    let resp = raw(proxy.addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\":\"body_too_large\""), "{resp}");

    // No length declared (chunked): cut off when the limit is passed.
    let chunk = vec![b'b'; 600];
    let mut req =
        b"POST /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend(&chunk);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let resp = raw(proxy.addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    // A body within the limit passes, so the limit is the reason.
    let ok = send(proxy.addr, "PUT", "/kv/small", &[], &[b'c'; 1000])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);

    // Give any stray request time to land before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paths: Vec<String> = writer.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/kv/small"], "the backend saw only the small body");
    assert_eq!(reader.count(), 0);
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"rw_proxy_requests_total{method="PUT",status="413",target="writer"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_get_431() {
    let (writer, reader, proxy) = setup().await;
    let big = "x".repeat(3000);
    let r = send(proxy.addr, "GET", "/kv/a", &[("X-Big", big.as_str())], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
    let r = send(proxy.addr, "GET", "/kv/a", &[("X-Small", "y")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(reader.count(), 1);
    assert_eq!(writer.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_400_and_the_proxy_keeps_serving() {
    let (_writer, reader, proxy) = setup().await;
    let resp = raw(proxy.addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let r = send(proxy.addr, "GET", "/kv/a", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(reader.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_and_is_not_asked_twice() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let other = Backend::start("reader-1").await;
    let cfg = format!(
        "{}timeouts: {{ read: 300ms }}\n",
        static_topology(Some(writer.addr), &[reader.addr, other.addr])
    );
    let proxy = Proxy::start(&cfg).await;

    let r = send(proxy.addr, "PUT", "/slow/3000", &[], b"v")
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    let r = send(proxy.addr, "GET", "/slow/3000", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 504);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writer.count(), 1, "a timed-out write is never sent again");
    assert_eq!(
        reader.count() + other.count(),
        1,
        "a timed-out read is not replayed either: it reached the upstream"
    );
}

/// Reads one response with a Content-Length body off a keep-alive connection.
async fn read_response(s: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read");
        assert_eq!(n, 1, "closed before the response header: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// rw-proxy waits for each request itself (idle connections hold no request state) and hands
/// Pingora what it read: a request split over many packets, or a header and its body in one,
/// must come out whole, and the connection must stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_pieces_or_in_one_packet_are_forwarded_whole_on_one_connection() {
    use tokio::io::AsyncWriteExt;
    let (writer, _reader, proxy) = setup().await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");

    for i in 0..3 {
        let req =
            format!("PUT /kv/piece{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nvalue{i}");
        for chunk in req.as_bytes().chunks(5) {
            s.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "writer");
    }
    let req = "PUT /kv/whole HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nwhole";
    s.write_all(req.as_bytes()).await.expect("write");
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let seen = writer.seen();
    let got: Vec<(&str, &[u8])> = seen
        .iter()
        .map(|r| (r.path.as_str(), r.body.as_ref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/kv/piece0", &b"value0"[..]),
            ("/kv/piece1", &b"value1"[..]),
            ("/kv/piece2", &b"value2"[..]),
            ("/kv/whole", &b"whole"[..]),
        ]
    );
}

/// Sends `parts` on one connection with `pause` between them (stopping when the proxy closes)
/// and returns what came back before the close, and how long after the first part it closed.
async fn trickle(
    addr: std::net::SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let send = async {
        for part in parts {
            if wr.write_all(part).await.is_err() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        // Then silence: the proxy has to end it.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = send => unreachable!(),
        r = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)) => {
            assert!(r.is_ok(), "the proxy never closed the connection");
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_header_gets_408_at_the_header_deadline() {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}timeouts: {{ client_header: 1s }}\n",
        static_topology(Some(writer.addr), &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    // One header line every 300 ms: each read is quick, the header as a whole is not.
    let lines: Vec<Vec<u8>> = std::iter::once(b"GET /kv/a HTTP/1.1\r\n".to_vec())
        .chain((0..20).map(|i| format!("X-{i}: a\r\n").into_bytes()))
        .collect();
    let parts: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
    let (answer, took) = trickle(proxy.addr, &parts, Duration::from_millis(300)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert!(took < Duration::from_secs(6), "closed only after {took:?}");
    assert_eq!(reader.count(), 0, "no part of the request went upstream");
    assert_eq!(
        proxy
            .metric(r#"rw_proxy_client_refusals_total{reason="header_timeout"}"#)
            .await,
        1.0
    );
    // The proxy goes on serving.
    assert_eq!(support::get(proxy.addr, "/kv/a").await.status, 200);
}

/// A PUT whose body stops after `sent` of its `length` bytes, against a proxy with these
/// timeouts.
async fn stalled_body(timeouts: &str, length: usize, sent: usize) {
    let writer = Backend::start("writer").await;
    let reader = Backend::start("reader-0").await;
    let cfg = format!(
        "{}timeouts: {timeouts}\n",
        static_topology(Some(writer.addr), &[reader.addr])
    );
    let proxy = Proxy::start(&cfg).await;
    let mut head =
        format!("PUT /kv/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
            .into_bytes();
    head.extend(std::iter::repeat_n(b'a', sent));
    let (answer, took) = trickle(proxy.addr, &[&head], Duration::from_millis(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{timeouts}: {answer}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
    let m = proxy.metrics().await;
    assert!(
        !m.contains("rw_proxy_upstream_errors_total{"),
        "the client's stall counted against the node: {m}"
    );
    assert!(
        m.contains(r#"rw_proxy_requests_total{method="PUT",status="408",target="writer"} 1"#),
        "{m}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        writer.count_path("/kv/stalled"),
        0,
        "a partial write was applied"
    );
    let ok = send(proxy.addr, "PUT", "/kv/next", &[], b"v")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_its_body_gets_408_and_the_node_is_not_blamed() {
    // A small body is read whole before anything goes upstream: the node sees nothing.
    stalled_body("{ client_body: 1s, read: 30s }", 10, 3).await;
    // A large one is streamed: the node has part of it when the client stops, and its own
    // answer timer is shorter. Still the client's stall, and nothing is applied.
    stalled_body("{ client_body: 1s, read: 500ms }", 200_000, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_still_sending_is_read_out_before_the_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_writer, reader, proxy) = setup().await;
    // A refused request whose client goes on sending (its body). Closing a socket with unread
    // bytes makes the kernel send a reset, which on a real network can overtake the answer
    // still in flight and destroy it; so the proxy reads and drops what comes for a while
    // (a lingering close, as nginx does). Seen from the client: the answer, then its further
    // writes are still taken instead of being reset.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PUT ! HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(matches!(read, Ok(Ok(_))), "{read:?}: {text}");
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = s.write_all(&[b'z'; 16384]).await;
        assert!(
            sent.is_ok(),
            "the proxy reset the connection at once: {sent:?}"
        );
    }
    assert_eq!(reader.count(), 0);
}
