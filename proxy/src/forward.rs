//! The request path: one request's life, top to bottom, on the worker that accepted its
//! connection.
//!
//! parse the head → check it (`request_rules`) → route (`routing::route`; for a read that
//! carries a read-your-writes token, `read_your_writes::decide`) → read a small body whole →
//! for the writer, pass the write hold (`hold::admit`) → pick a node → take a pooled
//! connection of that node or connect → send the head (and a whole body with it) → read the
//! answer's head → pass it back with its body → return the connection to the pool. When an
//! attempt fails, `attempt::next` says whether the request goes again.
//!
//! Below pingora-proxy's general loop on purpose: for this proxy's narrow job it cost about
//! what nginx spends on a whole request (header maps built and cloned per message, channels
//! and boxed callbacks per request, a task and a lock per pooled connection; BENCHMARKS.md).
//! Heads are parsed with httparse, the parser Pingora itself uses, into buffers that live with
//! the connection, and written back field by field (`h1`).

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Method;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::attempt::{self, Again, Attempt, Failure};
use crate::balance::Tried;
use crate::config::{AccessLog, Timeouts};
use crate::errors::{self, ProxyError, UpstreamError};
use crate::h1::{self, Framing, MAX_HEADERS};
use crate::hold::{self, Admission, Suspect, SuspectKind, WriteTicket};
use crate::metrics::TARGET_NONE;
use crate::pool::{self, Upstream, READ_BUFFER};
use crate::read_your_writes::{self as ryw, ReadYourWrites};
use crate::request_rules::{self, Chunked};
use crate::routing::{self, RouteTarget, WriterReadReason};
use crate::state::{Active, Backend, Shared};
use crate::workers::Sharded;

/// Request bodies up to this size are read whole before anything goes upstream (nginx's
/// request buffering): a client that stalls mid-body never leaves a node holding half a
/// request, a malformed chunked body is refused before a node sees it, and the body is at hand
/// for another attempt. Larger ones are streamed and cannot be sent twice.
pub const REQUEST_BUFFER: usize = 64 * 1024;

/// Attempts per request, whatever the attempt rules say: high enough that a write refused by
/// a not-yet-promoted writer (sent again after each backoff of the hold) is not cut off before
/// its hold deadline.
const MAX_ATTEMPTS: u32 = 64;

/// An answer's body up to this size leaves in the same write as its head.
const GATHER_BODY: usize = 16 * 1024;

/// Requests between header read and the end of their response, counted per worker. SIGTERM
/// waits for zero.
pub static IN_FLIGHT: Sharded = Sharded::new();

/// Counts a request in [`IN_FLIGHT`] for as long as it lives.
struct DrainGuard(());

impl DrainGuard {
    fn new() -> Self {
        IN_FLIGHT.add(1);
        DrainGuard(())
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        IN_FLIGHT.sub(1);
    }
}

/// Unique request ids, 24 hex digits: a random per-process prefix, then the worker number and
/// the worker's own count (no counter shared between the workers).
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

/// Bits of an id's counter part that count; the ones above hold the worker number.
const REQUEST_COUNT_BITS: u32 = 48;

fn process_prefix() -> u32 {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(rand::random)
}

impl RequestIds {
    fn new(worker: usize) -> Self {
        RequestIds {
            prefix: process_prefix(),
            next: AtomicU64::new(((worker as u64 & 0xffff) << REQUEST_COUNT_BITS) | 1),
        }
    }

    fn next(&self) -> [u8; 24] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 24];
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, b) in buf[8..].iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        buf
    }
}

/// What the connection loop does after a request.
pub struct Served {
    /// The client connection may carry another request.
    pub keep: bool,
    /// Bytes read past this request's end: the start of the next one.
    pub next: Option<BytesMut>,
    /// The connection closes with part of the request unread: read and drop what the client
    /// still sends for a moment before closing, or the reset that closing sends can destroy
    /// the answer before the client reads it.
    pub linger: bool,
}

impl Served {
    /// Refused, with the rest of the request (if any) unread.
    fn refused() -> Served {
        Served {
            keep: false,
            next: None,
            linger: true,
        }
    }
}

/// One worker's request handling.
pub struct Forwarder {
    shared: Arc<Shared>,
    ids: RequestIds,
}

/// Which backend of the request's [`Active`] was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Writer,
    Read(usize),
    Any(usize),
}

impl Pick {
    fn backend(self, a: &Active) -> Option<&Backend> {
        match self {
            Pick::Writer => a.writer.as_ref(),
            Pick::Read(i) => a.read_pool.get(i),
            Pick::Any(i) => a.any_pool.get(i),
        }
    }
}

/// The request body, as far as it was read before the first attempt.
enum Body {
    /// All of it is in the buffer (possibly empty).
    Whole,
    /// Only the start is in the buffer; this much is still to be read from the client.
    Streamed(Rest),
}

#[derive(Clone, Copy)]
enum Rest {
    Length(u64),
    Chunked(Chunked),
}

/// How an attempt on a node ended without an answer for the client.
struct Failed {
    error: UpstreamError,
    failure: Failure,
    /// Request body bytes that left toward the node.
    body_sent: usize,
    reused: bool,
}

