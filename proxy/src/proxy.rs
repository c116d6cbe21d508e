//! The Pingora `ProxyHttp` implementation: the request path.
//!
//! Per request: one load of the shared state (kept in the context), the routing decision,
//! a balancer pick, a cloned prepared peer, a handful of header edits. No locks; the
//! allocations left are the ones Pingora's API or a unique value needs (the boxed peer, a
//! generated request id, the X-Forwarded-For value).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST};
use http::HeaderValue;
use pingora_core::modules::http::HttpModules;
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::attempt::{self, Again, Attempt, Failure};
use crate::balance::Tried;
use crate::config::AccessLog;
use crate::errors::{self, ProxyError};
use crate::hold::{self, Admission, Suspect, SuspectKind, WriteTicket};
use crate::metrics::TARGET_NONE;
use crate::request_rules;
use crate::routing::{self, RouteTarget};
use crate::state::{Active, Backend, Shared};
use crate::topology::InFlight;
use crate::workers::Sharded;

pub const X_WRITER_EPOCH: &str = "x-writer-epoch";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// Set (to `true`) by a storage node that refused a write as not the distributor: the node
/// library's newest line calls it `StorageNode-NAD`, every earlier one `Microstream-NAD`.
pub const NAD_HEADERS: [&str; 2] = ["storagenode-nad", "microstream-nad"];
/// Idle time allowed between two requests on a client keep-alive connection.
const DOWNSTREAM_KEEPALIVE_SECS: u64 = crate::downstream::IDLE_TIMEOUT.as_secs();

/// Requests between header read and the end of their response, counted per worker. SIGTERM
/// waits for zero.
pub static IN_FLIGHT: Sharded = Sharded::new();

/// Counts a request in [`IN_FLIGHT`] for as long as its context lives (Pingora drops the
/// context after the response is flushed).
pub struct DrainGuard(());

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

    fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 24];
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, b) in buf[8..].iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Which backend of the request's [`Active`] was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Writer,
    Read(usize),
    Any(usize),
}

pub struct Ctx {
    active: Arc<Active>,
    start: Instant,
    route: Option<RouteTarget>,
    pick: Option<Pick>,
    tried: Tried,
    tried_writer: bool,
    attempts: u32,
    upstream_started: Option<Instant>,
    in_flight: Option<InFlight>,
    request_id: Option<HeaderValue>,
    body_bytes: u64,
    /// Set by the first write hold of this request; later holds share it.
    hold_deadline: Option<tokio::time::Instant>,
    /// A write admitted to the writer: in flight until the request ends.
    write_ticket: Option<WriteTicket>,
    _drain: DrainGuard,
}

impl Ctx {
    fn backend(&self) -> Option<&Backend> {
        match self.pick? {
            Pick::Writer => self.active.writer.as_ref(),
            Pick::Read(i) => self.active.read_pool.get(i),
            Pick::Any(i) => self.active.any_pool.get(i),
        }
    }

    fn target_index(&self) -> usize {
        self.route
            .map(RouteTarget::label_index)
            .unwrap_or(TARGET_NONE)
    }
}

pub struct RwProxy {
    shared: Arc<Shared>,
    ids: RequestIds,
}

impl RwProxy {
    /// The request handling of worker number `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Self {
        RwProxy {
            shared,
            ids: RequestIds::new(worker),
        }
    }

    /// The facts [`attempt::next`] decides on, for the attempt that just failed.
    fn attempt(&self, session: &Session, ctx: &Ctx, on_writer: bool, failure: Failure) -> Attempt {
        Attempt {
            route: ctx
                .route
                .unwrap_or(RouteTarget::NoUpstream(crate::config::Target::Readers)),
            failure,
            on_writer,
            idempotent: session.req_header().method.is_idempotent(),
            body_bytes_sent: session.upstream_body_bytes_sent().unwrap_or(0)
                + ctx.body_bytes as usize,
            body_kept: !session.as_ref().retry_buffer_truncated(),
            attempts: ctx.attempts,
            read_retries: ctx.active.settings.config.failover.read_retries,
            untried_left: Self::has_alternative(ctx),
        }
    }

    /// Whether a read whose connect failed can go somewhere else.
    fn has_alternative(ctx: &Ctx) -> bool {
        let a = &ctx.active;
        let untried = |pool: &[Backend]| (0..pool.len()).any(|i| !ctx.tried.contains(i));
        let writer_left =
            a.settings.table.reads_fall_back_to_writer && a.writer.is_some() && !ctx.tried_writer;
        match ctx.route {
            Some(RouteTarget::Readers) => untried(&a.read_pool) || writer_left,
            Some(RouteTarget::Any) => untried(&a.any_pool),
            _ => false,
        }
    }
}

