//! The responses the proxy makes itself: JSON `{"error": "<code>", "message": "..."}` with a
//! status that says whose fault it was (the table in proxy/README.md, "Errors the proxy makes").

use pingora_error::{Error, ErrorSource, ErrorType};

/// A write found no writer to go to within `failover.hold_writes`.
pub const NO_WRITER: ErrorType = ErrorType::Custom("no_writer");
/// A write found no writer and `failover.max_held_writes` writes were already waiting.
pub const HOLD_FULL: ErrorType = ErrorType::Custom("hold_full");
/// A pooled upstream connection was found closed by the peer before anything was sent on it.
pub const STALE_POOLED: ErrorType = ErrorType::Custom("stale_pooled_connection");
/// The writer answered a write `400` + `StorageNode-NAD: true` (`Microstream-NAD` in older node libraries): not the distributor, nothing
/// applied.
pub const WRITER_REFUSED: ErrorType = ErrorType::Custom("writer_refused");
/// The client paused its request body for longer than the upstream waits for an answer.
pub const CLIENT_BODY_TIMEOUT: ErrorType = ErrorType::Custom("client_body_timeout");
/// A read arrived and no node can serve it.
pub const NO_UPSTREAM: ErrorType = ErrorType::Custom("no_upstream");

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ProxyError {
    const fn new(status: u16, code: &'static str, message: &'static str) -> Self {
        ProxyError {
            status,
            code,
            message,
            retry_after: None,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "error": self.code, "message": self.message })
            .to_string()
            .into_bytes()
    }
}

pub const ERR_NO_WRITER: ProxyError = ProxyError {
    status: 503,
    code: "no_writer",
    message: "no writer became available within failover.hold_writes; retry shortly",
    retry_after: Some(1),
};
pub const ERR_HOLD_FULL: ProxyError = ProxyError {
    status: 503,
    code: "no_writer",
    message: "no writer is available and failover.max_held_writes writes are already waiting; retry shortly",
    retry_after: Some(1),
};
/// Nothing was applied, but the write could not be held to be sent again (its body was larger
/// than what the proxy keeps for a retry), or it was refused on every try.
pub const ERR_WRITER_REFUSED: ProxyError = ProxyError {
    status: 503,
    code: "no_writer",
    message:
        "the writer refused the write as not the distributor; nothing was applied; retry shortly",
    retry_after: Some(1),
};
pub const ERR_NO_UPSTREAM: ProxyError = ProxyError {
    status: 503,
    code: "no_upstream",
    message: "no node can serve this request right now; retry shortly",
    retry_after: Some(1),
};
pub const ERR_BODY_TOO_LARGE: ProxyError = ProxyError::new(
    413,
    "body_too_large",
    "the request body is larger than limits.max_body",
);
pub const ERR_HEADERS_TOO_LARGE: ProxyError = ProxyError::new(
    431,
    "headers_too_large",
    "the request headers are larger than limits.max_header_bytes",
);
pub const ERR_UPSTREAM_UNREACHABLE: ProxyError = ProxyError::new(
    502,
    "upstream_unreachable",
    "the upstream node could not be reached",
);
pub const ERR_UPSTREAM_FAILED: ProxyError = ProxyError::new(
    502,
    "upstream_error",
    "the upstream node failed while answering",
);
pub const ERR_UPSTREAM_TIMEOUT: ProxyError = ProxyError::new(
    504,
    "upstream_timeout",
    "the upstream node did not answer in time",
);
pub const ERR_BAD_REQUEST: ProxyError =
    ProxyError::new(400, "bad_request", "the request could not be read");
pub const ERR_REQUEST_TIMEOUT: ProxyError = ProxyError::new(
    408,
    "request_timeout",
    "the request was not received in time",
);
pub const ERR_INTERNAL: ProxyError =
    ProxyError::new(500, "internal", "the proxy failed to handle the request");

