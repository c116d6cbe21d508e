//! Read-your-writes (`routing.read_your_writes`): a write's answer carries a token that says
//! how far the writer's stream had to get to hold that write; a read that carries it back goes
//! only to readers known to be that far, else to the writer.
//!
//! The token: `v1-<epoch>-<offset>-<source>-<unix_ms>` ([`Token`]), `source` `w` when the writer
//! reported the offset on its answer (exact), `p` when it is the last published writer offset
//! (a lower bound: only the time rule may use it). [`decide`] is the decision, pure; the request
//! path reads the token only for a read routed to the readers, and compares it with what the
//! read pool published ([`Applied`], made when a topology arrives).

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;

use crate::balance::{Tried, TRIED_POSITIONS};
use crate::config::{ReadYourWritesConfig, TokenCarrier};
use crate::topology::{Progress, ReplicationView};

/// Where the token's offset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The writer's `offset_header` on the write's own answer.
    Writer,
    /// The last writer offset writer-election published: the write may be past it.
    Published,
}

impl Source {
    /// The `source` label of `rw_proxy_read_your_writes_tokens_total`.
    pub fn label(self) -> &'static str {
        match self {
            Source::Writer => "writer",
            Source::Published => "published",
        }
    }
}

/// A read-your-writes token as issued and carried back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub epoch: u64,
    pub offset: u64,
    pub source: Source,
    /// The proxy's wall clock when the write's answer arrived.
    pub unix_ms: u64,
}

/// Decimal digits only (no sign, no spaces), at most what a `u64` holds.
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl Token {
    /// `v1-<epoch>-<offset>-<w|p>-<unix_ms>`; anything else is `None` (garbled).
    pub fn parse(v: &[u8]) -> Option<Token> {
        let mut parts = v.split(|b| *b == b'-');
        if parts.next()? != b"v1" {
            return None;
        }
        let epoch = number(parts.next()?)?;
        let offset = number(parts.next()?)?;
        let source = match parts.next()? {
            b"w" => Source::Writer,
            b"p" => Source::Published,
            _ => return None,
        };
        let unix_ms = number(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Token {
            epoch,
            offset,
            source,
            unix_ms,
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let source = match self.source {
            Source::Writer => 'w',
            Source::Published => 'p',
        };
        let _ = write!(
            out,
            "v1-{}-{}-{source}-{}",
            self.epoch, self.offset, self.unix_ms
        );
    }
}

/// What one reader of the read pool is known to have applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Everything the writer had at this offset.
    pub offset: u64,
    /// Everything the writer had acknowledged by this moment (unix ms by writer-election's
    /// clock); `None` when the published lag is only a lower bound.
    pub until_ms: Option<u64>,
}

impl Applied {
    /// The writer itself (in the read pool with `writer_serves_reads`): it has every write of
    /// its epoch.
    pub const WRITER: Applied = Applied {
        offset: u64::MAX,
        until_ms: Some(u64::MAX),
    };

    /// A reader as the round published it.
    pub fn of(p: &Progress, round: &ReplicationView) -> Applied {
        Applied {
            offset: p.offset,
            until_ms: (!p.lag_at_least).then(|| round.measured_at_ms.saturating_sub(p.lag_ms)),
        }
    }

    /// Whether a reader at this point has the write of `token` (the token's epoch is the
    /// round's, checked by the caller).
    pub fn covers(&self, token: &Token) -> bool {
        (token.source == Source::Writer && self.offset >= token.offset)
            || self.until_ms.is_some_and(|t| t >= token.unix_ms)
    }
}

/// Why a read with a token goes to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToWriter {
    /// No reader of the read pool is known to have the write.
    NotCaughtUp,
    /// The token is of another epoch: offsets of another writer's stream say nothing here.
    OtherEpoch,
    /// The token cannot be read.
    Garbled,
    /// The topology carries no replication round to compare with.
    NoReplication,
}

impl ToWriter {
    pub fn as_str(self) -> &'static str {
        match self {
            ToWriter::NotCaughtUp => "not_caught_up",
            ToWriter::OtherEpoch => "other_epoch",
            ToWriter::Garbled => "garbled",
            ToWriter::NoReplication => "no_replication",
        }
    }
}

