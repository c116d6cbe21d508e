//! HTTP/1 message heads as this proxy passes them on: which fields of a request go upstream
//! and what is added, which fields of an answer go back, and how long each body is. Pure
//! functions over parsed heads (httparse's), writing into buffers the caller reuses; the
//! request's life that uses them is `forward.rs`.
//!
//! Heads are copied field by field as they arrived (names keep their case), minus the
//! hop-by-hop fields (RFC 9110 7.6.1): this proxy opens and reuses upstream connections on
//! its own terms, so a client's `Connection`, `Keep-Alive`, `TE` or `Upgrade` never reaches a
//! node, and a node's never reaches the client.

use std::io::Write as _;
use std::net::IpAddr;

/// Header fields read per message; more is refused (431 for a request, 502 for an answer).
pub const MAX_HEADERS: usize = 128;

/// Request fields that are set here, not passed on.
const X_WRITER_EPOCH: &str = "x-writer-epoch";
const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Set (to `true`) by a storage node that refused a write as not the distributor: the node
/// library's newest line calls it `StorageNode-NAD`, every earlier one `Microstream-NAD`.
pub const NAD_HEADERS: [&str; 2] = ["storagenode-nad", "microstream-nad"];

/// Where the head in `buf` ends (just past its empty line), if it is all there; `from`: how
/// much of `buf` was searched before. A bare LF ends a line here as it does for httparse, so a
/// head the parser would accept is never waited on.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    memchr::memchr_iter(b'\n', &buf[start..])
        .map(|pos| start + pos)
        // An LF ends the head when the line it ends is empty: LF LF or LF CR LF.
        .find(|&lf| {
            (lf >= 1 && buf[lf - 1] == b'\n')
                || (lf >= 2 && buf[lf - 1] == b'\r' && buf[lf - 2] == b'\n')
        })
        .map(|lf| lf + 1)
}

