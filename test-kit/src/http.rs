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
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Ok(Err(e)) => (0, e.to_string()),
        Err(_) => (0, "timeout".into()),
    }
}
