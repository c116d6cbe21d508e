//! Telling the elected node it is the writer (before it is recorded and published), checking
//! that the published writer still is, and reading replication offsets for
//! `candidate_order: most_caught_up`.
//!
//! The node library activates its distributor (the writer role) with `start`, then `finish`
//! polled until it answers `true`. `check` (the library's "am I the distributor" call) comes
//! first: a node that already is the writer is not promoted again, because the library refuses a
//! second activation (an error, or "not a distributor" from `finish` once the switch is done).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{ProgressConfig, PromotionConfig};
use crate::decision::{Progress, PromotionStep};
use topology_client::http::{call, node_url, HttpClient};

#[derive(Clone)]
pub struct Promoter {
    cfg: PromotionConfig,
    client: HttpClient,
}

/// Why a promotion did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionError {
    pub step: PromotionStep,
    /// The HTTP status of the failing answer; `None` when there was none (timeout, refused) or
    /// the step answered 2xx but never the expected body.
    pub status: Option<u16>,
    pub message: String,
}

impl fmt::Display for PromotionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the published writer said to `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// It is the writer.
    Ok,
    /// It answered, and not with `expect_body`: it lost the writer role (e.g. restarted).
    NotDistributor(String),
    /// No usable answer (timeout, refused, an error status): says nothing about the role.
    Error(String),
}

impl CheckResult {
    pub fn label(&self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::NotDistributor(_) => "not_distributor",
            CheckResult::Error(_) => "error",
        }
    }
}

impl Promoter {
    pub fn new(cfg: PromotionConfig, client: HttpClient) -> Self {
        Promoter { cfg, client }
    }

    pub fn is_configured(&self) -> bool {
        self.cfg.is_configured()
    }

    pub fn has_check(&self) -> bool {
        self.cfg.check.is_some()
    }

    /// Asks the node at `address` whether it is the writer; `None` without a `check` call.
    pub async fn check(&self, address: &str, timeout: Duration) -> Option<CheckResult> {
        let check = self.cfg.check.as_ref()?;
        let url = node_url(address, &check.path);
        Some(
            match call(&self.client, http::Method::GET, &url, Bytes::new(), timeout).await {
                Ok((status, _, body)) if status.is_success() => {
                    if body_matches(&body, &check.expect_body) {
                        CheckResult::Ok
                    } else {
                        CheckResult::NotDistributor(format!(
                            "GET {url} answered {}",
                            truncate(&body_text(&body))
                        ))
                    }
                }
                Ok((status, _, body)) => CheckResult::Error(format!(
                    "GET {url} answered {status}: {}",
                    truncate(&body_text(&body))
                )),
                Err(e) => CheckResult::Error(format!("GET {url}: {e}")),
            },
        )
    }

    /// Ok once the node at `address` is the writer; Err says which step failed and how.
    pub async fn promote(&self, address: &str) -> Result<(), PromotionError> {
        if let Some(CheckResult::Ok) = self.check(address, Duration::from_secs(5)).await {
            return Ok(());
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
                    return Err(PromotionError {
                        step: PromotionStep::Start,
                        status: Some(status.as_u16()),
                        message: format!(
                            "{} {url} answered {status}: {}",
                            start.method,
                            truncate(&body_text(&body))
                        ),
                    })
                }
                Err(e) => {
                    return Err(PromotionError {
                        step: PromotionStep::Start,
                        status: None,
                        message: format!("{} {url}: {e}", start.method),
                    })
                }
            }
        }
        if let Some(finish) = &self.cfg.finish {
            let url = node_url(address, &finish.path);
            let deadline = Instant::now() + finish.timeout;
            let want = finish.until_body.trim();
            let mut last = String::from("no answer");
            let mut last_status = None;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(PromotionError {
                        step: PromotionStep::Finish,
                        status: last_status,
                        message: format!(
                            "{} {url} did not answer {want:?} within {} (last: {last})",
                            finish.method,
                            humantime::format_duration(finish.timeout)
                        ),
                    });
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
                        if want.is_empty() || body_matches(&body, want) {
                            return Ok(());
                        }
                        last_status = None;
                        last = format!("{status} {}", truncate(&body_text(&body)));
                    }
                    Ok((status, _, body)) => {
                        last_status = Some(status.as_u16());
                        last = format!("{status} {}", truncate(&body_text(&body)))
                    }
                    Err(e) => {
                        last_status = None;
                        last = e.to_string()
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(finish.interval.min(left)).await;
            }
        }
        Ok(())
    }
}

/// Whether an answer says `want`. The library answers its booleans as `text/plain` in some
/// frameworks and as JSON in others, so surrounding whitespace, one level of JSON string quotes
/// and ASCII case are not significant: `true`, ` "true"\n` and `TRUE` all match `true`.
pub fn body_matches(body: &[u8], want: &str) -> bool {
    let norm = |s: &str| -> String {
        let t = s.trim();
        match serde_json::from_str::<String>(t) {
            Ok(inner) => inner.trim().to_string(),
            Err(_) => t.to_string(),
        }
    };
    norm(&String::from_utf8_lossy(body)).eq_ignore_ascii_case(&norm(want))
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
    fn booleans_match_in_every_spelling_the_library_uses() {
        for body in [
            "true",
            "true\n",
            "  true  ",
            "\"true\"",
            " \"true\" \r\n",
            "TRUE",
            "\" true \"",
        ] {
            assert!(body_matches(body.as_bytes(), "true"), "{body:?}");
        }
        for body in [
            "false",
            "\"false\"",
            "",
            "truex",
            "\"true",
            "{\"v\":true}",
            "1",
        ] {
            assert!(!body_matches(body.as_bytes(), "true"), "{body:?}");
        }
        // The configured side is normalised the same way.
        assert!(body_matches(b"true", "\"true\""));
        assert!(body_matches(b"ok", " ok "));
        assert!(!body_matches(b"true", "false"));
    }

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