/// The first value of field `name` (case-insensitive).
pub fn field<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The tokens of every `Connection` field (trimmed, any case).
fn connection_tokens<'a>(headers: &'a [httparse::Header<'a>]) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &[httparse::Header], token: &[u8]) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether a field is hop-by-hop: one of RFC 9110's, or named by a `Connection` field. The
/// fields that frame the message, and `Host`, are never dropped because `Connection` names
/// them: the body passes with its framing as sent, so a node that got chunked bytes without
/// `Transfer-Encoding` would read them as a next request.
fn is_hop_by_hop(headers: &[httparse::Header], name: &str) -> bool {
    const FIXED: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
    ];
    const KEPT: [&str; 3] = ["transfer-encoding", "content-length", "host"];
    if FIXED.iter().any(|f| name.eq_ignore_ascii_case(f)) {
        return true;
    }
    !KEPT.iter().any(|k| name.eq_ignore_ascii_case(k))
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Whether the client wants its connection kept after this request.
pub fn client_keeps_alive(minor: u8, headers: &[httparse::Header]) -> bool {
    if has_token(headers, b"close") {
        return false;
    }
    minor == 1 || has_token(headers, b"keep-alive")
}

/// Whether the client asked to be told to go on before it sends its body.
pub fn expects_continue(headers: &[httparse::Header]) -> bool {
    field(headers, "expect").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether the request asks to switch to another protocol this proxy would have to tunnel (a
/// WebSocket handshake). An `h2c` offer alone is not such a request: a server may ignore an
/// upgrade it does not want (RFC 9110 7.8), and the request is served over HTTP/1.1.
pub fn asks_upgrade(headers: &[httparse::Header]) -> bool {
    has_token(headers, b"upgrade")
        && headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|p| !p.is_empty() && !p.eq_ignore_ascii_case(b"h2c"))
}

/// The path of a request target (origin-form or absolute-form), without its query.
pub fn path_of(target: &str) -> &str {
    let rest = match target.find("://") {
        Some(scheme_end) => {
            let after = &target[scheme_end + 3..];
            match after.find('/') {
                Some(slash) => &after[slash..],
                None => "/",
            }
        }
        None => target,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// What the proxy adds to a request it sends upstream.
pub struct Additions<'a> {
    /// `X-Writer-Epoch`, on requests to the writer: the fencing token, never the client's.
    pub epoch: Option<&'a [u8]>,
    /// Appended to `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// `X-Request-Id`: the client's, or one made for this request.
    pub request_id: &'a [u8],
    /// `Host` for a request without one (HTTP/1.0): the node's address.
    pub default_host: &'a str,
    /// The body's length as it will be sent, when it is framed by length.
    pub content_length: Option<u64>,
}

/// Writes the head of the request to send upstream into `out`.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    minor: u8,
    headers: &[httparse::Header],
    add: &Additions,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    // A 1.0 client's request stays 1.0: the node then frames its answer so a 1.0 client can
    // read it (no chunked encoding).
    out.extend_from_slice(if minor == 1 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    let mut host = None;
    let mut forwarded_for: Option<&[u8]> = None;
    let mut proto = false;
    let mut request_id_seen = false;
    for h in headers {
        let name = h.name;
        if is_hop_by_hop(headers, name)
            || name.eq_ignore_ascii_case(X_WRITER_EPOCH)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(X_FORWARDED_FOR) {
            // Several fields are one list; the first is kept whole and ours is appended.
            forwarded_for.get_or_insert(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case(X_REQUEST_ID) {
            if request_id_seen {
                continue;
            }
            request_id_seen = true;
        }
        if name.eq_ignore_ascii_case("host") {
            host = Some(h.value);
        }
        proto |= name.eq_ignore_ascii_case(X_FORWARDED_PROTO);
        put_field(out, name.as_bytes(), h.value);
    }
    if let Some(n) = add.content_length {
        let _ = write!(out, "Content-Length: {n}\r\n");
    }
    if host.is_none() {
        put_field(out, b"Host", add.default_host.as_bytes());
    }
    if let Some(epoch) = add.epoch {
        put_field(out, b"X-Writer-Epoch", epoch);
    }
    if let Some(ip) = add.client_ip {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(prev) = forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{ip}\r\n");
    }
    if !proto {
        put_field(out, b"X-Forwarded-Proto", b"http");
    }
    // Set by an ingress in front of us: theirs is kept.
    if field(headers, X_FORWARDED_HOST).is_none() {
        if let Some(h) = host {
            put_field(out, b"X-Forwarded-Host", h);
        }
    }
    if !request_id_seen {
        put_field(out, b"X-Request-Id", add.request_id);
    }
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a message's body is framed (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: an answer to HEAD, a 1xx, 204 or 304, or a request without length or encoding.
    Empty,
    Length(u64),
    Chunked,
    /// An answer that ends when the node closes its connection.
    UntilClose,
}

/// Why an answer's head cannot be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAnswer {
    /// Content-Length not a plain number, or several that differ, or both framings.
    Framing,
}

/// How the body of an answer with `status` to a request (`head`: a HEAD request) is framed.
pub fn answer_framing(
    head: bool,
    status: u16,
    headers: &[httparse::Header],
) -> Result<Framing, BadAnswer> {
    if head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut encodings = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .peekable();
    if encodings.peek().is_some() {
        if headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            return Err(BadAnswer::Framing);
        }
        // Chunked only when it is the final coding; anything else runs until close.
        let last = encodings
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    match crate::request_rules::content_length(headers) {
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Ok(None) => Ok(Framing::UntilClose),
        Err(_) => Err(BadAnswer::Framing),
    }
}

/// Whether the node keeps its connection open after this answer.
pub fn upstream_keeps_alive(minor: u8, headers: &[httparse::Header]) -> bool {
    client_keeps_alive(minor, headers)
}

/// The storage node's refusal of a write because it is not the distributor (the cluster node
/// library's `NotADistributorException`): `400` with `StorageNode-NAD: true` (or, before the
/// library renamed it, `Microstream-NAD: true`), raised before the store call applies anything.
/// Exactly this signal, nothing looser: any other 400 is the client's and goes back to it
/// unchanged.
pub fn is_not_distributor(status: u16, headers: &[httparse::Header]) -> bool {
    status == 400
        && NAD_HEADERS.iter().any(|name| {
            field(headers, name).is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"true"))
        })
}

/// Writes the head of the answer to send to the client into `out`: the node's status and
/// fields minus the hop-by-hop ones, `X-Request-Id` if the node set none, and `Connection`
/// as this proxy decided.
pub fn write_answer_head(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[httparse::Header],
    request_id: &[u8],
    client_minor: u8,
    keep_client: bool,
) {
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    let mut request_id_seen = false;
    for h in headers {
        if is_hop_by_hop(headers, h.name) {
            continue;
        }
        request_id_seen |= h.name.eq_ignore_ascii_case(X_REQUEST_ID);
        put_field(out, h.name.as_bytes(), h.value);
    }
    if !request_id_seen {
        put_field(out, b"X-Request-Id", request_id);
    }
    if !keep_client {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Adds fields (whole lines, written by `add`) at the end of the complete head in `out`.
pub fn append_fields(out: &mut Vec<u8>, add: impl FnOnce(&mut Vec<u8>)) {
    if !out.ends_with(b"\r\n\r\n") {
        return;
    }
    out.truncate(out.len() - 2);
    add(out);
    out.extend_from_slice(b"\r\n");
}

/// Writes a whole answer made by the proxy (`status`, JSON `body`).
pub fn write_proxy_answer(
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    retry_after: Option<u32>,
    request_id: Option<&[u8]>,
    keep_client: bool,
) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    );
    if let Some(secs) = retry_after {
        let _ = write!(out, "Retry-After: {secs}\r\n");
    }
    if let Some(id) = request_id {
        put_field(out, b"X-Request-Id", id);
    }
    if !keep_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Parsed fields from name/value pairs, for the tests of the modules that read them.
#[cfg(test)]
pub fn test_fields<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_fields as hs;

    fn request(headers: &[(&str, &str)], add: &Additions, minor: u8) -> String {
        let mut out = Vec::new();
        write_request_head(&mut out, "PUT", "/kv/a?x=1", minor, &hs(headers), add);
        String::from_utf8(out).unwrap()
    }

    fn add<'a>() -> Additions<'a> {
        Additions {
            epoch: None,
            client_ip: Some([10, 0, 0, 7].into()),
            request_id: b"id-1",
            default_host: "10.1.1.1:9000",
            content_length: Some(3),
        }
    }

    #[test]
    fn a_request_goes_upstream_without_hop_by_hop_fields_and_with_ours() {
        let got = request(
            &[
                ("Host", "store"),
                ("Connection", "close, X-Private"),
                ("X-Private", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "websocket"),
                ("Expect", "100-continue"),
                ("X-Writer-Epoch", "999"),
                ("Content-Length", "3"),
                ("Content-Length", "3"),
                ("X-Kept", "yes"),
            ],
            &Additions {
                epoch: Some(b"7"),
                ..add()
            },
            1,
        );
        assert_eq!(
            got,
            "PUT /kv/a?x=1 HTTP/1.1\r\nHost: store\r\nX-Kept: yes\r\nContent-Length: 3\r\nX-Writer-Epoch: 7\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: store\r\nX-Request-Id: id-1\r\n\r\n"
        );
    }

    #[test]
    fn framing_fields_named_by_connection_are_still_passed_on() {
        let fields = [
            ("Host", "store"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "Transfer-Encoding, Host, X-Gone"),
            ("X-Gone", "1"),
        ];
        let got = request(
            &fields,
            &Additions {
                content_length: None,
                ..add()
            },
            1,
        );
        assert!(got.contains("\r\nTransfer-Encoding: chunked\r\n"), "{got}");
        assert!(got.contains("\r\nHost: store\r\n"), "{got}");
        assert!(!got.contains("X-Gone"), "{got}");
        assert!(!got.contains("10.1.1.1:9000"), "{got}");
        let mut out = Vec::new();
        write_answer_head(&mut out, 200, "OK", &hs(&fields), b"rid", 1, true);
        let got = String::from_utf8(out).unwrap();
        assert!(got.contains("\r\nTransfer-Encoding: chunked\r\n"), "{got}");
    }

    #[test]
    fn forwarding_fields_of_an_ingress_in_front_are_kept_or_extended() {
        let got = request(
            &[
                ("Host", "store"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("X-Forwarded-For", "5.6.7.8"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "public.example"),
                ("X-Request-Id", "theirs"),
            ],
            &Additions {
                content_length: None,
                ..add()
            },
            1,
        );
        assert_eq!(
            got,
            "PUT /kv/a?x=1 HTTP/1.1\r\nHost: store\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nX-Request-Id: theirs\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\n\r\n"
        );
    }

    #[test]
    fn a_request_without_host_gets_the_nodes_address_and_stays_http_1_0() {
        let got = request(&[], &add(), 0);
        assert!(got.starts_with("PUT /kv/a?x=1 HTTP/1.0\r\n"), "{got}");
        assert!(got.contains("\r\nHost: 10.1.1.1:9000\r\n"), "{got}");
        assert!(!got.contains("X-Forwarded-Host"), "{got}");
    }

    #[test]
    fn the_head_ends_at_its_empty_line_with_crlf_or_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 0), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        // Searching on from where the last read ended still finds an end split across reads.
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for from in 0..whole.len() {
            assert_eq!(head_end(whole, from), Some(whole.len()), "from {from}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(client_keeps_alive(1, &hs(&[])));
        assert!(!client_keeps_alive(1, &hs(&[("Connection", "Close")])));
        assert!(!client_keeps_alive(0, &hs(&[])));
        assert!(client_keeps_alive(0, &hs(&[("connection", "keep-alive")])));
        assert!(!client_keeps_alive(
            1,
            &hs(&[("Connection", "keep-alive"), ("Connection", " close ")])
        ));
    }

    #[test]
    fn an_upgrade_to_tunnel_is_told_from_an_h2c_offer() {
        let ws = [("Connection", "Upgrade"), ("Upgrade", "websocket")];
        assert!(asks_upgrade(&hs(&ws)));
        assert!(asks_upgrade(&hs(&[
            ("Connection", "keep-alive, upgrade"),
            ("Upgrade", "h2c, websocket")
        ])));
        assert!(!asks_upgrade(&hs(&[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c")
        ])));
        // Without `Connection: upgrade` the field is not a request to switch.
        assert!(!asks_upgrade(&hs(&[("Upgrade", "websocket")])));
        assert!(!asks_upgrade(&hs(&[("Connection", "upgrade")])));
    }

    #[test]
    fn paths_of_targets() {
        assert_eq!(path_of("/kv/a?x=1"), "/kv/a");
        assert_eq!(path_of("/kv/a#f"), "/kv/a");
        assert_eq!(path_of("http://host:80/kv/b?q"), "/kv/b");
        assert_eq!(path_of("http://host"), "/");
        assert_eq!(path_of("*"), "*");
    }

    #[test]
    fn answer_bodies_are_framed_as_rfc_9112_says() {
        use Framing::*;
        let cl = |n| ("Content-Length", n);
        let te = |v| ("Transfer-Encoding", v);
        type Case<'a> = (
            bool,
            u16,
            &'a [(&'a str, &'a str)],
            Result<Framing, BadAnswer>,
        );
        let cases: &[Case] = &[
            (true, 200, &[cl("5")], Ok(Empty)),
            (false, 204, &[cl("5")], Ok(Empty)),
            (false, 304, &[], Ok(Empty)),
            (false, 103, &[], Ok(Empty)),
            (false, 200, &[cl("5")], Ok(Length(5))),
            (false, 200, &[cl("5"), cl("5")], Ok(Length(5))),
            (false, 200, &[cl("5"), cl("6")], Err(BadAnswer::Framing)),
            (false, 200, &[cl("x")], Err(BadAnswer::Framing)),
            (false, 200, &[te("chunked")], Ok(Chunked)),
            (false, 200, &[te("gzip, Chunked")], Ok(Chunked)),
            (false, 200, &[te("chunked, gzip")], Ok(UntilClose)),
            (
                false,
                200,
                &[te("chunked"), cl("5")],
                Err(BadAnswer::Framing),
            ),
            (false, 200, &[], Ok(UntilClose)),
        ];
        for (head, status, fields, want) in cases {
            assert_eq!(
                answer_framing(*head, *status, &hs(fields)),
                *want,
                "{head} {status} {fields:?}"
            );
        }
    }

    #[test]
    fn only_a_400_with_storage_node_nad_true_is_a_refusal() {
        assert!(is_not_distributor(400, &hs(&[("StorageNode-NAD", "true")])));
        assert!(is_not_distributor(
            400,
            &hs(&[("StorageNode-NAD", " TRUE ")])
        ));
        assert!(is_not_distributor(400, &hs(&[("Microstream-NAD", "true")])));
        assert!(!is_not_distributor(400, &hs(&[("X-NAD", "true")])));
        assert!(!is_not_distributor(400, &hs(&[])));
        assert!(!is_not_distributor(
            400,
            &hs(&[("StorageNode-NAD", "false")])
        ));
        assert!(!is_not_distributor(400, &hs(&[("StorageNode-NAD", "yes")])));
        for status in [409, 500, 200] {
            assert!(!is_not_distributor(
                status,
                &hs(&[("StorageNode-NAD", "true")])
            ));
        }
    }

    #[test]
    fn an_answer_goes_back_without_hop_by_hop_fields() {
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            200,
            "OK",
            &hs(&[
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Content-Length", "2"),
                ("X-Kept", "1"),
            ]),
            b"rid",
            1,
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: 1\r\nX-Request-Id: rid\r\n\r\n"
        );
        let mut out = Vec::new();
        write_answer_head(
            &mut out,
            404,
            "Not Found",
            &hs(&[("x-request-id", "node's")]),
            b"rid",
            0,
            false,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 404 Not Found\r\nx-request-id: node's\r\nConnection: close\r\n\r\n"
        );
        append_fields(&mut out, |o| o.extend_from_slice(b"X-Added: 1\r\n"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nx-request-id: node's\r\nConnection: close\r\nX-Added: 1\r\n\r\n"
        );
    }

    #[test]
    fn a_proxy_answer_is_json_with_its_length() {
        let mut out = Vec::new();
        write_proxy_answer(&mut out, 503, b"{}", Some(1), Some(b"rid"), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\nCache-Control: no-store\r\nRetry-After: 1\r\nX-Request-Id: rid\r\nConnection: close\r\n\r\n{}"
        );
    }
}