/// Where [`decide`] sends a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// No token, or one older than the window: an ordinary read.
    Ordinary,
    /// Balanced over the read pool without the positions in this set (they lack the write).
    Readers(Tried),
    Writer(ToWriter),
}

/// The read-your-writes decision for a read routed to the readers. Pure.
///
/// `token`: the value the read carried, if any. `now_ms`: the proxy's wall clock.
/// `epoch`: the topology's. `round`: its replication round (of that epoch, if any).
/// `pool`: what each position of the (lag-filtered) read pool is known to have applied.
pub fn decide(
    token: Option<&[u8]>,
    now_ms: u64,
    window: Duration,
    epoch: u64,
    round: Option<&ReplicationView>,
    pool: &[Option<Applied>],
) -> Read {
    let Some(raw) = token else {
        return Read::Ordinary;
    };
    let Some(token) = Token::parse(raw) else {
        return Read::Writer(ToWriter::Garbled);
    };
    // A token from the future (the clocks of two proxies disagree) is young.
    let age = now_ms.saturating_sub(token.unix_ms);
    if u128::from(age) >= window.as_millis() {
        return Read::Ordinary;
    }
    if token.epoch != epoch {
        return Read::Writer(ToWriter::OtherEpoch);
    }
    if round.is_none_or(|r| r.epoch != token.epoch) {
        return Read::Writer(ToWriter::NoReplication);
    }
    let mut skip = Tried::default();
    let mut pickable = false;
    let mut rest_lacking = false;
    let mut rest_has = false;
    for (i, applied) in pool.iter().enumerate() {
        let has = applied.is_some_and(|a| a.covers(&token));
        if i < TRIED_POSITIONS {
            if has {
                pickable = true;
            } else {
                skip.insert(i);
            }
        } else if has {
            rest_has = true;
        } else {
            rest_lacking = true;
        }
    }
    // Positions past the first 64 are left out together: if one of them lacks the write,
    // all of them go (never a stale answer; only fewer readers for this read).
    if rest_lacking {
        skip.insert_rest();
    } else if rest_has {
        pickable = true;
    }
    if pickable {
        Read::Readers(skip)
    } else {
        Read::Writer(ToWriter::NotCaughtUp)
    }
}

/// The proxy's wall clock, unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `routing.read_your_writes`, compiled for the request path.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    carrier: TokenCarrier,
    /// The cookie's name, or the request header's.
    name: Box<str>,
    pub offset_header: HeaderName,
    pub window: Duration,
    /// The answer's token field up to the token: `Set-Cookie: <name>=` or `<name>: `.
    line_start: Box<[u8]>,
    /// After the token: the cookie's attributes, then the line's end.
    line_end: Box<[u8]>,
}

impl ReadYourWrites {
    pub fn new(cfg: &ReadYourWritesConfig) -> ReadYourWrites {
        let (line_start, line_end) = match cfg.token {
            TokenCarrier::Cookie => {
                // Max-Age in whole seconds, rounded up: the cookie outlives the window a little
                // rather than dying before it (an expired token is an ordinary read anyway).
                let ms = cfg.window.as_millis();
                let max_age = ms.div_ceil(1000).max(1);
                (
                    format!("Set-Cookie: {}=", cfg.name),
                    format!("; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax\r\n"),
                )
            }
            TokenCarrier::Header => (format!("{}: ", cfg.name), "\r\n".to_string()),
        };
        ReadYourWrites {
            carrier: cfg.token,
            name: cfg.name.as_str().into(),
            offset_header: cfg.offset_header.clone(),
            window: cfg.window,
            line_start: line_start.into_bytes().into(),
            line_end: line_end.into_bytes().into(),
        }
    }