/// How the request ended, for the client.
enum End {
    /// The node's answer went to the client (or as much of it as could). `keep`: both sides
    /// are at a message boundary. `body_unread`: the node answered before the client's body
    /// was all read.
    Answered {
        status: u16,
        keep: bool,
        body_unread: bool,
    },
    /// The proxy answers itself.
    Refuse(ProxyError),
    /// The client left, or stalled past its timeout after the answer started: nothing more
    /// can be said.
    ClientGone,
    /// The client stalled on its body: 408, unless an answer is already under way.
    ClientTimeout,
    /// The client's chunked body is malformed (`request_rules::Refusal::as_str`): 400.
    Malformed(&'static str),
}

/// Where one request stands: what the logs and the metrics report at its end.
struct Life {
    start: Instant,
    client: SocketAddr,
    route: Option<RouteTarget>,
    upstream: Option<Arc<str>>,
    attempts: u32,
    error: &'static str,
}

impl Forwarder {
    /// The request handling of worker number `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Self {
        Forwarder {
            shared,
            ids: RequestIds::new(worker),
        }
    }

    /// Serves the request whose head is `buf[..head_len]` (the connection loop read it whole
    /// and checked its raw bytes; what follows in `buf` is the start of its body).
    pub async fn serve(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        mut buf: BytesMut,
        head_len: usize,
        shutdown: &ShutdownWatch,
    ) -> Served {
        let _drain = DrainGuard::new();
        let mut life = Life {
            start: Instant::now(),
            client: peer,
            route: None,
            upstream: None,
            attempts: 0,
            error: "",
        };
        let head = buf.split_to(head_len).freeze();
        let mut body = buf;
        let mut slots = Box::new_uninit_slice(MAX_HEADERS);
        let mut req = httparse::Request::new(&mut []);
        let active = self.shared.load();
        let refused = match req.parse_with_uninit_headers(&head, &mut slots) {
            Ok(httparse::Status::Complete(_)) => None,
            Err(httparse::Error::TooManyHeaders) => {
                Some(("too_many_headers", errors::ERR_HEADERS_TOO_LARGE))
            }
            // The connection loop found the head's end, so a partial one is malformed too.
            Ok(httparse::Status::Partial) | Err(_) => {
                Some(("malformed_header", errors::ERR_BAD_REQUEST))
            }
        };
        if let Some((reason, answer)) = refused {
            tracing::debug!(reason, "request refused as parsed");
            self.shared.metrics.client_refused(reason);
            self.answer(client, &answer, None, false).await;
            self.finish(&life, &active, None, None, "-", answer.status);
            return Served::refused();
        }
        let method_str = req.method.unwrap_or("");
        let target = req.path.unwrap_or("/");
        let minor = req.version.unwrap_or(1);
        let headers: &[httparse::Header] = req.headers;

        let generated;
        let request_id: &[u8] = match h1::field(headers, "x-request-id") {
            Some(id) => id,
            None => {
                generated = self.ids.next();
                &generated
            }
        };
        let method = match Method::from_bytes(method_str.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                self.answer(client, &errors::ERR_BAD_REQUEST, Some(request_id), false)
                    .await;
                self.finish(&life, &active, None, Some(request_id), target, 400);
                return Served::refused();
            }
        };
        let finish = |life: &Life, active: &Active, status: u16| {
            self.finish(
                life,
                active,
                Some(&method),
                Some(request_id),
                target,
                status,
            )
        };

        if let Err(refusal) = request_rules::check(&request_rules::Request { minor, headers }) {
            tracing::debug!(reason = refusal.as_str(), "request refused before routing");
            self.shared.metrics.client_refused(refusal.as_str());
            // Where this request ends is in doubt: nothing after it is read as a request.
            self.answer(client, &errors::ERR_BAD_REQUEST, None, false)
                .await;
            finish(&life, &active, 400);
            return Served::refused();
        }
        let limits = active.settings.config.limits;
        let declared = request_rules::content_length(headers).ok().flatten();
        let chunked = h1::field(headers, "transfer-encoding").is_some();
        let mut route = routing::route(
            &method,
            h1::path_of(target),
            headers,
            &active.settings.table,
            &active.topology,
            active.lagging.len(),
        );
        // Positions of the read pool this request must not go to.
        let mut skip = Tried::default();
        if route == RouteTarget::Readers {
            if let Some(rw) = &active.settings.read_your_writes {
                (route, skip) = self.read_your_writes(rw, headers, &active);
            }
        }
        life.route = Some(route);
        let refusal = if head.len() as u64 > limits.max_header_bytes {
            Some(errors::ERR_HEADERS_TOO_LARGE)
        } else if declared.is_some_and(|n| n > limits.max_body) {
            // Refused before any node sees a byte of it.
            Some(errors::ERR_BODY_TOO_LARGE)
        } else {
            None
        };
        if let Some(err) = refusal {
            // Refused on its head: what follows it on the connection is not read as a request.
            self.answer(client, &err, Some(request_id), false).await;
            finish(&life, &active, err.status);
            return Served::refused();
        }
        let wants_keep = h1::client_keeps_alive(minor, headers);
        let body_complete_now = !chunked && declared.unwrap_or(0) as usize <= body.len();
        let refusal = if h1::asks_upgrade(headers) {
            Some(errors::ERR_UPGRADE_REFUSED)
        } else if let RouteTarget::NoUpstream(_) = route {
            Some(errors::ERR_NO_UPSTREAM)
        } else {
            None
        };
        if let Some(err) = refusal {
            // A well-formed request: the connection goes on if nothing of it is left unread.
            let keep = wants_keep && body_complete_now && !*shutdown.borrow();
            self.answer(client, &err, Some(request_id), keep).await;
            finish(&life, &active, err.status);
            return Served {
                keep,
                next: None,
                linger: !keep,
            };
        }

