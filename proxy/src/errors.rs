//! The responses the proxy makes itself: JSON `{"error": "<code>", "message": "..."}` with a
//! status that says whose fault it was (the table in proxy/README.md, "Errors the proxy makes").

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
pub const ERR_UPGRADE_REFUSED: ProxyError = ProxyError::new(
    400,
    "upgrade_refused",
    "this proxy does not switch protocols (WebSocket and the like); send plain HTTP/1.1",
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

/// How an attempt on a node failed: the `kind` label of `rw_proxy_upstream_errors_total`, and
/// the answer when the request goes nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    ConnectTimeout,
    ConnectNoRoute,
    ConnectError,
    ReadTimeout,
    WriteTimeout,
    /// The node closed or reset the connection (a pooled one found closed included).
    Closed,
    /// `400` + `StorageNode-NAD: true`: the writer is not the distributor.
    NotDistributor,
    IoError,
    /// The node's answer is not HTTP/1 this proxy can pass on.
    ProtocolError,
}

impl UpstreamError {
    pub fn kind(self) -> &'static str {
        use UpstreamError::*;
        match self {
            ConnectRefused => "connect_refused",
            ConnectTimeout => "connect_timeout",
            ConnectNoRoute => "connect_no_route",
            ConnectError => "connect_error",
            ReadTimeout => "read_timeout",
            WriteTimeout => "write_timeout",
            Closed => "closed",
            NotDistributor => "not_distributor",
            IoError => "io_error",
            ProtocolError => "protocol_error",
        }
    }

    pub fn answer(self) -> ProxyError {
        use UpstreamError::*;
        match self {
            ConnectTimeout | ReadTimeout | WriteTimeout => ERR_UPSTREAM_TIMEOUT,
            ConnectRefused | ConnectNoRoute | ConnectError => ERR_UPSTREAM_UNREACHABLE,
            NotDistributor => ERR_WRITER_REFUSED,
            Closed | IoError | ProtocolError => ERR_UPSTREAM_FAILED,
        }
    }

    /// A failed TCP connect.
    pub fn of_connect(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionRefused => UpstreamError::ConnectRefused,
            ErrorKind::TimedOut => UpstreamError::ConnectTimeout,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                UpstreamError::ConnectNoRoute
            }
            _ => UpstreamError::ConnectError,
        }
    }

    /// A failed read or write on an open connection.
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => UpstreamError::Closed,
            _ => UpstreamError::IoError,
        }
    }

    /// The node closed or broke the connection (not a timeout, not a malformed answer): what
    /// the attempt rules call `broke`.
    pub fn broke(self) -> bool {
        matches!(self, UpstreamError::Closed | UpstreamError::IoError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn each_upstream_failure_has_its_kind_and_answer() {
        use UpstreamError::*;
        let cases = [
            (
                ConnectRefused,
                "connect_refused",
                502,
                "upstream_unreachable",
            ),
            (
                ConnectNoRoute,
                "connect_no_route",
                502,
                "upstream_unreachable",
            ),
            (ConnectError, "connect_error", 502, "upstream_unreachable"),
            (ConnectTimeout, "connect_timeout", 504, "upstream_timeout"),
            (ReadTimeout, "read_timeout", 504, "upstream_timeout"),
            (WriteTimeout, "write_timeout", 504, "upstream_timeout"),
            (Closed, "closed", 502, "upstream_error"),
            (IoError, "io_error", 502, "upstream_error"),
            (ProtocolError, "protocol_error", 502, "upstream_error"),
            (NotDistributor, "not_distributor", 503, "no_writer"),
        ];
        for (e, kind, status, code) in cases {
            assert_eq!(e.kind(), kind);
            assert_eq!(
                (e.answer().status, e.answer().code),
                (status, code),
                "{e:?}"
            );
        }
    }

    #[test]
    fn socket_errors_are_named() {
        let of = |k| UpstreamError::of_connect(&Error::from(k));
        assert_eq!(
            of(ErrorKind::ConnectionRefused),
            UpstreamError::ConnectRefused
        );
        assert_eq!(of(ErrorKind::TimedOut), UpstreamError::ConnectTimeout);
        assert_eq!(
            of(ErrorKind::HostUnreachable),
            UpstreamError::ConnectNoRoute
        );
        assert_eq!(of(ErrorKind::PermissionDenied), UpstreamError::ConnectError);
        let io = |k| UpstreamError::of_io(&Error::from(k));
        assert_eq!(io(ErrorKind::ConnectionReset), UpstreamError::Closed);
        assert_eq!(io(ErrorKind::BrokenPipe), UpstreamError::Closed);
        assert_eq!(io(ErrorKind::Other), UpstreamError::IoError);
        assert!(UpstreamError::Closed.broke());
        assert!(!UpstreamError::ReadTimeout.broke());
        assert!(!UpstreamError::ProtocolError.broke());
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
}