/// Maps a failed request's error to the answer; `None` when the client is gone and nothing
/// can be sent.
pub fn classify(e: &Error) -> Option<ProxyError> {
    use ErrorType::*;
    match e.etype() {
        Custom("no_writer") => return Some(ERR_NO_WRITER),
        Custom("hold_full") => return Some(ERR_HOLD_FULL),
        Custom("no_upstream") => return Some(ERR_NO_UPSTREAM),
        Custom("writer_refused") => return Some(ERR_WRITER_REFUSED),
        Custom("client_body_timeout") => return Some(ERR_REQUEST_TIMEOUT),
        HTTPStatus(413) => return Some(ERR_BODY_TOO_LARGE),
        HTTPStatus(431) => return Some(ERR_HEADERS_TOO_LARGE),
        _ => {}
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                ERR_UPSTREAM_TIMEOUT
            }
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
            | TLSHandshakeFailure | HandshakeError => ERR_UPSTREAM_UNREACHABLE,
            _ => ERR_UPSTREAM_FAILED,
        }),
        ErrorSource::Downstream => match e.etype() {
            ReadError | WriteError | ConnectionClosed => None,
            ReadTimedout => Some(ERR_REQUEST_TIMEOUT),
            _ => Some(ERR_BAD_REQUEST),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            HTTPStatus(code) if (400..600).contains(code) => {
                ProxyError::new(*code, "error", "the request failed")
            }
            _ => ERR_INTERNAL,
        }),
    }
}

/// The `kind` label of `rw_proxy_upstream_errors_total`.
pub fn upstream_error_kind(e: &Error) -> &'static str {
    use ErrorType::*;
    match e.etype() {
        ConnectRefused => "connect_refused",
        ConnectTimedout => "connect_timeout",
        ConnectNoRoute => "connect_no_route",
        ConnectError | BindError | SocketError => "connect_error",
        ReadTimedout => "read_timeout",
        WriteTimedout => "write_timeout",
        ConnectionClosed | Custom("stale_pooled_connection") => "closed",
        Custom("writer_refused") => "not_distributor",
        ReadError | WriteError => "io_error",
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => "protocol_error",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(t: ErrorType) -> Error {
        *Error::new_up(t)
    }

    #[test]
    fn statuses() {
        use ErrorType::*;
        let cases: Vec<(Error, Option<u16>, &str)> = vec![
            (*Error::new(NO_WRITER), Some(503), "no_writer"),
            (*Error::new(HOLD_FULL), Some(503), "no_writer"),
            (*Error::new(NO_UPSTREAM), Some(503), "no_upstream"),
            (up(WRITER_REFUSED), Some(503), "no_writer"),
            (*Error::new(HTTPStatus(413)), Some(413), "body_too_large"),
            (
                *Error::new_down(HTTPStatus(413)),
                Some(413),
                "body_too_large",
            ),
            (up(ConnectRefused), Some(502), "upstream_unreachable"),
            (up(ConnectNoRoute), Some(502), "upstream_unreachable"),
            (up(ConnectTimedout), Some(504), "upstream_timeout"),
            (up(ReadTimedout), Some(504), "upstream_timeout"),
            (up(WriteTimedout), Some(504), "upstream_timeout"),
            (up(ConnectionClosed), Some(502), "upstream_error"),
            (up(InvalidHTTPHeader), Some(502), "upstream_error"),
            (*Error::new_down(ConnectionClosed), None, ""),
            (*Error::new_down(ReadError), None, ""),
            (
                *Error::new_down(InvalidHTTPHeader),
                Some(400),
                "bad_request",
            ),
            (*Error::new_down(ReadTimedout), Some(408), "request_timeout"),
            (
                *Error::new_down(CLIENT_BODY_TIMEOUT),
                Some(408),
                "request_timeout",
            ),
            (*Error::new_in(InternalError), Some(500), "internal"),
        ];
        for (e, status, code) in cases {
            let got = classify(&e);
            assert_eq!(got.map(|p| p.status), status, "{e}");
            if let Some(p) = got {
                assert_eq!(p.code, code, "{e}");
            }
        }
    }

    #[test]
    fn no_writer_says_when_to_retry() {
        assert_eq!(ERR_NO_WRITER.retry_after, Some(1));
        assert_eq!(ERR_HOLD_FULL.retry_after, Some(1));
        assert_ne!(ERR_HOLD_FULL.message, ERR_NO_WRITER.message);
        let body: serde_json::Value = serde_json::from_slice(&ERR_NO_WRITER.body()).unwrap();
        assert_eq!(body["error"], "no_writer");
        assert!(body["message"].as_str().unwrap().contains("writer"));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            upstream_error_kind(&up(ErrorType::ConnectRefused)),
            "connect_refused"
        );
        assert_eq!(
            upstream_error_kind(&up(ErrorType::ReadTimedout)),
            "read_timeout"
        );
        assert_eq!(upstream_error_kind(&up(ErrorType::UnknownError)), "other");
    }
}