        let t = active.settings.config.timeouts;
        let mut next = None;
        let read = read_body(
            client,
            &mut body,
            declared,
            chunked,
            h1::expects_continue(headers),
            &t,
            limits.max_body,
            &mut next,
        )
        .await;
        let mut rest = match read {
            Ok(b) => b,
            Err(end) => {
                let linger = !matches!(end, End::ClientGone);
                let status = self.end_without_answer(client, end, request_id).await;
                finish(&life, &active, status);
                return Served {
                    keep: false,
                    next: None,
                    linger,
                };
            }
        };

        let request = Request {
            method: &method,
            method_str,
            target,
            minor,
            headers,
            request_id,
            client_ip: Some(peer.ip()),
            content_length: declared,
            keep_wanted: wants_keep,
            shutdown,
            max_body: limits.max_body,
        };
        let (end, active) = self
            .attempts(
                client, &request, &body, &mut rest, route, skip, active, &mut life,
            )
            .await;
        let keep_client = |keep: bool| keep && wants_keep && !*shutdown.borrow();
        let (status, keep, linger) = match end {
            End::Answered {
                status,
                keep,
                body_unread,
            } => (status, keep_client(keep), body_unread),
            End::Refuse(err) => {
                let whole = matches!(rest, Body::Whole);
                let keep = keep_client(whole);
                self.answer(client, &err, Some(request_id), keep).await;
                (err.status, keep, !whole)
            }
            End::ClientGone => (499, false, false),
            other => (
                self.end_without_answer(client, other, request_id).await,
                false,
                true,
            ),
        };
        finish(&life, &active, status);
        Served {
            keep,
            next: if keep { next } else { None },
            linger: !keep && linger,
        }
    }

    /// Sends the request to a node, again as the attempt rules allow, and passes the answer on.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        client: &mut TcpStream,
        req: &Request<'_>,
        body: &BytesMut,
        rest: &mut Body,
        route: RouteTarget,
        skip: Tried,
        mut active: Arc<Active>,
        life: &mut Life,
    ) -> (End, Arc<Active>) {
        let mut tried = skip;
        let mut tried_writer = false;
        let mut hold_deadline = None;
        let is_write = route == RouteTarget::Writer;
        let target_index = route.label_index();
        loop {
            let mut ticket: Option<WriteTicket> = None;
            if matches!(route, RouteTarget::Writer | RouteTarget::WriterRead(_)) {
                // Nothing of this request went upstream yet: it may wait for a writer (the
                // write hold), and goes with the newest topology, so the epoch it carries is
                // current.
                let fd = client.as_raw_fd();
                match hold::admit(&self.shared, is_write, &mut hold_deadline, Some(fd)).await {
                    Admission::Dial {
                        active: a,
                        ticket: t,
                    } => {
                        active = a;
                        ticket = t;
                    }
                    Admission::TimedOut(_) => {
                        life.error = "no_writer";
                        return (End::Refuse(errors::ERR_NO_WRITER), active);
                    }
                    Admission::Overflow => {
                        life.error = "hold_full";
                        return (End::Refuse(errors::ERR_HOLD_FULL), active);
                    }
                    Admission::ClientGone => return (End::ClientGone, active),
                }
            }
            let Some(pick) = pick(&active, route, tried, tried_writer) else {
                let err = if matches!(route, RouteTarget::Writer | RouteTarget::WriterRead(_)) {
                    life.error = "no_writer";
                    errors::ERR_NO_WRITER
                } else {
                    life.error = "no_upstream";
                    errors::ERR_NO_UPSTREAM
                };
                return (End::Refuse(err), active);
            };
            let Some(backend) = pick.backend(&active) else {
                return (End::Refuse(errors::ERR_NO_UPSTREAM), active);
            };
            life.attempts += 1;
            life.upstream = Some(backend.upstream.name.clone());
            let in_flight = backend.upstream.stats.begin();
            let epoch = backend
                .is_writer
                .then(|| active.topology.epoch_header.as_bytes());
            let failed = match self
                .exchange(client, req, body, rest, route, backend, epoch, &active)
                .await
            {
                Ok(end) => {
                    drop(in_flight);
                    drop(ticket);
                    return (end, active);
                }
                Err(failed) => failed,
            };
            drop(in_flight);
            drop(ticket);
            let on_writer = backend.is_writer;
            self.shared
                .metrics
                .upstream_error(target_index, failed.error.kind());
            life.error = failed.error.kind();
            if failed.failure == Failure::Connect {
                backend.upstream.stats.observe_failure();
                tried_writer |= on_writer;
                if let Pick::Read(i) | Pick::Any(i) = pick {
                    tried.insert(i);
                }
            }
            let next = attempt::next(&Attempt {
                route,
                failure: failed.failure,
                on_writer,
                idempotent: req.method.is_idempotent(),
                body_bytes_sent: failed.body_sent,
                body_kept: matches!(rest, Body::Whole),
                attempts: life.attempts,
                read_retries: active.settings.config.failover.read_retries,
                untried_left: has_alternative(&active, route, tried, tried_writer),
            });
            if next.writer_suspect && on_writer {
                // The proxy learns from its own failure: until the topology changes or the
                // writer accepts connections again, writes wait instead of each paying this
                // failure.
                self.shared.hold.mark_suspect(
                    Suspect {
                        address: backend.upstream.address.clone(),
                        socket: backend.upstream.socket,
                        epoch: active.topology.epoch,
                        kind: SuspectKind::Unreachable,
                    },
                    active.settings.config.timeouts.connect,
                    failed.error.kind(),
                );
            }
            if failed.failure == Failure::NotDistributor {
                self.shared.metrics.writer_refusal(next.again == Again::Yes);
            }
            if failed.reused && failed.error == UpstreamError::Closed {
                pool::forget(backend.upstream.socket);
            }
            let again = match next.again {
                Again::Yes => true,
                Again::No => false,
                Again::IfPooled => failed.reused,
            };
            // The rules bound each kind of retry by its own deadline or count; this only
            // stops a pathological run of them.
            let again = again && life.attempts < MAX_ATTEMPTS;
            if !again {
                return (End::Refuse(failed.error.answer()), active);
            }
            tracing::debug!(error = failed.error.kind(), "sending the request again");
        }
    }

    /// One attempt: the request to `backend`, its answer back to the client.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        client: &mut TcpStream,
        req: &Request<'_>,
        body: &BytesMut,
        rest: &mut Body,
        route: RouteTarget,
        backend: &Backend,
        epoch: Option<&[u8]>,
        active: &Active,
    ) -> Result<End, Failed> {
        let t = active.settings.config.timeouts;
        let node = backend.upstream.socket;
        let fail = |error, failure, body_sent, reused| Failed {
            error,
            failure,
            body_sent,
            reused,
        };
        // A write is never sent on a connection the node already closed: it could fail after it
        // went out, and then it cannot be sent again. A read that meets one is simply sent
        // again (the attempt rules), so only writes pay the check.
        let (mut up, reused) = match pool::take(node, route == RouteTarget::Writer) {
            Some(up) => (up, true),
            None => match tokio::time::timeout(t.connect, TcpStream::connect(node)).await {
                Err(_) => {
                    return Err(fail(
                        UpstreamError::ConnectTimeout,
                        Failure::Connect,
                        0,
                        false,
                    ))
                }
                Ok(Err(e)) => {
                    return Err(fail(
                        UpstreamError::of_connect(&e),
                        Failure::Connect,
                        0,
                        false,
                    ))
                }
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    (Upstream::new(tcp), false)
                }
            },
        };
        let started = Instant::now();

        // The head, with the body when it is all here: one write.
        up.write.clear();
        h1::write_request_head(
            &mut up.write,
            req.method_str,
            req.target,
            req.minor,
            req.headers,
            &h1::Additions {
                epoch,
                client_ip: req.client_ip,
                request_id: req.request_id,
                default_host: &backend.upstream.address,
                content_length: req.content_length,
            },
        );
        up.write.extend_from_slice(body);
        let after_send = |error: UpstreamError, sent: usize| Failed {
            error,
            failure: Failure::AfterSend {
                broke: error.broke(),
            },
            body_sent: sent,
            reused,
        };
        match tokio::time::timeout(t.write, up.tcp.write_all(&up.write)).await {
            Err(_) => return Err(after_send(UpstreamError::WriteTimeout, body.len())),
            Ok(Err(e)) => return Err(after_send(UpstreamError::of_io(&e), body.len())),
            Ok(Ok(())) => {}
        }
        let mut client_done = true;
        if let Body::Streamed(left) = rest {
            match stream_body(client, &mut up, left, &t, body.len(), req.max_body).await {
                Ok(BodyEnd::Sent) => {}
                Ok(BodyEnd::EarlyAnswer) | Ok(BodyEnd::SentWithMore) => client_done = false,
                Err(StreamError::Client(end)) => return Ok(end),
                Err(StreamError::Upstream(e, sent)) => return Err(after_send(e, sent)),
            }
        }
        let body_sent = body.len();

        // The answer's head; informational answers before it go to the client as they come.
        up.read.clear();
        let (status, framing, keep_up, keep_client, head_len) = loop {
            let len = match read_head(&mut up, &t).await {
                Ok(len) => len,
                Err(e) => return Err(after_send(e, body_sent)),
            };
            let mut slots = Box::new_uninit_slice(MAX_HEADERS);
            let mut resp = httparse::Response::new(&mut []);
            match response_parser().parse_response_with_uninit_headers(
                &mut resp,
                &up.read[..len],
                &mut slots,
            ) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return Err(after_send(UpstreamError::ProtocolError, body_sent)),
            }
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) {
                if status == 101 {
                    // Never asked for: Upgrade is not passed on.
                    return Err(after_send(UpstreamError::ProtocolError, body_sent));
                }
                // A 100 answers the Expect this proxy already answered itself.
                // An HTTP/1.0 client cannot read one (RFC 9110 15.2).
                if status != 100
                    && req.minor == 1
                    && write_timed(client, &up.read[..len], t.write).await.is_err()
                {
                    return Ok(End::ClientGone);
                }
                up.read.advance(len);
                continue;
            }
            let headers: &[httparse::Header] = resp.headers;
            if route == RouteTarget::Writer && h1::is_not_distributor(status, headers) {
                if backend.is_writer {
                    self.shared.hold.mark_refused(Suspect {
                        address: backend.upstream.address.clone(),
                        socket: backend.upstream.socket,
                        epoch: active.topology.epoch,
                        kind: SuspectKind::Refused,
                    });
                }
                // Not passed on: the attempt rules decide whether the write is sent again.
                // The connection goes (its answer's body is not read).
                return Err(Failed {
                    error: UpstreamError::NotDistributor,
                    failure: Failure::NotDistributor,
                    body_sent,
                    reused,
                });
            }
            let Ok(framing) = h1::answer_framing(req.method == Method::HEAD, status, headers)
            else {
                return Err(after_send(UpstreamError::ProtocolError, body_sent));
            };
            // An HTTP/1.0 request went as 1.0: the node closes after it whatever its answer says.
            // A body framed by the node's close leaves nothing to reuse.
            let keep_up = req.minor == 1
                && framing != Framing::UntilClose
                && h1::upstream_keeps_alive(resp.version.unwrap_or(1), headers)
                && client_done;
            // A body framed by close ends the client's connection too.
            let keep_client = req.keep_wanted
                && !*req.shutdown.borrow()
                && client_done
                && framing != Framing::UntilClose;
            up.write.clear();
            h1::write_answer_head(
                &mut up.write,
                status,
                resp.reason.unwrap_or(""),
                headers,
                req.request_id,
                req.minor,
                keep_client,
            );
            if route == RouteTarget::Writer && (200..300).contains(&status) {
                if let Some(rw) = &active.settings.read_your_writes {
                    self.issue_token(rw, headers, active, &mut up.write);
                }
            }
            break (status, framing, keep_up, keep_client, len);
        };
        backend
            .upstream
            .stats
            .observe_latency_micros(started.elapsed().as_secs_f64() * 1e6);
        if route == RouteTarget::Writer {
            self.shared.hold.writer_answered();
        }
        up.read.advance(head_len);

        // From here the client has (part of) the answer: nothing is sent again.
        let passed = pass_body(client, &mut up, framing, &t).await;
        let keep = match passed {
            Passed::Whole { overrun } => {
                if keep_up && !overrun {
                    pool::put(node, up, t.idle_upstream);
                }
                keep_client
            }
            Passed::ClientGone => return Ok(End::ClientGone),
            // The answer ended early or stalled: the client must see its connection end
            // rather than wait for the rest or read the next answer as this one's.
            Passed::UpstreamBroke(e) => {
                self.shared
                    .metrics
                    .upstream_error(route.label_index(), e.kind());
                false
            }
        };
        Ok(End::Answered {
            status,
            keep,
            body_unread: !client_done,
        })
    }

    /// Where a read routed to the readers goes once its read-your-writes token (if any) is
    /// read, and the read pool positions it must skip.
    fn read_your_writes(
        &self,
        rw: &ReadYourWrites,
        headers: &[httparse::Header],
        a: &Active,
    ) -> (RouteTarget, Tried) {
        let Some(token) = rw.token_of(headers) else {
            return (RouteTarget::Readers, Tried::default());
        };
        let read = ryw::decide(
            Some(token),
            ryw::now_ms(),
            rw.window,
            a.topology.epoch,
            a.topology.replication.as_ref(),
            &a.read_applied,
        );
        match read {
            ryw::Read::Ordinary => (RouteTarget::Readers, Tried::default()),
            ryw::Read::Readers(skip) => {
                self.shared.metrics.read_your_writes(None);
                (RouteTarget::Readers, skip)
            }
            ryw::Read::Writer(why) => {
                self.shared.metrics.read_your_writes(Some(why));
                tracing::debug!(why = why.as_str(), "read-your-writes read for the writer");
                if a.writer.is_some() {
                    (
                        RouteTarget::WriterRead(WriterReadReason::ReadYourWrites),
                        Tried::default(),
                    )
                } else {
                    // Never a reader that may lack the write: nothing can serve it.
                    (
                        RouteTarget::NoUpstream(crate::config::Target::Readers),
                        Tried::default(),
                    )
                }
            }
        }
    }

    /// Adds the read-your-writes token to the head in `out` of a write's 2xx answer.
    fn issue_token(
        &self,
        rw: &ReadYourWrites,
        answer: &[httparse::Header],
        active: &Active,
        out: &mut Vec<u8>,
    ) {
        let (offset, source) = match ryw::reported_offset(answer, &rw.offset_header) {
            Some(offset) => (offset, ryw::Source::Writer),
            // A lower bound, or nothing known: the token then counts by its time only.
            None => (
                active.topology.replication.map_or(0, |r| r.writer_offset),
                ryw::Source::Published,
            ),
        };
        let token = ryw::Token {
            epoch: active.topology.epoch,
            offset,
            source,
            unix_ms: ryw::now_ms(),
        };
        h1::append_fields(out, |out| rw.write_field(out, &token));
        self.shared.metrics.token_issued(source);
    }

    /// Writes a proxy-made answer. `keep`: the connection stays open for another request.
    async fn answer(
        &self,
        client: &mut TcpStream,
        err: &ProxyError,
        request_id: Option<&[u8]>,
        keep: bool,
    ) {
        let mut out = Vec::with_capacity(256);
        h1::write_proxy_answer(
            &mut out,
            err.status,
            &err.body(),
            err.retry_after,
            request_id,
            keep,
        );
        let t = self.shared.load().settings.config.timeouts.write;
        let _ = write_timed(client, &out, t).await;
    }

    /// Ends a request that gets no answer from a node; returns the status to report.
    async fn end_without_answer(&self, client: &mut TcpStream, end: End, request_id: &[u8]) -> u16 {
        match end {
            End::ClientTimeout => {
                self.answer(
                    client,
                    &errors::ERR_REQUEST_TIMEOUT,
                    Some(request_id),
                    false,
                )
                .await;
                408
            }
            End::Refuse(err) => {
                self.answer(client, &err, Some(request_id), false).await;
                err.status
            }
            End::Malformed(reason) => {
                tracing::debug!(reason, "request body refused");
                self.shared.metrics.client_refused(reason);
                self.answer(client, &errors::ERR_BAD_REQUEST, Some(request_id), false)
                    .await;
                400
            }
            End::Answered { status, .. } => status,
            // nginx's convention for "the client went away before we answered".
            End::ClientGone => 499,
        }
    }

    /// The request's metrics and access log line.
    fn finish(
        &self,
        life: &Life,
        active: &Active,
        method: Option<&Method>,
        request_id: Option<&[u8]>,
        target: &str,
        status: u16,
    ) {
        let elapsed = life.start.elapsed();
        let method = method.unwrap_or(&Method::GET);
        let target_index = life
            .route
            .map(RouteTarget::label_index)
            .unwrap_or(TARGET_NONE);
        self.shared
            .metrics
            .request_done(target_index, method, status, elapsed);
        let log = match active.settings.config.access_log {
            AccessLog::Off => false,
            AccessLog::Errors => status >= 400,
            AccessLog::All => true,
        };
        if log {
            let request_id = request_id
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("-");
            tracing::info!(
                target: "rw_proxy::access",
                client = %life.client,
                worker = crate::workers::current(),
                method = %method,
                path = %target,
                target = life.route.map(RouteTarget::label).unwrap_or("none"),
                why = match life.route {
                    Some(RouteTarget::WriterRead(reason)) => reason.as_str(),
                    _ => "-",
                },
                upstream = life.upstream.as_deref().unwrap_or("-"),
                status,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                request_id,
                attempts = life.attempts,
                error = life.error,
            );
        }
    }
}

