//! What a request must look like before any of it goes upstream (RFC 9112 and RFC 9110's
//! framing rules). The HTTP/1 parser (httparse) accepts some requests that two HTTP/1
//! implementations can read differently: a proxy and a storage node that disagree on where a request ends are how a
//! second, unseen request gets smuggled to the node. Such requests are refused here with 400
//! and the connection closes; one pure function, its cases beside it.

use http::Method;

/// Why a request was refused (the log's `reason`; the client gets `400 bad_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Both framings: which one a node would believe is anyone's guess.
    ContentLengthAndChunked,
    /// Several Content-Length values that differ, or one that is not a plain decimal number.
    BadContentLength,
    /// A Transfer-Encoding other than exactly `chunked`, given once, on HTTP/1.1.
    BadTransferEncoding,
    /// HTTP/1.1 requires exactly one Host.
    BadHost,
    /// A line of the header ends in a bare LF: nodes split such headers differently.
    BareLineFeed,
    /// A chunked body whose framing is malformed (size, extension or line ends).
    BadChunk,
    /// The target is not origin-form (`/path`), absolute-form (`http://host/path`) or `*` for
    /// OPTIONS, or holds bytes a URI cannot.
    BadTarget,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ContentLengthAndChunked => "content_length_and_chunked",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::BadTransferEncoding => "bad_transfer_encoding",
            Refusal::BadHost => "bad_host",
            Refusal::BareLineFeed => "bare_line_feed",
            Refusal::BadTarget => "bad_target",
            Refusal::BadChunk => "bad_chunk",
        }
    }
}

/// The request as parsed.
pub struct Request<'a> {
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'a [httparse::Header<'a>],
}

fn fields<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The rules that need the bytes as the client sent them, line by line, before the fields are
/// parsed. `header` is the request line and fields up to and including
/// the empty line.
pub fn check_raw(header: &[u8]) -> Result<RawBody, Refusal> {
    if has_bare_line_feed(header) {
        return Err(Refusal::BareLineFeed);
    }
    // Empty lines before the request line are allowed (RFC 9112 2.2).
    let start = header
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(header.len());
    let mut lines = header[start..].split(|b| *b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(_version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadTarget);
    };
    let method = Method::from_bytes(method).map_err(|_| Refusal::BadTarget)?;
    if !target_is_valid(&method, target) {
        return Err(Refusal::BadTarget);
    }
    let mut length: Option<Option<u64>> = None;
    let mut encoding = false;
    for line in lines {
        let mut field = line.splitn(2, |b| *b == b':');
        let name = field.next().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = field.next().unwrap_or_default().trim_ascii();
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            length = Some(match length {
                None => n,
                Some(prev) if prev == n => n,
                // Differing values: check() refuses them once parsed.
                Some(_) => None,
            });
        }
        encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    match (length, encoding) {
        (Some(_), true) => Err(Refusal::ContentLengthAndChunked),
        // Which encoding is check()'s to judge; only `chunked` alone passes it.
        (None, true) => Ok(RawBody::Chunked),
        (None, false) => Ok(RawBody::Length(0)),
        (Some(Some(n)), false) => Ok(RawBody::Length(n)),
        (Some(None), false) => Ok(RawBody::Unknown),
    }
}

/// Where a request's body ends, as far as the raw header tells: what lets the connection loop
/// keep the bytes of a pipelined next request out of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawBody {
    /// Exactly this many bytes follow the header (0 without a length or an encoding).
    Length(u64),
    /// A Transfer-Encoding: see [`chunked_end`].
    Chunked,
    /// A length the field rules refuse.
    Unknown,
}

/// Where a chunked body that starts at `body[0]` ends (just past its last CRLF), if all of it
/// is in `body`; `Ok(None)` when more is to come. The rules are [`Chunked`]'s. The connection
/// loop uses it on the bytes it already has, so a request pipelined behind a chunked one is
/// kept for the next turn.
pub fn chunked_end(body: &[u8]) -> Result<Option<usize>, Refusal> {
    Chunked::default().feed(body)
}

