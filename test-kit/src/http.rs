//! One plain HTTP/1.1 request, for tests that only need the status and the body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// `method url` with `headers` and `body`; (status, body). Status 0 is a transport error or no
/// answer within `timeout`, with the reason as the body.
pub async fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = match b.body(Full::new(Bytes::from(body.to_string()))) {
        Ok(r) => r,
        Err(e) => return (0, format!("bad request: {e}")),
    };
    // The whole exchange, body included: a server that sends its head and then stalls (a
    // stopped process, a long poll) must not hold the test past `timeout`.
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        match resp.into_body().collect().await {
            Ok(b) => Ok((status, String::from_utf8_lossy(&b.to_bytes()).into_owned())),
            Err(e) => Err(format!("reading the body of a {status} answer: {e}")),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => (0, e),
        Err(_) => (0, "timeout".into()),
    }
}