/// What an attempt sends.
struct Request<'a> {
    method: &'a Method,
    method_str: &'a str,
    target: &'a str,
    minor: u8,
    headers: &'a [httparse::Header<'a>],
    request_id: &'a [u8],
    client_ip: Option<std::net::IpAddr>,
    content_length: Option<u64>,
    /// The client wants its connection kept.
    keep_wanted: bool,
    /// Draining: the client is told its connection ends with this answer, rather than finding
    /// out by sending its next request into a closed socket.
    shutdown: &'a ShutdownWatch,
    max_body: u64,
}

/// The node to try next for `route`, none of `tried`.
fn pick(a: &Active, route: RouteTarget, tried: Tried, tried_writer: bool) -> Option<Pick> {
    let fallback = || {
        (a.settings.table.reads_fall_back_to_writer && a.writer.is_some() && !tried_writer)
            .then_some(Pick::Writer)
    };
    match route {
        RouteTarget::Writer | RouteTarget::WriterRead(_) => a.writer.as_ref().map(|_| Pick::Writer),
        RouteTarget::Readers => a
            .read_balancer
            .pick(&a.read_pool, tried)
            .map(Pick::Read)
            .or_else(fallback),
        RouteTarget::Any => a.any_balancer.pick(&a.any_pool, tried).map(Pick::Any),
        RouteTarget::NoUpstream(_) => None,
    }
}

