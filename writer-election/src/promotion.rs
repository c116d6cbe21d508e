//! Telling the elected node it is the writer (before it is recorded and published), and reading
//! replication offsets for `candidate_order: most_caught_up`.
//!
//! Eclipse DataGrid: `POST .../activate-distributor/start`, then `POST .../activate-distributor/finish`
//! until it answers `true`. With `check` configured, a node that already answers `expect_body`
//! is not promoted again (re-promoting an active writer is what `check` prevents).

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{ProgressConfig, PromotionConfig};
use crate::decision::Progress;
use crate::http::{call, node_url, HttpClient};

pub struct Promoter {
    cfg: PromotionConfig,
    client: HttpClient,
}

impl Promoter {
    pub fn new(cfg: PromotionConfig, client: HttpClient) -> Self {
        Promoter { cfg, client }
    }

    pub fn is_configured(&self) -> bool {
        self.cfg.is_configured()
    }

    /// Ok once the node at `address` is the writer; Err says which step failed.
    pub async fn promote(&self, address: &str) -> Result<(), String> {
        if let Some(check) = &self.cfg.check {
            let url = node_url(address, &check.path);
            if let Ok((status, _, body)) = call(
                &self.client,
                http::Method::GET,
                &url,
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            {
                if status.is_success() && body_text(&body) == check.expect_body.trim() {
                    return Ok(());
                }
            }
        }
        if let Some(start) = &self.cfg.start {
            let url = node_url(address, &start.path);
            match call(
                &self.client,
                start.method.clone(),
                &url,
                Bytes::new(),
                start.timeout,
            )
            .await
            {
                Ok((status, _, _)) if status.is_success() => {}
                Ok((status, _, body)) => {
                    return Err(format!(
                        "{} {url} answered {status}: {}",
                        start.method,
                        truncate(&body_text(&body))
                    ))
                }
                Err(e) => return Err(format!("{} {url}: {e}", start.method)),
            }
        }
        if let Some(finish) = &self.cfg.finish {
            let url = node_url(address, &finish.path);
            let deadline = Instant::now() + finish.timeout;
            let want = finish.until_body.trim();
            let mut last = String::from("no answer");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "{} {url} did not answer {want:?} within {} (last: {last})",
                        finish.method,
                        humantime::format_duration(finish.timeout)
                    ));
                }
                let per_call = left.min(Duration::from_secs(5));
                match call(
                    &self.client,
                    finish.method.clone(),
                    &url,
                    Bytes::new(),
                    per_call,
                )
                .await
                {
                    Ok((status, _, body)) if status.is_success() => {
                        let text = body_text(&body);
                        if want.is_empty() || text == want {
                            return Ok(());
                        }
                        last = format!("{status} {}", truncate(&text));
                    }
                    Ok((status, _, body)) => {
                        last = format!("{status} {}", truncate(&body_text(&body)))
                    }
                    Err(e) => last = e.to_string(),
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(finish.interval.min(left)).await;
            }
        }
        Ok(())
    }
}

fn body_text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn truncate(s: &str) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// Parses a replication offset: the JSON value at `pointer` (a number, or a string of digits).
pub fn parse_offset(body: &[u8], pointer: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let v = if pointer.is_empty() {
        &v
    } else {
        v.pointer(pointer)?
    };
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub async fn fetch_progress(
    client: &HttpClient,
    address: &str,
    cfg: &ProgressConfig,
    timeout: Duration,
) -> Progress {
    let url = node_url(address, &cfg.path);
    match call(
        client,
        http::Method::GET,
        &url,
        Bytes::new(),
        cfg.timeout.unwrap_or(timeout),
    )
    .await
    {
        Ok((status, _, body)) if status.is_success() => {
            match parse_offset(&body, &cfg.json_pointer) {
                Some(o) => Progress::Offset(o),
                None => Progress::Unavailable,
            }
        }
        _ => Progress::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_offset(br#"{"offset": 42}"#, "/offset"), Some(42));
        assert_eq!(parse_offset(br#"{"a": {"b": "17"}}"#, "/a/b"), Some(17));
        assert_eq!(parse_offset(b"99", ""), Some(99));
        assert_eq!(parse_offset(br#"{"offset": -1}"#, "/offset"), None);
        assert_eq!(parse_offset(br#"{"offset": 1}"#, "/nope"), None);
        assert_eq!(parse_offset(b"junk", ""), None);
    }
}
