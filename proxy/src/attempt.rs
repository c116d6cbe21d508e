//! The attempt rules: when an attempt to send a request upstream fails, whether the request
//! goes again, and whether the writer becomes suspect (the next writes wait in the write hold
//! instead of meeting the same fate). One pure function; `forward.rs` gathers the facts and
//! applies the answer.
//!
//! The rule behind all of them: a request is sent again only when the proxy knows the node did
//! not act on it. Nothing sent (a failed connect), or
//! the node said so itself (`StorageNode-NAD`), or a read that is idempotent and sent no body
//! byte. A write that reached the writer is never sent twice: the writer may have applied it.

use crate::routing::RouteTarget;

/// How the attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connect failed (refused, timed out, no route): nothing was sent.
    Connect,
    /// The writer answered `400` + `StorageNode-NAD`/`Microstream-NAD: true`: not the
    /// distributor, nothing applied.
    NotDistributor,
    /// After (part of) the request was sent. `broke`: the node closed or reset the connection
    /// (not a timeout, not a malformed answer).
    AfterSend { broke: bool },
}

/// What is known when an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub route: RouteTarget,
    pub failure: Failure,
    /// The attempt went to the writer (a write, a strong read or a read fallen back to it).
    pub on_writer: bool,
    /// The request's method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub idempotent: bool,
    /// Body bytes that left the proxy toward the node (0 when there is none).
    pub body_bytes_sent: usize,
    /// The whole body is still at hand for another attempt (it was read whole before the first attempt).
    pub body_kept: bool,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// `failover.read_retries`.
    pub read_retries: u32,
    /// A node this read has not tried yet is left (another reader, or the writer as fallback).
    pub untried_left: bool,
}

/// Whether the request goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    No,
    /// To another node, or for a write back through the write hold (it waits for a writer).
    Yes,
    /// Only if the failed connection was a pooled one (a fresh connection that fails after
    /// the request went out points at the node, not at a stale socket).
    IfPooled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub again: Again,
    /// The writer is suspect: the next writes wait in the write hold.
    pub writer_suspect: bool,
}

/// The attempt rules.
pub fn next(a: &Attempt) -> Next {
    let is_write_route = matches!(a.route, RouteTarget::Writer | RouteTarget::WriterRead(_));
    match a.failure {
        Failure::Connect => Next {
            again: match a.route {
                RouteTarget::Readers | RouteTarget::Any
                    if a.attempts <= a.read_retries && a.untried_left =>
                {
                    Again::Yes
                }
                // Nothing was sent: back through the hold, which waits for a writer.
                _ if is_write_route => Again::Yes,
                _ => Again::No,
            },
            writer_suspect: a.on_writer,
        },
        Failure::NotDistributor => Next {
            again: if a.body_kept { Again::Yes } else { Again::No },
            // The hold learns of a refusal from the answer itself (it waits for a new
            // topology or a backoff), not as an unreachable writer.
            writer_suspect: false,
        },
        Failure::AfterSend { broke } => {
            let replay = a.route != RouteTarget::Writer
                && a.idempotent
                && a.body_bytes_sent == 0
                && a.body_kept;
            Next {
                again: if replay { Again::IfPooled } else { Again::No },
                writer_suspect: a.on_writer && broke,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;
    use crate::routing::WriterReadReason;
    use Again::*;
    use Failure::*;

    fn base(route: RouteTarget, failure: Failure) -> Attempt {
        Attempt {
            route,
            failure,
            on_writer: matches!(route, RouteTarget::Writer | RouteTarget::WriterRead(_)),
            idempotent: route != RouteTarget::Writer,
            body_bytes_sent: 0,
            body_kept: true,
            attempts: 1,
            read_retries: 2,
            untried_left: true,
        }
    }

    const W: RouteTarget = RouteTarget::Writer;
    const R: RouteTarget = RouteTarget::Readers;
    const A: RouteTarget = RouteTarget::Any;
    const S: RouteTarget = RouteTarget::WriterRead(WriterReadReason::Strong);

    #[test]
    fn the_rules() {
        let sent = |b: usize| AfterSend { broke: b > 0 };
        #[rustfmt::skip]
        let cases: Vec<(&str, Attempt, Again, bool)> = vec![
            // A failed connect sent nothing.
            ("read, connect failed, readers left", base(R, Connect), Yes, false),
            ("read, connect failed, retries used", Attempt { attempts: 3, ..base(R, Connect) }, No, false),
            ("read, connect failed, last retry", Attempt { attempts: 2, ..base(R, Connect) }, Yes, false),
            ("read, connect failed, none left", Attempt { untried_left: false, ..base(R, Connect) }, No, false),
            ("any, connect failed", base(A, Connect), Yes, false),
            ("read fallen back to the writer, connect failed", Attempt { on_writer: true, untried_left: false, ..base(R, Connect) }, No, true),
            ("write, connect failed", base(W, Connect), Yes, true),
            ("write, connect failed, many attempts", Attempt { attempts: 40, untried_left: false, ..base(W, Connect) }, Yes, true),
            ("strong read, connect failed", base(S, Connect), Yes, true),
            ("no upstream", base(RouteTarget::NoUpstream(Target::Readers), Connect), No, false),
            // The node's own refusal: nothing applied.
            ("write refused, body kept", base(W, NotDistributor), Yes, false),
            ("write refused, body too big to keep", Attempt { body_kept: false, ..base(W, NotDistributor) }, No, false),
            // Something went out: only an idempotent read without body, on a pooled connection.
            ("read broke after send", base(R, sent(1)), IfPooled, false),
            ("read timed out after send", base(R, sent(0)), IfPooled, false),
            ("read with a body sent", Attempt { body_bytes_sent: 5, ..base(R, sent(1)) }, No, false),
            ("non-idempotent read (POST to readers)", Attempt { idempotent: false, ..base(R, sent(1)) }, No, false),
            ("strong read broke on the writer", base(S, sent(1)), IfPooled, true),
            ("write broke after send", base(W, sent(1)), No, true),
            ("idempotent write (PUT) broke after send", Attempt { idempotent: true, ..base(W, sent(1)) }, No, true),
            ("write timed out after send", base(W, sent(0)), No, false),
            ("read, body not kept", Attempt { body_kept: false, ..base(R, sent(1)) }, No, false),
        ];
        for (what, attempt, again, suspect) in cases {
            let got = next(&attempt);
            assert_eq!(got.again, again, "{what}");
            assert_eq!(got.writer_suspect, suspect, "{what}");
        }
    }
}
