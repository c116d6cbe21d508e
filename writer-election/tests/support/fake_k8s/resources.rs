//! Which resources the fake serves, and how a request's method and path map to the RBAC view of
//! it (verb, API group, resource, namespace, name) — the same mapping the real authorizer uses.

/// A resource type the fake stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Lease,
    /// `v1` Event (`/api/v1/namespaces/{ns}/events`).
    CoreEvent,
    /// `events.k8s.io/v1` Event.
    Event,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::Lease, Kind::CoreEvent, Kind::Event];

    /// API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Pod | Kind::CoreEvent => "",
            Kind::Lease => "coordination.k8s.io",
            Kind::Event => "events.k8s.io",
        }
    }

    pub fn version(self) -> &'static str {
        "v1"
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::CoreEvent => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    /// The resource (plural) name used in paths and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Lease => "leases",
            Kind::CoreEvent | Kind::Event => "events",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Lease => "Lease",
            Kind::CoreEvent | Kind::Event => "Event",
        }
    }

    /// `pods`, `leases.coordination.k8s.io`: how the server names the resource in messages.
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }

    fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
    }
}

/// What a request addresses, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    /// None for a request across all namespaces (`/api/v1/pods`).
    pub namespace: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// No such resource (the real server answers 404 with a NotFound Status).
    NotFound,
    /// A subresource or path shape the fake does not serve.
    Unsupported(String),
}

/// `/api/v1/namespaces/{ns}/pods/{name}`, `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases`,
/// `/api/v1/pods` (all namespaces), ...
pub fn parse_path(path: &str) -> Result<Target, PathError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(PathError::NotFound),
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        _ => return Err(PathError::NotFound),
    };
    let kind = Kind::from_path(group, version, plural).ok_or(PathError::NotFound)?;
    if let Some(sub) = sub {
        return Err(PathError::Unsupported(format!(
            "subresource {}/{sub} is not served by the fake API server",
            kind.plural()
        )));
    }
    if namespace.is_some_and(str::is_empty) || name.is_some_and(str::is_empty) {
        return Err(PathError::NotFound);
    }
    Ok(Target {
        kind,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

/// The RBAC verb of a request, or None for a method the resource does not accept.
pub fn verb(method: &str, has_name: bool, watch: bool) -> Option<&'static str> {
    Some(match (method, has_name) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_paths_kube_builds() {
        assert_eq!(
            parse_path("/api/v1/namespaces/ns1/pods"),
            Ok(Target {
                kind: Kind::Pod,
                namespace: Some("ns1".into()),
                name: None
            })
        );
        assert_eq!(
            parse_path("/apis/coordination.k8s.io/v1/namespaces/default/leases/writer"),
            Ok(Target {
                kind: Kind::Lease,
                namespace: Some("default".into()),
                name: Some("writer".into())
            })
        );
        assert_eq!(
            parse_path("/apis/events.k8s.io/v1/namespaces/default/events").map(|t| t.kind),
            Ok(Kind::Event)
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default/events").map(|t| t.kind),
            Ok(Kind::CoreEvent)
        );
        assert_eq!(
            parse_path("/api/v1/pods"),
            Ok(Target {
                kind: Kind::Pod,
                namespace: None,
                name: None
            })
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default/secrets"),
            Err(PathError::NotFound)
        );
        assert_eq!(parse_path("/healthz"), Err(PathError::NotFound));
        assert!(matches!(
            parse_path("/api/v1/namespaces/default/pods/p/status"),
            Err(PathError::Unsupported(_))
        ));
    }

    #[test]
    fn verbs_follow_the_authorizer() {
        assert_eq!(verb("GET", false, true), Some("watch"));
        assert_eq!(verb("GET", false, false), Some("list"));
        assert_eq!(verb("GET", true, false), Some("get"));
        assert_eq!(verb("PUT", true, false), Some("update"));
        assert_eq!(verb("POST", true, false), None);
        assert_eq!(verb("PUT", false, false), None);
    }
}