/// Whether a read whose attempt failed can go somewhere else.
fn has_alternative(a: &Active, route: RouteTarget, tried: Tried, tried_writer: bool) -> bool {
    let untried = |pool: &[Backend]| (0..pool.len()).any(|i| !tried.contains(i));
    let writer_left =
        a.settings.table.reads_fall_back_to_writer && a.writer.is_some() && !tried_writer;
    match route {
        RouteTarget::Readers => untried(&a.read_pool) || writer_left,
        RouteTarget::Any => untried(&a.any_pool),
        _ => false,
    }
}

/// Reads a body of up to [`REQUEST_BUFFER`] bytes whole into `body`; a larger one is left to
/// stream. Bytes read past a chunked body's end go to `next`.
#[allow(clippy::too_many_arguments)]
async fn read_body(
    client: &mut TcpStream,
    body: &mut BytesMut,
    declared: Option<u64>,
    chunked: bool,
    expect_continue: bool,
    t: &Timeouts,
    max_body: u64,
    next: &mut Option<BytesMut>,
) -> Result<Body, End> {
    // The client waits for this before it sends its body (nginx answers it itself too); the
    // node never sees the Expect. Sent once, only when a body is still to come.
    let mut continue_owed = expect_continue;
    let mut tell_to_continue = async |client: &mut TcpStream| {
        if std::mem::take(&mut continue_owed) {
            write_timed(client, b"HTTP/1.1 100 Continue\r\n\r\n", t.write)
                .await
                .map_err(|_| End::ClientGone)
        } else {
            Ok(())
        }
    };
    if chunked {
        let mut framing = Chunked::default();
        let mut seen = 0;
        loop {
            match framing.feed(&body[seen..]) {
                Err(refusal) => return Err(End::Malformed(refusal.as_str())),
                Ok(Some(_)) if framing.data_len() > max_body => {
                    return Err(End::Refuse(errors::ERR_BODY_TOO_LARGE));
                }
                Ok(Some(n)) => {
                    let end = seen + n;
                    if body.len() > end {
                        *next = Some(body.split_off(end));
                    }
                    return Ok(Body::Whole);
                }
                Ok(None) => seen = body.len(),
            }
            if framing.data_len() > max_body {
                return Err(End::Refuse(errors::ERR_BODY_TOO_LARGE));
            }
            if body.len() >= REQUEST_BUFFER {
                return Ok(Body::Streamed(Rest::Chunked(framing)));
            }
            tell_to_continue(client).await?;
            read_some(client, body, REQUEST_BUFFER - body.len(), t.client_body).await?;
        }
    }
    let length = declared.unwrap_or(0);
    if body.len() as u64 >= length {
        // The connection loop keeps what follows this request out of it; should anything be
        // past the end, it is the next request's, never this body's.
        if let Ok(end) = usize::try_from(length) {
            if body.len() > end {
                *next = Some(body.split_off(end));
            }
        }
        return Ok(Body::Whole);
    }
    tell_to_continue(client).await?;
    if length > REQUEST_BUFFER as u64 {
        return Ok(Body::Streamed(Rest::Length(length - body.len() as u64)));
    }
    while (body.len() as u64) < length {
        let want = length as usize - body.len();
        read_some(client, body, want, t.client_body).await?;
    }
    Ok(Body::Whole)
}