/// Writes a proxy-made JSON error. Closes the connection if the request body was not read.
async fn respond(
    session: &mut Session,
    err: &ProxyError,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let body = Bytes::from(err.body());
    let mut resp = ResponseHeader::build(err.status, Some(5))?;
    resp.insert_header("Content-Type", "application/json")?;
    resp.insert_header("Content-Length", body.len())?;
    resp.insert_header("Cache-Control", "no-store")?;
    if let Some(secs) = err.retry_after {
        resp.insert_header("Retry-After", secs)?;
    }
    if let Some(id) = request_id {
        resp.insert_header("X-Request-Id", id.clone())?;
    }
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Whether the peer already closed (or reset) this idle pooled connection, asking the kernel
/// directly. Pingora's own reuse test reads through tokio, whose readiness cache can lag behind
/// a FIN that already arrived (a writer killed a moment ago); a write sent on such a connection
/// fails after it was sent and must not be replayed. Checked before anything is written.
fn pooled_connection_closed(fd: std::os::unix::io::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the open upstream socket Pingora hands to `connected_to_upstream`; a
    // one-byte MSG_PEEK | MSG_DONTWAIT recv into a local neither blocks, consumes data, nor
    // touches the descriptor's lifetime.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        // Nothing to read: open and idle, as it should be.
        -1 => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
        // 0: FIN. > 0: bytes nobody asked for on an idle connection (Pingora refuses those too).
        _ => true,
    }
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

#[async_trait]
impl ProxyHttp for RwProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            active: self.shared.load(),
            start: Instant::now(),
            route: None,
            pick: None,
            tried: Tried::default(),
            tried_writer: false,
            attempts: 0,
            upstream_started: None,
            in_flight: None,
            request_id: None,
            body_bytes: 0,
            hold_deadline: None,
            write_ticket: None,
            _drain: DrainGuard::new(),
        }
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // Pingora's default adds a (disabled) response compression module, which still costs
        // an allocation and a filter call per request. This proxy passes bodies through as is.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let raw_header = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes())
            .unwrap_or_default();
        let req = session.req_header();
        let form = request_rules::check(&request_rules::Request {
            method: &req.method,
            version: req.version,
            headers: &req.headers,
        });
        if let Err(refusal) = form {
            tracing::debug!(reason = refusal.as_str(), "request refused before routing");
            // Where this request ends is in doubt, so nothing after it on the connection is
            // read as a request.
            session.set_keepalive(None);
            respond(session, &errors::ERR_BAD_REQUEST, None).await?;
            return Ok(true);
        }
        let active = &ctx.active;
        let limits = active.settings.config.limits;
        let req = session.req_header();
        let route = routing::route(
            &req.method,
            req.uri.path(),
            &req.headers,
            &active.settings.table,
            &active.topology,
        );
        ctx.route = Some(route);
        ctx.request_id = Some(match req.headers.get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => self.ids.next(),
        });
        let declared_body = content_length(req);

        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
        }

        let header_bytes = raw_header.len();
        let refusal = if header_bytes as u64 > limits.max_header_bytes {
            Some(&errors::ERR_HEADERS_TOO_LARGE)
        } else if declared_body.is_some_and(|n| n > limits.max_body) {
            // Refused before any upstream sees a byte of it.
            Some(&errors::ERR_BODY_TOO_LARGE)
        } else if let RouteTarget::NoUpstream(_) = route {
            Some(&errors::ERR_NO_UPSTREAM)
        } else {
            None
        };
        match refusal {
            Some(err) => {
                if err.status != 503 {
                    // Refused on its header (431, 413): what follows it on the connection is
                    // not read as a request.
                    session.set_keepalive(None);
                }
                respond(session, err, ctx.request_id.as_ref()).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            // Only bodies without Content-Length get here over the limit.
            if ctx.body_bytes > ctx.active.settings.config.limits.max_body {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over limits.max_body",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .unwrap_or(RouteTarget::NoUpstream(crate::config::Target::Readers));
        if matches!(route, RouteTarget::Writer | RouteTarget::WriterRead(_)) {
            // Nothing of this request went upstream yet: it may wait for a writer (the write
            // hold), and goes with the newest topology, so the epoch it carries is current.
            let is_write = route == RouteTarget::Writer;
            let client = session.as_downstream().stream().map(|s| s.id());
            match hold::admit(&self.shared, is_write, &mut ctx.hold_deadline, client).await {
                Admission::Dial { active, ticket } => {
                    ctx.active = active;
                    ctx.write_ticket = ticket;
                }
                Admission::TimedOut(_) => return Err(Error::new(errors::NO_WRITER)),
                Admission::Overflow => return Err(Error::new(errors::HOLD_FULL)),
                Admission::ClientGone => {
                    return Error::e_explain(
                        ErrorType::ConnectionClosed,
                        "the client left while its request was held",
                    )
                    .map_err(|mut e| {
                        e.esource = ErrorSource::Downstream;
                        e
                    })
                }
            }
        }
        let a = &ctx.active;
        let fallback = |tried_writer: bool| {
            (a.settings.table.reads_fall_back_to_writer && a.writer.is_some() && !tried_writer)
                .then_some(Pick::Writer)
        };
        let pick = match route {
            RouteTarget::Writer | RouteTarget::WriterRead(_) => {
                a.writer.as_ref().map(|_| Pick::Writer)
            }
            RouteTarget::Readers => a
                .read_balancer
                .pick(&a.read_pool, ctx.tried)
                .map(Pick::Read)
                .or_else(|| fallback(ctx.tried_writer)),
            RouteTarget::Any => a.any_balancer.pick(&a.any_pool, ctx.tried).map(Pick::Any),
            RouteTarget::NoUpstream(_) => None,
        };
        let Some(pick) = pick else {
            let etype = if matches!(route, RouteTarget::Writer | RouteTarget::WriterRead(_)) {
                errors::NO_WRITER
            } else {
                errors::NO_UPSTREAM
            };
            return Err(Error::new(etype));
        };
        ctx.pick = Some(pick);
        ctx.attempts += 1;
        let Some((peer, in_flight)) = ctx
            .backend()
            .map(|b| (Box::new(b.peer.clone()), b.upstream.stats.begin()))
        else {
            return Err(Error::new(errors::NO_UPSTREAM));
        };
        ctx.in_flight = Some(in_flight);
        ctx.upstream_started = Some(Instant::now());
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared
            .metrics
            .upstream_error(ctx.target_index(), errors::upstream_error_kind(&e));
        let failed_writer = ctx.backend().is_some_and(|b| {
            b.upstream.stats.observe_failure();
            b.is_writer
        });
        ctx.tried_writer |= failed_writer;
        match ctx.pick {
            Some(Pick::Read(i)) | Some(Pick::Any(i)) => ctx.tried.insert(i),
            _ => {}
        }
        ctx.in_flight = None;
        ctx.write_ticket = None;
        let next = attempt::next(&self.attempt(session, ctx, failed_writer, Failure::Connect));
        if next.writer_suspect {
            if let Some(w) = ctx.active.writer.as_ref() {
                // The proxy learns from its own failure: until the topology changes or the
                // writer accepts connections again, writes wait instead of each paying this
                // failure.
                self.shared.hold.mark_suspect(
                    Suspect {
                        address: w.upstream.address.clone(),
                        socket: w.upstream.socket,
                        epoch: ctx.active.topology.epoch,
                        kind: SuspectKind::Unreachable,
                    },
                    ctx.active.settings.config.timeouts.connect,
                    errors::upstream_error_kind(&e),
                );
            }
        }
        // A read goes to another node; a request for the writer goes back through the write
        // hold (upstream_peer), which waits for a new topology.
        e.set_retry(next.again == Again::Yes);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only writes: a read that meets a dead pooled connection may simply be sent again.
        if reused && ctx.route == Some(RouteTarget::Writer) && pooled_connection_closed(fd) {
            return Err(Error::new_up(errors::STALE_POOLED));
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if *e.esource() == ErrorSource::Upstream
            && e.etype() == &ErrorType::ReadTimedout
            && !session.is_body_done()
        {
            // The upstream cannot answer a request whose body has not all arrived: the client
            // stalled, not the node. Its timeout, its 408; nothing counted against the node and
            // nothing sent again (the node saw part of the request).
            return Error::explain(
                errors::CLIENT_BODY_TIMEOUT,
                "the client stopped sending its request body",
            )
            .into_down();
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        if *e.esource() == ErrorSource::Upstream {
            self.shared
                .metrics
                .upstream_error(ctx.target_index(), errors::upstream_error_kind(&e));
        }
        ctx.in_flight = None;
        let failure = if e.etype() == &errors::STALE_POOLED {
            Failure::StalePooled
        } else if e.etype() == &errors::WRITER_REFUSED {
            Failure::NotDistributor
        } else {
            Failure::AfterSend {
                broke: *e.esource() == ErrorSource::Upstream
                    && matches!(
                        e.etype(),
                        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                    ),
            }
        };
        let on_writer = ctx.backend().is_some_and(|b| b.is_writer);
        let next = attempt::next(&self.attempt(session, ctx, on_writer, failure));
        if let Some(w) = ctx
            .backend()
            .filter(|_| next.writer_suspect)
            .map(|b| b.upstream.clone())
        {
            // A pooled connection found closed, or the writer broke the connection after the
            // request went out: the writer may be gone, and the pool may hold more such
            // connections than Pingora has noticed yet. The next writes wait (the write hold)
            // until a new topology arrives or a fresh TCP connect to the writer succeeds.
            self.shared.hold.mark_suspect(
                Suspect {
                    address: w.address,
                    socket: w.socket,
                    epoch: ctx.active.topology.epoch,
                    kind: SuspectKind::Unreachable,
                },
                ctx.active.settings.config.timeouts.connect,
                if failure == Failure::StalePooled {
                    "pooled connection closed"
                } else {
                    errors::upstream_error_kind(&e)
                },
            );
        }
        if matches!(failure, Failure::StalePooled | Failure::NotDistributor) {
            // The write goes back through the hold, whole (Pingora keeps the request body for
            // a retry, up to a limit).
            ctx.write_ticket = None;
        }
        if failure == Failure::NotDistributor {
            self.shared.metrics.writer_refusal(next.again == Again::Yes);
        }
        match next.again {
            Again::Yes => e.set_retry(true),
            Again::No => e.set_retry(false),
            Again::IfPooled => e.retry.decide_reuse(client_reused),
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A client must never choose the fencing token.
        req.remove_header(X_WRITER_EPOCH);
        if req.headers.get_all(CONTENT_LENGTH).iter().nth(1).is_some() {
            // Identical repeats (request_rules refused the others): a node reads one length.
            if let Some(length) = req.headers.get(CONTENT_LENGTH).cloned() {
                req.remove_header(&CONTENT_LENGTH);
                req.insert_header(CONTENT_LENGTH, length)?;
            }
        }
        if ctx.backend().is_some_and(|b| b.is_writer) {
            req.insert_header("X-Writer-Epoch", ctx.active.topology.epoch_header.clone())?;
        }

        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let mut xff = String::with_capacity(48);
            if let Some(prev) = req.headers.get(X_FORWARDED_FOR) {
                if let Ok(prev) = prev.to_str() {
                    xff.push_str(prev);
                    xff.push_str(", ");
                }
            }
            let _ = write!(xff, "{ip}");
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
                req.insert_header("X-Forwarded-For", v)?;
            }
        }
        // Set by an ingress in front of us (which may have terminated TLS): keep theirs.
        if !req.headers.contains_key(X_FORWARDED_PROTO) {
            req.insert_header("X-Forwarded-Proto", HeaderValue::from_static("http"))?;
        }
        if !req.headers.contains_key(X_FORWARDED_HOST) {
            if let Some(host) = req.headers.get(HOST).cloned() {
                req.insert_header("X-Forwarded-Host", host)?;
            }
        }
        if let Some(id) = &ctx.request_id {
            req.insert_header("X-Request-Id", id.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(t0)) = (ctx.backend(), ctx.upstream_started) {
            b.upstream
                .stats
                .observe_latency_micros(t0.elapsed().as_secs_f64() * 1e6);
        }
        if ctx.route == Some(RouteTarget::Writer) {
            if is_not_distributor(resp) {
                if let Some(w) = ctx.backend().filter(|b| b.is_writer) {
                    self.shared.hold.mark_refused(Suspect {
                        address: w.upstream.address.clone(),
                        socket: w.upstream.socket,
                        epoch: ctx.active.topology.epoch,
                        kind: SuspectKind::Refused,
                    });
                }
                // Not passed on: error_while_proxy decides whether the write is sent again.
                return Err(Error::new_up(errors::WRITER_REFUSED));
            }
            self.shared.hold.writer_answered();
        }
        strip_response_hop_by_hop(resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Draining: tell the client this connection ends with this response, rather than
        // letting it find out by sending its next request into a closed socket.
        if session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        if !resp.headers.contains_key(X_REQUEST_ID) {
            if let Some(id) = &ctx.request_id {
                resp.insert_header("X-Request-Id", id.clone())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let status = match errors::classify(e) {
            Some(err) => {
                if let Err(write_err) = respond(session, &err, ctx.request_id.as_ref()).await {
                    tracing::debug!(error = %write_err, "cannot send the error response");
                }
                err.status
            }
            None => 0,
        };
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // Our own refusals, and clients that hung up (status 499), are in the access log and
        // the metrics; they are not proxy faults worth an error line each.
        let client_gone = *e.esource() == ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        client_gone
            || matches!(
                e.etype(),
                ErrorType::Custom(
                    "no_writer" | "hold_full" | "no_upstream" | "client_body_timeout"
                ) | ErrorType::HTTPStatus(413)
            )
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // A retried read is counted in rw_proxy_upstream_errors_total; a dead reader would
        // otherwise log one line per request.
        tracing::debug!(error = %e, "retrying on another upstream");
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.in_flight = None;
        ctx.write_ticket = None;
        let mut status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if status == 0 && e.is_some() {
            // nginx's convention for "the client went away before we answered".
            status = 499;
        }
        let elapsed = ctx.start.elapsed();
        let method = &session.req_header().method;
        self.shared
            .metrics
            .request_done(ctx.target_index(), method, status, elapsed);

        let log = match ctx.active.settings.config.access_log {
            AccessLog::Off => false,
            AccessLog::Errors => status >= 400,
            AccessLog::All => true,
        };
        if log {
            let upstream = ctx.backend().map(|b| &*b.upstream.name).unwrap_or("-");
            let request_id = ctx
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let client = session.client_addr().and_then(|a| a.as_inet()).copied();
            tracing::info!(
                target: "rw_proxy::access",
                client = client.map(tracing::field::display),
                worker = crate::workers::current(),
                method = %method,
                path = %session.req_header().uri,
                target = ctx.route.map(RouteTarget::label).unwrap_or("none"),
                upstream,
                status,
                duration_ms = elapsed.as_secs_f64() * 1e3,
                request_id,
                attempts = ctx.attempts,
                error = e.map(|e| e.etype().as_str()).unwrap_or(""),
            );
        }
    }
}

/// The storage node's refusal of a write because it is not the distributor (the cluster node
/// library's `NotADistributorException`): `400` with `StorageNode-NAD: true` (or, before the
/// library renamed it, `Microstream-NAD: true`), raised before the store call applies anything.
/// Exactly this signal, nothing looser: any other 400 is the client's and goes back to it
/// unchanged.
fn is_not_distributor(resp: &ResponseHeader) -> bool {
    resp.status == 400
        && NAD_HEADERS.iter().any(|name| {
            resp.headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        })
}

/// Hop-by-hop fields of the upstream response (RFC 9110, 7.6.1). Pingora writes its own
/// `Connection` and framing; the rest, and whatever `Connection` nominates, must not pass.
fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    // A 101 hands the connection over; Pingora forwards its Upgrade itself.
    let upgrading = resp.status == 101;
    if let Some(conn) = resp.headers.get(CONNECTION) {
        let nominated: Vec<String> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
            .filter(|t| !(upgrading && t == "upgrade"))
            .collect();
        for name in nominated {
            resp.remove_header(name.as_str());
        }
    }
    resp.remove_header("keep-alive");
    resp.remove_header("proxy-connection");
    if !upgrading {
        resp.remove_header("upgrade");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_connection_closed_by_the_peer_is_noticed_without_tokio() {
        use std::io::Write;
        use std::os::unix::io::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(
            !pooled_connection_closed(client.as_raw_fd()),
            "open and idle"
        );
        // Unasked-for bytes on an idle connection: not reusable either.
        server.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pooled_connection_closed(client.as_raw_fd()) {
            assert!(std::time::Instant::now() < deadline, "data not seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }

        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!pooled_connection_closed(client.as_raw_fd()));
        drop(server);
        while !pooled_connection_closed(client.as_raw_fd()) {
            assert!(std::time::Instant::now() < deadline, "FIN not seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The peek consumed nothing and closed nothing: the socket is still ours.
        assert!(client.peer_addr().is_ok());
    }

    #[test]
    fn request_ids_are_unique_and_hex_within_and_across_workers() {
        let ids = RequestIds::new(0);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a.as_bytes()[..8], &b.as_bytes()[..8]);
        // Another worker: the same process prefix, its own number, never the same id.
        let other = RequestIds::new(1);
        let c = other.next();
        assert_eq!(&a.as_bytes()[..8], &c.as_bytes()[..8]);
        assert_ne!(a, c);
        assert_eq!(&c.as_bytes()[8..12], b"0001");
        assert_eq!(&a.as_bytes()[8..12], b"0000");
    }

    #[test]
    fn only_a_400_with_storage_node_nad_true_is_a_refusal() {
        let resp = |status: u16, nad: Option<&str>| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            if let Some(v) = nad {
                r.insert_header("StorageNode-NAD", v).unwrap();
            }
            r
        };
        assert!(is_not_distributor(&resp(400, Some("true"))));
        assert!(is_not_distributor(&resp(400, Some(" TRUE "))));
        let mut older = ResponseHeader::build(400, None).unwrap();
        older.insert_header("Microstream-NAD", "true").unwrap();
        assert!(is_not_distributor(&older));
        let mut other = ResponseHeader::build(400, None).unwrap();
        other.insert_header("X-NAD", "true").unwrap();
        assert!(!is_not_distributor(&other));
        assert!(!is_not_distributor(&resp(400, None)));
        assert!(!is_not_distributor(&resp(400, Some("false"))));
        assert!(!is_not_distributor(&resp(400, Some("yes"))));
        assert!(!is_not_distributor(&resp(409, Some("true"))));
        assert!(!is_not_distributor(&resp(500, Some("true"))));
        assert!(!is_not_distributor(&resp(200, Some("true"))));
    }

    #[test]
    fn hop_by_hop_response_fields_are_stripped() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Connection", "keep-alive, X-Secret")
            .unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("Proxy-Connection", "keep-alive").unwrap();
        r.insert_header("X-Kept", "1").unwrap();
        strip_response_hop_by_hop(&mut r);
        assert!(r.headers.get("x-secret").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert!(r.headers.get("proxy-connection").is_none());
        assert!(r.headers.get("x-kept").is_some());
    }
}
