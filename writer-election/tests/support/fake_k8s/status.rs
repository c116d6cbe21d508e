//! Errors as the API server sends them: a `Status` object with the HTTP code repeated in `code`,
//! so kube's `Error::Api` carries the same code, reason and message a real cluster would give.

use serde_json::{json, Value};

use super::resources::Kind;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

fn details(kind: Kind, name: &str) -> Value {
    json!({"name": name, "group": kind.group(), "kind": kind.plural()})
}

impl ApiError {
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Value::Object(map)) = (&self.details, &mut status) {
            map.insert("details".into(), details.clone());
        }
        status
    }

    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", kind.qualified()),
            details: Some(details(kind, name)),
        }
    }

    pub fn no_such_path() -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        }
    }

    pub fn already_exists(kind: Kind, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} {name:?} already exists", kind.qualified()),
            details: Some(details(kind, name)),
        }
    }

    /// A stale resourceVersion on update/patch.
    pub fn conflict(kind: Kind, name: &str) -> Self {
        Self::conflict_because(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A failed precondition (uid or resourceVersion) on delete/update.
    pub fn conflict_because(kind: Kind, name: &str, why: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                kind.qualified()
            ),
            details: Some(details(kind, name)),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid(kind: Kind, name: &str, why: &str) -> Self {
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} {name:?} is invalid: {why}", kind.qualified()),
            details: Some(details(kind, name)),
        }
    }

    pub fn forbidden(kind: Kind, verb: &str, namespace: Option<&str>, name: Option<&str>) -> Self {
        let subject = match name {
            Some(name) => format!("{} {name:?}", kind.qualified()),
            None => kind.qualified(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_string(),
        };
        Self {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "{subject} is forbidden: User \"system:serviceaccount:fake:writer-election\" cannot {verb} resource {:?} in API group {:?} {scope}",
                kind.plural(),
                kind.group()
            ),
            details: Some(details(kind, name.unwrap_or(""))),
        }
    }

    /// As sent in an ERROR watch event when the requested resourceVersion was compacted away.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    pub fn service_unavailable() -> Self {
        Self {
            code: 503,
            reason: "ServiceUnavailable",
            message: "the fake API server is unavailable (test-induced outage)".into(),
            details: None,
        }
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!(
                "the server does not allow this method on the requested resource: {method}"
            ),
            details: None,
        }
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {content_type:?}"),
            details: None,
        }
    }

    pub fn too_large() -> Self {
        Self {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: "the request body is too large".into(),
            details: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }
}
