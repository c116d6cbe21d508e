//! `loadtest run --read-your-writes`: each worker writes a key nobody wrote before and reads it
//! back, again and again, as one client would. With the token on, the worker keeps what the
//! proxy gave it as a browser does (a cookie jar: `Set-Cookie` stored, `Cookie` sent; or the
//! token header with `--token-header`), so the read carries the read-your-writes token of the
//! write before it; with it off the same pairs go without, which shows what the token buys.
//!
//! A read is stale when it does not return the value its pair just wrote: another value, or
//! 404 (the key is the pair's own, so 404 means the write is not there). Failed writes start no
//! read; failed reads are errors, neither fresh nor stale.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use http::{HeaderMap, Method};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::conn::{Conn, ErrorKind};
use super::history::WriteRecord;
use super::stats::{OpClass, Stats};
use super::{
    build_request, header_str, micros, response_epoch, send_one, value_for, Mode, Shared, WorkerOut,
};

/// What `--read-your-writes` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    /// Carry the token the proxy returned.
    On,
    /// The same pairs without any token (no cookies kept, no token header).
    Off,
}

#[derive(Debug, Clone)]
pub struct PairConfig {
    pub token: TokenUse,
    /// The token travels in this header instead of a cookie (rw-proxy's `token: header`).
    pub token_header: Option<HeaderName>,
    /// The read waits a time drawn uniformly from this range after its write's answer.
    pub read_delay: ReadDelay,
    /// Stop after this many pairs (else only the duration ends the run).
    pub pairs: Option<u64>,
    /// Prefix of every key of this run, so that a run against a long-lived cluster still
    /// writes keys nobody wrote before.
    pub run_id: String,
}

impl PairConfig {
    pub fn new(token: TokenUse) -> Self {
        PairConfig {
            token,
            token_header: None,
            read_delay: ReadDelay::default(),
            pairs: None,
            run_id: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadDelay {
    pub min: Duration,
    pub max: Duration,
}

impl ReadDelay {
    fn draw(&self, rng: &mut SmallRng) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        let span = (self.max - self.min).as_micros() as u64;
        self.min + Duration::from_micros(rng.random_range(0..=span))
    }
}

/// `500ms` (always that long) or `0ms..1s` (uniformly between the two).
pub fn parse_read_delay(s: &str) -> Result<ReadDelay, String> {
    let parse = |p: &str| {
        humantime::parse_duration(p.trim())
            .map_err(|e| format!("{p:?}: {e} (a duration such as 300ms or 1s)"))
    };
    match s.split_once("..") {
        None => {
            let d = parse(s)?;
            Ok(ReadDelay { min: d, max: d })
        }
        Some((a, b)) => {
            let (min, max) = (parse(a)?, parse(b)?);
            if min > max {
                return Err(format!("{s:?}: the range ends before it starts"));
            }
            Ok(ReadDelay { min, max })
        }
    }
}

/// A client's cookies, as a browser keeps them for one site: the last value of each name,
/// dropped when the server expires it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieJar {
    cookies: BTreeMap<String, String>,
}

impl CookieJar {
    /// Takes every `Set-Cookie` of an answer. A cookie with `Max-Age=0` (or negative) or an
    /// empty value is removed; attributes other than that are not needed by one client of one
    /// origin and are ignored.
    pub fn store(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                continue;
            }
            let expired = parts.any(|a| {
                a.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("max-age")
                        && v.trim().parse::<i64>().is_ok_and(|n| n <= 0)
                })
            });
            if expired || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// The `Cookie` header to send, when there is any cookie.
    pub fn header(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let s: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        HeaderValue::from_str(&s.join("; ")).ok()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }
}

/// What one client carries from answer to request: the jar, or the token header's value.
#[derive(Debug, Clone, Default)]
struct Carried {
    jar: CookieJar,
    header: Option<HeaderValue>,
}

impl Carried {
    fn take(&mut self, cfg: &PairConfig, headers: &HeaderMap) {
        if cfg.token == TokenUse::Off {
            return;
        }
        match &cfg.token_header {
            Some(name) => {
                if let Some(v) = headers.get(name) {
                    self.header = Some(v.clone());
                }
            }
            None => self.jar.store(headers),
        }
    }