    /// The token a request carries (the first, if several), as sent.
    pub fn token_of<'a>(&self, headers: &[httparse::Header<'a>]) -> Option<&'a [u8]> {
        match self.carrier {
            TokenCarrier::Header => crate::h1::field(headers, &self.name).map(<[u8]>::trim_ascii),
            TokenCarrier::Cookie => cookie(headers, self.name.as_bytes()),
        }
    }

    /// Appends the answer's token field (a whole line) to `out`.
    pub fn write_field(&self, out: &mut Vec<u8>, token: &Token) {
        out.extend_from_slice(&self.line_start);
        token.write(out);
        out.extend_from_slice(&self.line_end);
    }
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 5.4: pairs separated
/// by `;`), without the quotes a value may have.
pub fn cookie<'a>(headers: &[httparse::Header<'a>], name: &[u8]) -> Option<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name)?.strip_prefix(b"=")?.trim_ascii();
            Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            )
        })
}

/// The offset a writer's answer reports in `header`, if it is a plain number.
pub fn reported_offset(headers: &[httparse::Header], header: &HeaderName) -> Option<u64> {
    crate::h1::field(headers, header.as_str()).and_then(|v| number(v.trim_ascii()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::test_fields as fields;

    const WINDOW: Duration = Duration::from_secs(10);
    const NOW: u64 = 1_764_650_010_000;

    fn round(epoch: u64) -> ReplicationView {
        ReplicationView {
            epoch,
            writer_offset: 1234,
            measured_at_ms: NOW - 500,
        }
    }

    fn reader(offset: u64, lag_ms: u64, lag_at_least: bool) -> Option<Applied> {
        Some(Applied::of(
            &Progress {
                offset,
                lag_offsets: 1234u64.saturating_sub(offset),
                lag_ms,
                lag_at_least,
            },
            &round(7),
        ))
    }

    fn token(epoch: u64, offset: u64, source: char, unix_ms: u64) -> Vec<u8> {
        format!("v1-{epoch}-{offset}-{source}-{unix_ms}").into_bytes()
    }

    fn tried(positions: &[usize]) -> Tried {
        let mut t = Tried::default();
        positions.iter().for_each(|&i| t.insert(i));
        t
    }

    fn decide7(token: &[u8], pool: &[Option<Applied>]) -> Read {
        decide(Some(token), NOW, WINDOW, 7, Some(&round(7)), pool)
    }

    #[test]
    fn tokens_round_trip_and_anything_else_is_garbled() {
        let t = Token {
            epoch: 7,
            offset: 1234,
            source: Source::Writer,
            unix_ms: 1_764_650_000_123,
        };
        let mut out = Vec::new();
        t.write(&mut out);
        assert_eq!(out, b"v1-7-1234-w-1764650000123");
        assert_eq!(Token::parse(&out), Some(t));
        assert_eq!(
            Token::parse(b"v1-0-0-p-0").map(|t| t.source),
            Some(Source::Published)
        );
        for bad in [
            &b""[..],
            b"v1",
            b"v2-7-1234-w-1",
            b"v1-7-1234-x-1",
            b"v1-7-1234-w",
            b"v1-7-1234-w-1-2",
            b"v1--1234-w-1",
            b"v1-+7-1234-w-1",
            b"v1-7- 1234-w-1",
            b"v1-7-1234-W-1",
            b"v1-18446744073709551616-0-w-1",
            b"V1-7-1234-w-1",
        ] {
            assert_eq!(
                Token::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Token::parse(b"v1-18446744073709551615-0-w-1").map(|t| t.epoch),
            Some(u64::MAX)
        );
    }

    #[test]
    fn no_token_or_an_expired_one_is_an_ordinary_read() {
        let pool = [reader(0, 100_000, false)];
        assert_eq!(
            decide(None, NOW, WINDOW, 7, Some(&round(7)), &pool),
            Read::Ordinary
        );
        // Older than the window: ordinary, whatever else it says.
        let old = NOW - WINDOW.as_millis() as u64;
        assert_eq!(decide7(&token(7, 9999, 'w', old), &pool), Read::Ordinary);
        assert_eq!(decide7(&token(3, 9999, 'w', old), &pool), Read::Ordinary);
        // Just inside it: not.
        assert_eq!(
            decide7(&token(7, 9999, 'w', old + 1), &pool),
            Read::Writer(ToWriter::NotCaughtUp)
        );
        // From a clock ahead of this one: young.
        assert_eq!(
            decide7(&token(7, 9999, 'w', NOW + 60_000), &pool),
            Read::Writer(ToWriter::NotCaughtUp)
        );
    }

    #[test]
    fn garbled_other_epoch_or_no_round_goes_to_the_writer() {
        let pool = [reader(5000, 0, false)];
        assert_eq!(
            decide7(b"v1-7-xx-w-1", &pool),
            Read::Writer(ToWriter::Garbled)
        );
        assert_eq!(decide7(b"", &pool), Read::Writer(ToWriter::Garbled));
        assert_eq!(
            decide7(&token(6, 1, 'w', NOW), &pool),
            Read::Writer(ToWriter::OtherEpoch)
        );
        assert_eq!(
            decide7(&token(8, 1, 'w', NOW), &pool),
            Read::Writer(ToWriter::OtherEpoch)
        );
        assert_eq!(
            decide(Some(&token(7, 1, 'w', NOW)), NOW, WINDOW, 7, None, &pool),
            Read::Writer(ToWriter::NoReplication)
        );
        // A round of another epoch is no round for this token.
        assert_eq!(
            decide(
                Some(&token(7, 1, 'w', NOW)),
                NOW,
                WINDOW,
                7,
                Some(&round(6)),
                &pool
            ),
            Read::Writer(ToWriter::NoReplication)
        );
    }

    #[test]
    fn an_exact_offset_picks_the_readers_that_reached_it() {
        let pool = [
            reader(1234, 0, false),
            reader(1200, 2000, false),
            None,
            reader(1300, 0, true),
        ];
        let t = token(7, 1210, 'w', NOW - 100);
        // Reader 1 is behind the offset and, by time, 2 s behind a write 0.1 s old; reader 2
        // published nothing; reader 3 passed the offset even though its lag is a lower bound.
        assert_eq!(decide7(&t, &pool), Read::Readers(tried(&[1, 2])));
        assert_eq!(
            decide7(&token(7, 1234, 'w', NOW - 100), &pool),
            Read::Readers(tried(&[1, 2]))
        );
        assert_eq!(
            decide7(&token(7, 1301, 'w', NOW - 100), &pool),
            Read::Writer(ToWriter::NotCaughtUp)
        );
        // The writer in the pool always has it.
        let with_writer = [reader(0, 9000, false), Some(Applied::WRITER)];
        assert_eq!(
            decide7(&token(7, u64::MAX, 'w', NOW), &with_writer),
            Read::Readers(tried(&[0]))
        );
        assert_eq!(decide7(&t, &[]), Read::Writer(ToWriter::NotCaughtUp));
    }

    #[test]
    fn a_published_offset_is_never_compared_only_the_time() {
        // The round read the writer 0.5 s ago. Reader 0 is level (caught up to then), reader 1
        // 2 s behind that, reader 2 behind everything the history holds.
        let pool = [
            reader(1234, 0, false),
            reader(1200, 2000, false),
            reader(1234, 0, true),
        ];
        // Written 1 s ago: reader 0 has it (its point is 0.5 s ago), reader 1 does not,
        // reader 2 may not; the offset (a lower bound) says nothing.
        let t = token(7, 10, 'p', NOW - 1000);
        assert_eq!(decide7(&t, &pool), Read::Readers(tried(&[1, 2])));
        // Written 3 s ago: reader 1's point (2.5 s ago) is past it too.
        let t = token(7, 10, 'p', NOW - 3000);
        assert_eq!(decide7(&t, &pool), Read::Readers(tried(&[2])));
        // Written after the round: nobody is known to have it.
        let t = token(7, 0, 'p', NOW - 100);
        assert_eq!(decide7(&t, &pool), Read::Writer(ToWriter::NotCaughtUp));
        // An exact token still has the time rule: written before reader 1's point.
        let t = token(7, 1230, 'w', NOW - 3000);
        assert_eq!(decide7(&t, &pool), Read::Readers(tried(&[])));
    }

    #[test]
    fn pools_past_64_leave_out_the_rest_together() {
        let fresh = reader(2000, 0, false);
        let stale = reader(0, 100_000, false);
        let t = token(7, 1000, 'w', NOW);
        // All beyond 64 have it: nothing of them is left out.
        let mut pool = vec![stale; 64];
        pool.extend(std::iter::repeat_n(fresh, 10));
        let Read::Readers(skip) = decide7(&t, &pool) else {
            panic!("readers expected");
        };
        assert!((0..64).all(|i| skip.contains(i)));
        assert!(!skip.contains(64) && !skip.contains(73));
        // One beyond 64 lacks it: all of them go, and with them the only ones that had it.
        pool.push(stale);
        assert_eq!(decide7(&t, &pool), Read::Writer(ToWriter::NotCaughtUp));
        pool[3] = fresh;
        let Read::Readers(skip) = decide7(&t, &pool) else {
            panic!("readers expected");
        };
        assert!(!skip.contains(3));
        assert!(skip.contains(2) && skip.contains(64) && skip.contains(74));
    }

    fn settings(yaml: &str) -> ReadYourWrites {
        let cfg = crate::config::ProxyConfig::from_yaml_str(yaml).unwrap();
        ReadYourWrites::new(cfg.routing.read_your_writes.as_ref().unwrap())
    }

    #[test]
    fn the_token_is_found_in_its_cookie_or_its_header() {
        let c = settings("routing: { read_your_writes: { enabled: true } }");
        let hs = fields(&[
            ("Cookie", "a=1; rwp_read_after_x=no"),
            ("cookie", "b=2;rwp_read_after=\"v1-1-2-w-3\" ; c=3"),
        ]);
        assert_eq!(c.token_of(&hs), Some(&b"v1-1-2-w-3"[..]));
        let hs = fields(&[("Cookie", "rwp_read_after=v1-1-2-w-3")]);
        assert_eq!(c.token_of(&hs), Some(&b"v1-1-2-w-3"[..]));
        let hs = fields(&[
            ("Cookie", "rwp_read_after="),
            ("X-Read-After", "v1-1-2-w-3"),
        ]);
        assert_eq!(c.token_of(&hs), Some(&b""[..]));
        let hs = fields(&[
            ("X-Read-After", "v1-1-2-w-3"),
            ("Cookie", "xrwp_read_after=1"),
        ]);
        assert_eq!(c.token_of(&hs), None);

        let h = settings("routing: { read_your_writes: { enabled: true, token: header } }");
        let hs = fields(&[
            ("Cookie", "rwp_read_after=v1-9-9-w-9"),
            ("x-read-after", " v1-1-2-w-3 "),
        ]);
        assert_eq!(h.token_of(&hs), Some(&b"v1-1-2-w-3"[..]));
        assert_eq!(h.token_of(&fields(&[("Cookie", "x=1")])), None);
    }

    #[test]
    fn the_answer_field_is_a_cookie_or_a_header() {
        let t = Token {
            epoch: 7,
            offset: 1234,
            source: Source::Published,
            unix_ms: 1_764_650_000_123,
        };
        let mut out = Vec::new();
        settings("routing: { read_your_writes: { enabled: true, window: 2500ms } }")
            .write_field(&mut out, &t);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Set-Cookie: rwp_read_after=v1-7-1234-p-1764650000123; Path=/; Max-Age=3; HttpOnly; SameSite=Lax\r\n"
        );
        let mut out = Vec::new();
        settings("routing: { read_your_writes: { enabled: true, token: header, name: X-After } }")
            .write_field(&mut out, &t);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-After: v1-7-1234-p-1764650000123\r\n"
        );
    }

    #[test]
    fn the_writer_reports_its_offset_as_a_plain_number() {
        let h = HeaderName::from_static("x-replication-offset");
        let of = |v: &str| reported_offset(&fields(&[("X-Replication-Offset", v)]), &h);
        assert_eq!(of("1234"), Some(1234));
        assert_eq!(of(" 77 "), Some(77));
        assert_eq!(of("-1"), None);
        assert_eq!(of("12ab"), None);
        assert_eq!(reported_offset(&fields(&[("X-Other", "5")]), &h), None);
    }
}