/// One read of up to `want` bytes from the client, appended to `buf`.
async fn read_some(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    timeout: Duration,
) -> Result<usize, End> {
    let at = buf.len();
    buf.resize(at + want, 0);
    let r = tokio::time::timeout(timeout, client.read(&mut buf[at..])).await;
    let n = match r {
        Err(_) => {
            buf.truncate(at);
            return Err(End::ClientTimeout);
        }
        Ok(Ok(0)) | Ok(Err(_)) => {
            buf.truncate(at);
            return Err(End::ClientGone);
        }
        Ok(Ok(n)) => n,
    };
    buf.truncate(at + n);
    Ok(n)
}

enum BodyEnd {
    Sent,
    /// All of it went, and the client sent bytes past its end (a pipelined request behind a
    /// streamed chunked body): they were dropped, so the connection must not carry another
    /// request.
    SentWithMore,
    /// The node answered before the whole body went: the rest is not sent, and neither
    /// connection can carry another request.
    EarlyAnswer,
}

enum StreamError {
    Client(End),
    /// The node failed; this many body bytes had left toward it.
    Upstream(UpstreamError, usize),
}

/// Streams the rest of a request body from the client to the node, through the connection's
/// write buffer. An answer from the node ends it early (a node may refuse a body it does not
/// want to read).
async fn stream_body(
    client: &mut TcpStream,
    up: &mut Upstream,
    left: &mut Rest,
    t: &Timeouts,
    mut sent: usize,
    max_body: u64,
) -> Result<BodyEnd, StreamError> {
    up.write.clear();
    up.write.resize(READ_BUFFER, 0);
    let (mut up_read, mut up_write) = up.tcp.split();
    let mut probe = [0u8; 1];
    let mut more = false;
    loop {
        let want = match left {
            Rest::Length(0) => return Ok(BodyEnd::Sent),
            Rest::Chunked(c) if c.is_done() && more => return Ok(BodyEnd::SentWithMore),
            Rest::Length(n) => (*n).min(up.write.len() as u64) as usize,
            Rest::Chunked(c) if c.is_done() => return Ok(BodyEnd::Sent),
            Rest::Chunked(_) => up.write.len(),
        };
        let n = tokio::select! {
            biased;
            _ = up_read.peek(&mut probe) => return Ok(BodyEnd::EarlyAnswer),
            r = tokio::time::timeout(t.client_body, client.read(&mut up.write[..want])) => match r {
                Err(_) => return Err(StreamError::Client(End::ClientTimeout)),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(StreamError::Client(End::ClientGone)),
                Ok(Ok(n)) => n,
            },
        };
        let mut chunk = &up.write[..n];
        match left {
            Rest::Length(l) => *l -= n as u64,
            Rest::Chunked(c) => match c.feed(chunk) {
                Err(refusal) => return Err(StreamError::Client(End::Malformed(refusal.as_str()))),
                // Bytes past the end would be a next request: a client that pipelines behind a
                // large chunked body gets its connection closed instead (rare, and safe).
                Ok(Some(end)) => {
                    more |= end < chunk.len();
                    chunk = &chunk[..end];
                }
                Ok(None) => {}
            },
        }
        let write = tokio::time::timeout(t.write, up_write.write_all(chunk));
        tokio::select! {
            biased;
            _ = up_read.peek(&mut probe) => return Ok(BodyEnd::EarlyAnswer),
            r = write => match r {
                Err(_) => return Err(StreamError::Upstream(UpstreamError::WriteTimeout, sent)),
                Ok(Err(e)) => return Err(StreamError::Upstream(UpstreamError::of_io(&e), sent)),
                Ok(Ok(())) => sent += chunk.len(),
            },
        }
        if let Rest::Chunked(c) = left {
            // A declared length over the limit was refused before anything was sent.
            if c.data_len() > max_body {
                return Err(StreamError::Client(End::Refuse(errors::ERR_BODY_TOO_LARGE)));
            }
        }
    }
}