/// Follows a chunked body as its bytes pass, in any pieces, to find where it ends. Strict where
/// parsers are known to differ (RFC 9112 7.1): a chunk size is 1 to 16 hex digits and below
/// 2^63, an extension starts with `;` and holds no control byte but tab, every line ends in
/// CRLF, chunk data is followed by CRLF. Used on request bodies (a malformed one is refused,
/// and never reaches a node whole) and on answers (where one ends decides whether the upstream
/// connection can be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current size or trailer line so far.
    line: usize,
    /// Chunk data bytes so far (what `limits.max_body` limits).
    data: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// In the hex digits of a chunk size (`digits` so far).
    #[default]
    SizeStart,
    Size {
        digits: u8,
        size: u64,
    },
    Extension {
        size: u64,
    },
    /// The size line's CR is seen; its LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In a trailer line (`line` bytes so far; 0: at its start).
    Trailer,
    /// A trailer line's CR is seen; `empty`: it was the final empty line.
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl Chunked {
    /// Takes the next bytes of the body. `Ok(Some(n))`: the body ended `n` bytes into `bytes`
    /// (what follows is not part of it); `Ok(None)`: more is to come.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Refusal> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                SizeStart | Size { .. } => {
                    let (digits, size) = match self.state {
                        Size { digits, size } => (digits, size),
                        _ => (0, 0),
                    };
                    self.line += 1;
                    match b {
                        _ if b.is_ascii_hexdigit() => {
                            if digits == 16 {
                                return Err(Refusal::BadChunk);
                            }
                            let d = (b as char).to_digit(16).unwrap_or(0);
                            Size {
                                digits: digits + 1,
                                size: size << 4 | u64::from(d),
                            }
                        }
                        _ if digits == 0 => return Err(Refusal::BadChunk),
                        _ if size >= 1 << 63 => return Err(Refusal::BadChunk),
                        b';' => Extension { size },
                        b'\r' => SizeLf { size },
                        _ => return Err(Refusal::BadChunk),
                    }
                }
                Extension { size } => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(Refusal::BadChunk);
                    }
                    match b {
                        b'\r' => SizeLf { size },
                        b'\t' => Extension { size },
                        _ if b.is_ascii_control() => return Err(Refusal::BadChunk),
                        _ => Extension { size },
                    }
                }
                SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    self.line = 0;
                    if size == 0 {
                        Trailer
                    } else {
                        Data { left: size }
                    }
                }
                Data { left } => {
                    let avail = (bytes.len() - i) as u64;
                    let take = left.min(avail);
                    // `take` <= what is left of `bytes`, so it fits a usize.
                    i += take as usize;
                    self.data += take;
                    self.state = if take == left {
                        DataCr
                    } else {
                        Data { left: left - take }
                    };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => SizeStart,
                DataCr | DataLf => return Err(Refusal::BadChunk),
                Trailer => match b {
                    b'\r' => TrailerLf {
                        empty: self.line == 0,
                    },
                    b'\n' => return Err(Refusal::BadChunk),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return Err(Refusal::BadChunk);
                        }
                        Trailer
                    }
                },
                TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(Refusal::BadChunk);
                    }
                    self.line = 0;
                    if empty {
                        self.state = Done;
                        return Ok(Some(i + 1));
                    }
                    Trailer
                }
                Done => return Ok(Some(i)),
            };
            if matches!(self.state, Size { .. }) && self.line > MAX_CHUNK_LINE {
                return Err(Refusal::BadChunk);
            }
            i += 1;
        }
        Ok(match self.state {
            Done => Some(i),
            _ => None,
        })
    }

    /// Chunk data bytes seen so far, without the framing.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Whether the whole body has passed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// The rules on the parsed header fields.
pub fn check(req: &Request) -> Result<(), Refusal> {
    let hosts = fields(req.headers, "host").count();
    if hosts > 1 || (req.minor == 1 && hosts != 1) {
        return Err(Refusal::BadHost);
    }
    let mut encodings = fields(req.headers, "transfer-encoding");
    if let Some(first) = encodings.next() {
        if fields(req.headers, "content-length").next().is_some() {
            return Err(Refusal::ContentLengthAndChunked);
        }
        let chunked_once = encodings.next().is_none() && first.eq_ignore_ascii_case(b"chunked");
        if !chunked_once || req.minor != 1 {
            return Err(Refusal::BadTransferEncoding);
        }
    }
    content_length(req.headers).map(|_| ())
}