    fn add_to(&self, cfg: &PairConfig, headers: &mut HeaderMap) {
        if cfg.token == TokenUse::Off {
            return;
        }
        match (&cfg.token_header, &self.header) {
            (Some(name), Some(v)) => {
                headers.insert(name.clone(), v.clone());
            }
            (Some(_), None) => {}
            (None, _) => {
                if let Some(c) = self.jar.header() {
                    headers.insert(COOKIE, c);
                }
            }
        }
    }
}

/// How a read of a pair came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadVerdict {
    Fresh,
    /// What was read instead (`404` or the value).
    Stale(String),
    Error(ErrorKind),
}

/// The read of a key whose write `written` was just acknowledged.
pub fn judge_read(status: u16, body: &[u8], written: &str) -> ReadVerdict {
    match status {
        200 if body == written.as_bytes() => ReadVerdict::Fresh,
        200 => {
            let got = String::from_utf8_lossy(body);
            let short: String = got.chars().take(40).collect();
            ReadVerdict::Stale(format!("value {short:?}"))
        }
        404 => ReadVerdict::Stale("404".into()),
        s => ReadVerdict::Error(ErrorKind::Status(s)),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PairStats {
    /// Pairs whose write was acknowledged and whose read was answered: fresh + stale.
    pub checked: u64,
    pub fresh: u64,
    pub stale: u64,
    /// Pairs whose write failed (no read sent).
    pub write_failed: u64,
    /// Pairs whose read failed (no answer, or an error status).
    pub read_failed: u64,
    /// Acknowledged writes whose answer carried a token (a cookie or the token header).
    pub tokens_issued: u64,
    /// Checked reads by the node that answered (`X-Node`; `?` when absent).
    pub reads_by_node: BTreeMap<String, u64>,
    pub stale_by_node: BTreeMap<String, u64>,
    pub stale_examples: Vec<String>,
}

impl PairStats {
    pub fn merge(&mut self, o: &PairStats) {
        self.checked += o.checked;
        self.fresh += o.fresh;
        self.stale += o.stale;
        self.write_failed += o.write_failed;
        self.read_failed += o.read_failed;
        self.tokens_issued += o.tokens_issued;
        for (k, v) in &o.reads_by_node {
            *self.reads_by_node.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.stale_by_node {
            *self.stale_by_node.entry(k.clone()).or_default() += v;
        }
        for e in &o.stale_examples {
            if self.stale_examples.len() < 10 {
                self.stale_examples.push(e.clone());
            }
        }
    }
}

/// The `read_your_writes` part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairReport {
    pub token: TokenUse,
    /// `cookie` (the jar) or the token header's name.
    pub carried_in: String,
    pub read_delay_ms: [u64; 2],
    #[serde(flatten)]
    pub stats: PairStats,
}

impl PairReport {
    pub fn new(cfg: &PairConfig, stats: PairStats) -> Self {
        PairReport {
            token: cfg.token,
            carried_in: cfg
                .token_header
                .as_ref()
                .map(|h| h.as_str().to_owned())
                .unwrap_or_else(|| "cookie".into()),
            read_delay_ms: [
                cfg.read_delay.min.as_millis() as u64,
                cfg.read_delay.max.as_millis() as u64,
            ],
            stats,
        }
    }
}

fn has_token(cfg: &PairConfig, headers: &HeaderMap) -> bool {
    match &cfg.token_header {
        Some(h) => headers.contains_key(h),
        None => headers.contains_key(SET_COOKIE),
    }
}

/// One client: PUT a fresh key, wait the read delay, GET it, judge; next pair.
pub(super) async fn pair_worker(id: usize, shared: Arc<Shared>, pc: Arc<PairConfig>) -> WorkerOut {
    let cfg = &shared.cfg;
    let mut rng = SmallRng::seed_from_u64(rand::rng().random());
    let mut conn: Option<Conn> = None;
    let mut stats = Stats::default();
    let mut pairs = PairStats::default();
    let mut history = Vec::new();
    let mut carried = Carried::default();
    let mut n: u64 = 0;
    loop {
        let Some(intended) = super::next_slot(&shared, pc.pairs).await else {
            break;
        };
        n += 1;
        let key = format!("p{}-{id}-{n}", pc.run_id);
        let value = value_for(id, n, cfg.value_size);

        let mut req = build_request(
            &cfg.target,
            &cfg.headers,
            Method::PUT,
            &key,
            Bytes::from(value.clone()),
        );
        carried.add_to(&pc, req.headers_mut());
        if matches!(cfg.mode, Mode::Open { .. }) {
            stats.record_lateness(micros(Instant::now().saturating_duration_since(intended)));
        }
        let put = send_one(&mut conn, cfg, req).await;
        let acked_at = Instant::now();
        let (status, outcome, epoch, node) = match &put.response {
            Ok(resp) => {
                let ok = resp.status.is_success();
                if ok {
                    stats.record(
                        OpClass::Write,
                        micros(acked_at - intended),
                        micros(acked_at - put.sent_at),
                    );
                    carried.take(&pc, &resp.headers);
                    if has_token(&pc, &resp.headers) {
                        pairs.tokens_issued += 1;
                    }
                } else {
                    stats.error(OpClass::Write, ErrorKind::Status(resp.status.as_u16()));
                }
                (
                    Some(resp.status.as_u16()),
                    if ok {
                        "ok".to_owned()
                    } else {
                        ErrorKind::Status(resp.status.as_u16()).label()
                    },
                    cfg.record_history
                        .then(|| response_epoch(resp, ok))
                        .flatten(),
                    header_str(&resp.headers, "x-node"),
                )
            }
            Err(kind) => {
                stats.error(OpClass::Write, *kind);
                (None, kind.label(), None, None)
            }
        };
        shared.done.fetch_add(1, Ordering::Relaxed);
        let acked = outcome == "ok";
        if cfg.record_history {
            history.push(WriteRecord {
                worker: id,
                key: key.clone(),
                value: value.clone(),
                intended_us: micros(intended - shared.start),
                sent_us: micros(put.sent_at - shared.start),
                ack_us: micros(acked_at - shared.start),
                status,
                outcome,
                epoch,
                node,
            });
        }
        if !acked {
            pairs.write_failed += 1;
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if conn.is_none() {
                // Nothing listening: do not spin on connect errors.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }

        let delay = pc.read_delay.draw(&mut rng);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut req = build_request(&cfg.target, &cfg.headers, Method::GET, &key, Bytes::new());
        carried.add_to(&pc, req.headers_mut());
        let read_at = Instant::now();
        let get = send_one(&mut conn, cfg, req).await;
        let done_at = Instant::now();
        shared.done.fetch_add(1, Ordering::Relaxed);
        let verdict = match &get.response {
            Ok(resp) => {
                carried.take(&pc, &resp.headers);
                judge_read(resp.status.as_u16(), &resp.body, &value)
            }
            Err(kind) => ReadVerdict::Error(*kind),
        };
        let node = get
            .response
            .as_ref()
            .ok()
            .and_then(|r| header_str(&r.headers, "x-node"))
            .unwrap_or_else(|| "?".into());
        let (latency, service) = (micros(done_at - read_at), micros(done_at - get.sent_at));
        match verdict {
            ReadVerdict::Fresh => {
                stats.record(OpClass::Read, latency, service);
                pairs.checked += 1;
                pairs.fresh += 1;
                *pairs.reads_by_node.entry(node).or_default() += 1;
            }
            ReadVerdict::Stale(got) => {
                if got == "404" {
                    stats.record_not_found(latency, service);
                } else {
                    stats.record(OpClass::Read, latency, service);
                }
                pairs.checked += 1;
                pairs.stale += 1;
                if pairs.stale_examples.len() < 10 {
                    pairs.stale_examples.push(format!(
                        "{key}: {node} answered {got} {}ms after the write's answer",
                        (read_at - acked_at).as_millis()
                    ));
                }
                *pairs.reads_by_node.entry(node.clone()).or_default() += 1;
                *pairs.stale_by_node.entry(node).or_default() += 1;
            }
            ReadVerdict::Error(kind) => {
                stats.error(OpClass::Read, kind);
                pairs.read_failed += 1;
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    WorkerOut {
        stats,
        history,
        pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_jar_keeps_the_last_value_of_each_cookie_and_drops_expired_ones() {
        let mut jar = CookieJar::default();
        assert_eq!(jar.header(), None);
        jar.store(&set_cookies(&[
            "rwp_read_after=v1-3-10-w-1000; Path=/; Max-Age=10; HttpOnly; SameSite=Lax",
            "other=x",
        ]));
        assert_eq!(jar.get("rwp_read_after"), Some("v1-3-10-w-1000"));
        assert_eq!(
            jar.header().unwrap(),
            "other=x; rwp_read_after=v1-3-10-w-1000"
        );
        jar.store(&set_cookies(&["rwp_read_after=v1-3-11-w-1001; Path=/"]));
        assert_eq!(jar.get("rwp_read_after"), Some("v1-3-11-w-1001"));
        jar.store(&set_cookies(&[
            "other=gone; Max-Age=0",
            "broken",
            "=novalue",
        ]));
        assert_eq!(jar.get("other"), None);
        assert_eq!(jar.header().unwrap(), "rwp_read_after=v1-3-11-w-1001");
        jar.store(&HeaderMap::new());
        assert_eq!(jar.get("rwp_read_after"), Some("v1-3-11-w-1001"));
    }

    #[test]
    fn the_token_goes_out_only_when_on_and_in_the_place_asked_for() {
        let answer = set_cookies(&["rwp_read_after=t1; Path=/"]);
        let mut on = Carried::default();
        let cfg = PairConfig::new(TokenUse::On);
        on.take(&cfg, &answer);
        let mut h = HeaderMap::new();
        on.add_to(&cfg, &mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "rwp_read_after=t1");

        let off_cfg = PairConfig::new(TokenUse::Off);
        let mut off = Carried::default();
        off.take(&off_cfg, &answer);
        let mut h = HeaderMap::new();
        off.add_to(&off_cfg, &mut h);
        assert!(h.is_empty(), "{h:?}");

        let mut hdr_cfg = PairConfig::new(TokenUse::On);
        hdr_cfg.token_header = Some(HeaderName::from_static("x-read-after"));
        let mut by_header = Carried::default();
        let mut answer = HeaderMap::new();
        answer.insert("x-read-after", HeaderValue::from_static("t2"));
        by_header.take(&hdr_cfg, &answer);
        let mut h = HeaderMap::new();
        by_header.add_to(&hdr_cfg, &mut h);
        assert_eq!(h.get("x-read-after").unwrap(), "t2");
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn a_read_is_fresh_only_with_the_value_just_written() {
        assert_eq!(judge_read(200, b"v2", "v2"), ReadVerdict::Fresh);
        assert_eq!(
            judge_read(200, b"v1", "v2"),
            ReadVerdict::Stale("value \"v1\"".into())
        );
        assert_eq!(judge_read(404, b"", "v2"), ReadVerdict::Stale("404".into()));
        assert_eq!(
            judge_read(503, b"", "v2"),
            ReadVerdict::Error(ErrorKind::Status(503))
        );
    }

    #[test]
    fn read_delays_are_fixed_or_a_range() {
        let d = parse_read_delay("300ms").unwrap();
        assert_eq!(d.min, Duration::from_millis(300));
        assert_eq!(d.max, d.min);
        let r = parse_read_delay("0ms..1s").unwrap();
        assert_eq!((r.min, r.max), (Duration::ZERO, Duration::from_secs(1)));
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let x = r.draw(&mut rng);
            assert!(x <= r.max, "{x:?}");
        }
        assert!(parse_read_delay("1s..0s")
            .unwrap_err()
            .contains("ends before"));
        assert!(parse_read_delay("soon").is_err());
    }
}