fn response_parser() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    // Seen in the wild and harmless, as Pingora's client allows.
    config.allow_spaces_after_header_name_in_responses(true);
    config
}

/// Reads from the node until an answer's head is complete in `up.read`; returns its length.
async fn read_head(up: &mut Upstream, t: &Timeouts) -> Result<usize, UpstreamError> {
    let mut searched = 0;
    loop {
        if let Some(end) = h1::head_end(&up.read, searched) {
            return Ok(end);
        }
        searched = up.read.len();
        if up.read.len() >= READ_BUFFER {
            // A head larger than the buffer: not something a storage node sends.
            return Err(UpstreamError::ProtocolError);
        }
        up.read.reserve(READ_BUFFER - up.read.len());
        match tokio::time::timeout(t.read, up.tcp.read_buf(&mut up.read)).await {
            Err(_) => return Err(UpstreamError::ReadTimeout),
            Ok(Err(e)) => return Err(UpstreamError::of_io(&e)),
            Ok(Ok(0)) => return Err(UpstreamError::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// How passing an answer's body went.
enum Passed {
    /// All of it. `overrun`: the node sent bytes past its end (the connection is not reused).
    Whole {
        overrun: bool,
    },
    ClientGone,
    /// The node closed early, or stalled past `timeouts.read`.
    UpstreamBroke(UpstreamError),
}

/// Passes the answer's head (in `up.write`) and body (starting in `up.read`) to the client.
async fn pass_body(
    client: &mut TcpStream,
    up: &mut Upstream,
    framing: Framing,
    t: &Timeouts,
) -> Passed {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunks = Chunked::default();
    let mut head_sent = false;
    loop {
        // What of the buffer belongs to this answer.
        let avail = up.read.len();
        let (take, done, overrun) = match framing {
            Framing::Empty => (0, true, avail > 0),
            Framing::Length(_) => {
                let take = left.min(avail as u64) as usize;
                (take, take as u64 == left, avail > take)
            }
            Framing::Chunked => match chunks.feed(&up.read) {
                Ok(Some(end)) => (end, true, avail > end),
                Ok(None) => (avail, false, false),
                Err(_) => {
                    // Malformed: pass what is known good, then end the connection.
                    if !head_sent {
                        let _ = write_timed(client, &up.write, t.write).await;
                    }
                    return Passed::UpstreamBroke(UpstreamError::ProtocolError);
                }
            },
            Framing::UntilClose => (avail, false, false),
        };
        let piece = &up.read[..take];
        let wrote = if !head_sent {
            head_sent = true;
            if piece.len() <= GATHER_BODY {
                up.write.extend_from_slice(piece);
                write_timed(client, &up.write, t.write).await
            } else {
                match write_timed(client, &up.write, t.write).await {
                    Ok(()) => write_timed(client, piece, t.write).await,
                    Err(e) => Err(e),
                }
            }
        } else if piece.is_empty() {
            Ok(())
        } else {
            write_timed(client, piece, t.write).await
        };
        if wrote.is_err() {
            return Passed::ClientGone;
        }
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
        if done {
            return Passed::Whole { overrun };
        }
        up.read.clear();
        match tokio::time::timeout(t.read, up.tcp.read_buf(&mut up.read)).await {
            Err(_) => return Passed::UpstreamBroke(UpstreamError::ReadTimeout),
            Ok(Err(e)) => return Passed::UpstreamBroke(UpstreamError::of_io(&e)),
            Ok(Ok(0)) => {
                return match framing {
                    Framing::UntilClose => Passed::Whole { overrun: false },
                    _ => Passed::UpstreamBroke(UpstreamError::Closed),
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

async fn write_timed(
    client: &mut TcpStream,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, client.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_hex_within_and_across_workers() {
        let ids = RequestIds::new(0);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a[..8], &b[..8]);
        // Another worker: the same process prefix, its own number, never the same id.
        let c = RequestIds::new(1).next();
        assert_eq!(&a[..8], &c[..8]);
        assert_ne!(a, c);
        assert_eq!(&c[8..12], b"0001");
        assert_eq!(&a[8..12], b"0000");
    }
}