/// The request's body length from Content-Length: `None` without one; identical repeats count
/// once (RFC 9110 8.6), anything else is refused.
pub fn content_length(headers: &[httparse::Header]) -> Result<Option<u64>, Refusal> {
    let mut length = None;
    for bytes in fields(headers, "content-length") {
        if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::BadContentLength);
        }
        let n: u64 = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Refusal::BadContentLength)?;
        match length {
            Some(m) if m != n => return Err(Refusal::BadContentLength),
            _ => length = Some(n),
        }
    }
    Ok(length)
}

fn has_bare_line_feed(raw: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', raw).any(|i| i == 0 || raw[i - 1] != b'\r')
}

fn target_is_valid(method: &Method, target: &[u8]) -> bool {
    // Visible ASCII only: no control bytes, no spaces, no raw non-ASCII.
    if target.is_empty() || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return false;
    }
    if target == b"*" {
        return method == Method::OPTIONS;
    }
    if target[0] == b'/' {
        return true;
    }
    let lower = |prefix: &[u8]| {
        target.len() > prefix.len() && target[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    lower(b"http://") || lower(b"https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::h1::test_fields as headers;

    fn run(_method: &str, minor: u8, fields: &[(&str, &str)]) -> Result<(), Refusal> {
        check(&Request {
            minor,
            headers: &headers(fields),
        })
    }

    const V11: u8 = 1;
    const V10: u8 = 0;

    #[test]
    fn rules_on_the_fields() {
        use Refusal::*;
        let host = ("Host", "x");
        let cl = |n| ("Content-Length", n);
        let te = |v| ("Transfer-Encoding", v);
        type Case<'a> = (&'a str, u8, &'a [(&'a str, &'a str)], Result<(), Refusal>);
        let cases: &[Case] = &[
            ("GET", V11, &[host], Ok(())),
            ("GET", V10, &[], Ok(())),
            ("PUT", V11, &[host, cl("3"), cl("3")], Ok(())),
            ("POST", V11, &[host, te("Chunked")], Ok(())),
            ("GET", V11, &[], Err(BadHost)),
            ("GET", V11, &[host, ("Host", "y")], Err(BadHost)),
            ("GET", V10, &[host, ("Host", "y")], Err(BadHost)),
            ("PUT", V11, &[host, cl("3"), cl("4")], Err(BadContentLength)),
            ("PUT", V11, &[host, cl("3, 3")], Err(BadContentLength)),
            ("PUT", V11, &[host, cl("-1")], Err(BadContentLength)),
            ("PUT", V11, &[host, cl("+1")], Err(BadContentLength)),
            ("PUT", V11, &[host, cl(" 1")], Err(BadContentLength)),
            (
                "PUT",
                V11,
                &[host, cl("99999999999999999999")],
                Err(BadContentLength),
            ),
            ("PUT", V11, &[host, cl("")], Err(BadContentLength)),
            (
                "POST",
                V11,
                &[host, cl("4"), te("chunked")],
                Err(ContentLengthAndChunked),
            ),
            (
                "POST",
                V11,
                &[host, te("chunked, identity")],
                Err(BadTransferEncoding),
            ),
            (
                "POST",
                V11,
                &[host, te("xchunked")],
                Err(BadTransferEncoding),
            ),
            (
                "POST",
                V11,
                &[host, te("chun\tked")],
                Err(BadTransferEncoding),
            ),
            (
                "POST",
                V11,
                &[host, te("chunked"), te("chunked")],
                Err(BadTransferEncoding),
            ),
            (
                "POST",
                V10,
                &[host, te("chunked")],
                Err(BadTransferEncoding),
            ),
        ];
        for (method, version, fields, want) in cases {
            assert_eq!(
                run(method, *version, fields),
                *want,
                "{method} {version:?} {fields:?}"
            );
        }
    }

    #[test]
    fn rules_on_the_raw_bytes() {
        use Refusal::*;
        let cases: &[(&[u8], Result<(), Refusal>)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            (
                b"\r\nGET /kv/a?x=1&y=%20 HTTP/1.1\r\nHost: x\r\n\r\n",
                Ok(()),
            ),
            (b"GET http://x/kv/a HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            (b"GET HTTPS://x/kv/a HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\n\r\n", Ok(())),
            (b"GET / HTTP/1.1\nHost: x\r\n\r\n", Err(BareLineFeed)),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", Err(BareLineFeed)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\n", Err(BareLineFeed)),
            (b"\nGET / HTTP/1.1\r\n\r\n", Err(BareLineFeed)),
            (b"GET ! HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET * HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET kv/a HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET http:// HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET /a\0b HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET /a\x7fb HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET /a b HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (b"GET /a\r\n\r\n", Err(BadTarget)),
            (b"CONNECT x:443 HTTP/1.1\r\n\r\n", Err(BadTarget)),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(ContentLengthAndChunked),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n",
                Err(ContentLengthAndChunked),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(check_raw(raw).map(|_| ()), *want, "{}", raw.escape_ascii());
        }
    }

    #[test]
    fn the_raw_header_tells_where_a_body_ends() {
        let body = |raw: &[u8]| check_raw(raw).unwrap();
        assert_eq!(
            body(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            RawBody::Length(0)
        );
        assert_eq!(
            body(b"PUT / HTTP/1.1\r\ncontent-length:  12 \r\n\r\n"),
            RawBody::Length(12)
        );
        assert_eq!(
            body(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            RawBody::Length(3)
        );
        assert_eq!(
            body(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            RawBody::Unknown
        );
        assert_eq!(
            body(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            RawBody::Unknown
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            RawBody::Chunked
        );
    }

    #[test]
    fn chunked_bodies_are_framed_strictly() {
        let end = |b: &[u8]| chunked_end(b);
        assert_eq!(end(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(end(b"3\r\nabc\r\n0\r\n\r\nGET /next"), Ok(Some(13)));
        assert_eq!(
            end(b"3;name=value\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"),
            Ok(Some(39))
        );
        assert_eq!(end(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"), Ok(Some(27)));
        // Not all there yet.
        for partial in [
            &b""[..],
            b"3",
            b"3\r\nab",
            b"3\r\nabc\r",
            b"3\r\nabc\r\n0\r\n",
            b"0\r\nX: 1\r\n",
        ] {
            assert_eq!(end(partial), Ok(None), "{}", partial.escape_ascii());
        }
        for bad in [
            &b"\r\n3\r\nabc\r\n0\r\n\r\n"[..], // an empty chunk-size line
            b"-1\r\nab\r\n0\r\n\r\n",
            b"zz\r\nab\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\nab\r\n",  // over 16 hex digits
            b"ffffffffffffffff\r\nab\r\n",   // fits u64, not memory
            b"3 \r\nabc\r\n0\r\n\r\n",       // a space after the size
            b"3;a\x01b\r\nabc\r\n0\r\n\r\n", // a control byte in an extension
            b"3\nabc\r\n0\r\n\r\n",          // bare LF
            b"3\r\nabcd\r\n0\r\n\r\n",       // data longer than its size
            b"0\r\n\n",
        ] {
            assert_eq!(end(bad), Err(Refusal::BadChunk), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn identical_lengths_are_one_length() {
        let h = headers(&[("Content-Length", "10"), ("Content-Length", "10")]);
        assert_eq!(content_length(&h), Ok(Some(10)));
        assert_eq!(content_length(&[]), Ok(None));
    }

    #[test]
    fn a_chunked_body_is_followed_in_any_pieces() {
        let body = b"3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(chunked_end(body), Ok(Some(end)));
        for split in 0..=body.len() {
            let mut c = Chunked::default();
            let (a, b) = body.split_at(split);
            let got = match c.feed(a) {
                Ok(Some(n)) => Some(n),
                Ok(None) => c.feed(b).unwrap().map(|n| n + split),
                Err(e) => panic!("{split}: {e:?}"),
            };
            assert_eq!(got, Some(end), "split at {split}");
        }
        // One byte at a time.
        let mut c = Chunked::default();
        let mut ended = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = c.feed(std::slice::from_ref(b)).unwrap() {
                ended = Some(i + n);
                break;
            }
        }
        assert_eq!(ended, Some(end));
        assert!(c.is_done());
        assert_eq!(c.data_len(), 3 + 16);
    }

    #[test]
    fn a_chunk_size_line_without_its_end_is_refused_past_its_limit() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE));
        assert_eq!(chunked_end(&line), Err(Refusal::BadChunk));
        let long_size = vec![b'0'; 40];
        assert_eq!(chunked_end(&long_size), Err(Refusal::BadChunk));
    }
}
