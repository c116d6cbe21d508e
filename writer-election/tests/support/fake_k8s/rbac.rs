//! The RBAC check: a request is allowed when one rule of one granted Role covers its verb, API
//! group, resource and (if the rule names them) resource name. Without any Role the fake allows
//! everything, like a cluster-admin client.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role};

/// The rules of one Role and where they apply: a Role without a namespace grants in every
/// namespace (as it would in whichever namespace it is applied to) but never across all
/// namespaces at once, which only a ClusterRole can grant.
#[derive(Debug, Clone)]
pub struct Grant {
    pub namespace: Option<String>,
    pub rules: Vec<PolicyRule>,
}

impl From<Role> for Grant {
    fn from(role: Role) -> Self {
        Grant {
            namespace: role.metadata.namespace,
            rules: role.rules.unwrap_or_default(),
        }
    }
}

fn covers(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

fn rule_allows(
    rule: &PolicyRule,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    let names = rule.resource_names.as_deref().unwrap_or_default();
    covers(&rule.verbs, verb)
        && covers(rule.api_groups.as_deref().unwrap_or_default(), group)
        && covers(rule.resources.as_deref().unwrap_or_default(), resource)
        && (names.is_empty() || name.is_some_and(|n| names.iter().any(|x| x == n)))
}

/// The authorisation decision for one request.
pub fn allowed(
    grants: &[Grant],
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let Some(namespace) = namespace else {
        return false;
    };
    grants
        .iter()
        .filter(|g| g.namespace.as_deref().is_none_or(|ns| ns == namespace))
        .flat_map(|g| g.rules.iter())
        .any(|rule| rule_allows(rule, verb, group, resource, name))
}

/// The first `kind: Role` document of a multi-document manifest (e.g. k8s/writer-election/rbac.yaml).
pub fn role_from_manifests(yaml: &str) -> Result<Role, String> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("manifest is not valid YAML: {e}"))?;
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some("Role") {
            return serde_yaml::from_value(value)
                .map_err(|e| format!("the Role does not parse: {e}"));
        }
    }
    Err("no document with kind: Role in the manifest".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            api_groups: strings(groups),
            resources: strings(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: if names.is_empty() {
                None
            } else {
                strings(names)
            },
            non_resource_urls: None,
        }
    }

    #[test]
    fn rules_match_verb_group_resource_and_name() {
        let grants = vec![Grant {
            namespace: None,
            rules: vec![
                rule(&[""], &["pods"], &["get", "list", "watch"], &[]),
                rule(&["coordination.k8s.io"], &["leases"], &["*"], &["writer"]),
            ],
        }];
        let ns = Some("default");
        assert!(allowed(&grants, "list", "", "pods", ns, None));
        assert!(!allowed(&grants, "delete", "", "pods", ns, Some("p")));
        assert!(
            !allowed(&grants, "list", "", "pods", None, None),
            "a Role never grants cluster scope"
        );
        assert!(allowed(
            &grants,
            "update",
            "coordination.k8s.io",
            "leases",
            ns,
            Some("writer")
        ));
        assert!(!allowed(
            &grants,
            "update",
            "coordination.k8s.io",
            "leases",
            ns,
            Some("other")
        ));
        assert!(!allowed(
            &grants,
            "create",
            "coordination.k8s.io",
            "leases",
            ns,
            None
        ));
        assert!(
            !allowed(&grants, "get", "", "leases", ns, Some("writer")),
            "group matters"
        );
        assert!(!allowed(&[], "get", "", "pods", ns, Some("p")));
    }

    #[test]
    fn namespaced_role_applies_only_in_its_namespace() {
        let grants = vec![Grant {
            namespace: Some("a".into()),
            rules: vec![rule(&[""], &["pods"], &["get"], &[])],
        }];
        assert!(allowed(&grants, "get", "", "pods", Some("a"), Some("p")));
        assert!(!allowed(&grants, "get", "", "pods", Some("b"), Some("p")));
    }

    #[test]
    fn reads_the_role_out_of_a_manifest() {
        let yaml = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\n---\n\
                    apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: x}\n\
                    rules:\n  - apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [get]\n";
        let role = role_from_manifests(yaml);
        assert_eq!(role.map(|r| r.rules.map(|r| r.len())), Ok(Some(1)));
        assert!(role_from_manifests("kind: ServiceAccount\n").is_err());
    }
}
