//! The Kubernetes API calls writer-election makes, as the permissions a Role must grant for them.
//!
//! Kept beside the code so that a change of a call and a change of the Role are made together:
//! k8s/tests checks `k8s/writer-election/rbac.yaml` against [`required`] for the shipped
//! ConfigMap, and writer-election's Kubernetes tests run against a fake API server that enforces
//! that Role, so a call the Role does not grant fails there.
//!
//! - pods: `discovery/kubernetes.rs` runs `kube::runtime::watcher` by label selector (list,
//!   watch); `kube_actions.rs` deletes a hung old writer with a UID precondition
//!   (`fencing.delete_old_writer_pod`), confirms it gone with `get_opt` (get), and merge-patches
//!   role labels (`label_pods`: patch).
//! - leases: `store/lease.rs` (the writer record, `state.lease`) and `leader.rs` (the HA lock,
//!   `ha.lease_name`) `get_opt`, `create` when missing, `replace` with the resourceVersion
//!   (update).
//! - events: `kube_actions.rs` creates one core/v1 Event per writer change.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::rbac::v1::Role;

use crate::config::ElectionConfig;

/// One (API group, resource, verb) a Role grants; the core group is "".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub group: Cow<'static, str>,
    pub resource: Cow<'static, str>,
    pub verb: Cow<'static, str>,
}

impl Permission {
    const fn of(group: &'static str, resource: &'static str, verb: &'static str) -> Self {
        Permission {
            group: Cow::Borrowed(group),
            resource: Cow::Borrowed(resource),
            verb: Cow::Borrowed(verb),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{} {}", self.resource, self.verb)
        } else {
            write!(f, "{}/{} {}", self.group, self.resource, self.verb)
        }
    }
}

const POD_PATCH: Permission = Permission::of("", "pods", "patch");
const POD_DELETE: Permission = Permission::of("", "pods", "delete");

/// Every call writer-election can make, with every feature turned on.
pub const ALL: &[Permission] = &[
    Permission::of("", "pods", "get"),
    Permission::of("", "pods", "list"),
    Permission::of("", "pods", "watch"),
    POD_PATCH,
    POD_DELETE,
    Permission::of("coordination.k8s.io", "leases", "get"),
    Permission::of("coordination.k8s.io", "leases", "create"),
    Permission::of("coordination.k8s.io", "leases", "update"),
    Permission::of("", "events", "create"),
];

/// What a Role must grant for `cfg`: patching pods only with `label_pods.enabled`, deleting them
/// only with `fencing.delete_old_writer_pod`; a Role should grant no more than this.
pub fn required(cfg: &ElectionConfig) -> BTreeSet<Permission> {
    ALL.iter()
        .filter(|p| {
            if **p == POD_PATCH {
                cfg.label_pods.enabled
            } else if **p == POD_DELETE {
                cfg.fencing.delete_old_writer_pod
            } else {
                true
            }
        })
        .cloned()
        .collect()
}

/// The permissions `role` grants, for comparing with [`required`]. A rule that this comparison
/// could not judge is an error: wildcards, nonResourceURLs (a Role cannot grant them), a rule
/// that names no group or resource, a permission granted twice.
pub fn granted_by(role: &Role) -> Result<BTreeSet<Permission>, String> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        if rule.non_resource_urls.is_some() {
            return Err(format!("a Role cannot grant nonResourceURLs: {rule:?}"));
        }
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if [groups, resources, &rule.verbs]
            .iter()
            .any(|list| list.iter().any(|s| s.contains('*')))
        {
            return Err(format!("wildcard in rule {rule:?}"));
        }
        if groups.is_empty() || resources.is_empty() {
            return Err(format!("rule grants nothing: {rule:?}"));
        }
        for g in groups {
            for r in resources {
                for v in &rule.verbs {
                    let p = Permission {
                        group: Cow::Owned(g.clone()),
                        resource: Cow::Owned(r.clone()),
                        verb: Cow::Owned(v.clone()),
                    };
                    if out.contains(&p) {
                        return Err(format!("granted twice: {p}"));
                    }
                    out.insert(p);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::PolicyRule;

    use super::*;

    fn config(label_pods: bool, delete_pod: bool) -> ElectionConfig {
        let yaml = format!(
            "discovery: {{ kubernetes: {{ port: http }} }}\n\
             state: {{ lease: {{ name: w }} }}\n\
             label_pods: {{ enabled: {label_pods} }}\n\
             fencing: {{ delete_old_writer_pod: {delete_pod} }}\n"
        );
        ElectionConfig::from_yaml_str(&yaml).expect("config")
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(own(groups)),
            resources: Some(own(resources)),
            verbs: own(verbs),
            ..Default::default()
        }
    }

    fn role(rules: Vec<PolicyRule>) -> Role {
        Role {
            rules: Some(rules),
            ..Default::default()
        }
    }

    #[test]
    fn every_feature_on_needs_everything() {
        let all: BTreeSet<_> = ALL.iter().cloned().collect();
        assert_eq!(all.len(), ALL.len(), "no permission listed twice");
        assert_eq!(required(&config(true, true)), all);
    }

    #[test]
    fn features_off_need_no_patch_and_no_delete() {
        let r = required(&config(false, false));
        assert!(!r.contains(&POD_PATCH) && !r.contains(&POD_DELETE), "{r:?}");
        assert_eq!(r.len(), ALL.len() - 2);
        assert!(required(&config(true, false)).contains(&POD_PATCH));
        assert!(required(&config(false, true)).contains(&POD_DELETE));
    }

    #[test]
    fn a_role_grants_the_product_of_its_rules() {
        let g = granted_by(&role(vec![
            rule(&[""], &["pods"], &["get", "list"]),
            rule(&["coordination.k8s.io"], &["leases"], &["update"]),
        ]))
        .expect("judged");
        let want: BTreeSet<_> = [
            Permission::of("", "pods", "get"),
            Permission::of("", "pods", "list"),
            Permission::of("coordination.k8s.io", "leases", "update"),
        ]
        .into_iter()
        .collect();
        assert_eq!(g, want);
    }

    #[test]
    fn rules_that_cannot_be_judged_are_errors() {
        let wildcard = granted_by(&role(vec![rule(&[""], &["pods"], &["*"])]));
        assert!(wildcard.is_err_and(|e| e.contains("wildcard")));
        let twice = granted_by(&role(vec![
            rule(&[""], &["pods"], &["get"]),
            rule(&[""], &["pods"], &["get"]),
        ]));
        assert!(twice.is_err_and(|e| e.contains("granted twice: pods get")));
        let empty = granted_by(&role(vec![rule(&[], &["pods"], &["get"])]));
        assert!(empty.is_err_and(|e| e.contains("grants nothing")));
    }
}
