//! The permissions the operator's code needs, one entry per API use, with why. No I/O.
//! `sluice-operator rbac` prints them; the chart's and the kustomize base's RBAC are checked
//! against this list, and the reconcile tests check that every request the operator makes is
//! in it.

/// Where a permission must be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace the operator watches (cluster-wide, or a Role per namespace).
    JobNamespaces,
    /// In the operator's own namespace (the leader-election Lease).
    OperatorNamespace,
}

/// One grant the operator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// Where.
    pub scope: Scope,
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resources, with subresources as `kind/sub`.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// What the code does with it.
    pub why: &'static str,
}

/// Everything the operator needs.
pub const NEEDS: &[Need] = &[
    Need {
        scope: Scope::JobNamespaces,
        group: "sluice.dev",
        resources: &["streamjobs"],
        verbs: &["list", "watch"],
        why: "the controller lists and watches StreamJobs",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "sluice.dev",
        resources: &["streamjobs/status"],
        verbs: &["patch"],
        why: "write status with server-side apply",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "sluice.dev",
        resources: &["streamjobs/finalizers"],
        verbs: &["update"],
        why: "children set blockOwnerDeletion on their owner reference, which the OwnerReferencesPermissionEnforcement admission plugin allows only with this",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "apps",
        resources: &["statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "read and apply the workers' StatefulSet (server-side apply creates with create + patch), watch it, remove orphans",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "",
        resources: &["configmaps"],
        verbs: &["get", "list", "create", "patch", "delete"],
        why: "read the job file the workers run with, apply the new one, remove orphans",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "",
        resources: &["services"],
        verbs: &["list", "create", "patch", "delete"],
        why: "apply the headless and the metrics Service, remove orphans",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["list", "create", "patch", "delete"],
        why: "apply the PodDisruptionBudget, remove orphans",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "",
        resources: &["pods"],
        verbs: &["list", "watch", "delete"],
        why: "watch worker readiness, delete pods of an old revision (OnDelete rollouts)",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "",
        resources: &["secrets"],
        verbs: &["get"],
        why: "check that referenced Secrets and keys exist (key names only; values never reach status, logs or ConfigMaps)",
    },
    Need {
        scope: Scope::JobNamespaces,
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "publish Events (patch counts a repeated event in its series)",
    },
    Need {
        scope: Scope::OperatorNamespace,
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
        why: "leader election",
    },
];

/// Whether `verb` on `group`/`resource` is needed.
pub fn needed(group: &str, resource: &str, verb: &str) -> bool {
    NEEDS
        .iter()
        .any(|n| n.group == group && n.resources.contains(&resource) && n.verbs.contains(&verb))
}

/// The needs as YAML: `jobNamespaces` and `operatorNamespace` lists of RBAC rules.
pub fn yaml() -> String {
    let mut out = String::from(
        "# Printed by `sluice-operator rbac`: every permission the operator's code needs.\n\
         # granted cluster-wide (ClusterRole) or, in watch-namespaces mode, by a Role in each watched namespace\n\
         jobNamespaces:\n",
    );
    let rules = |out: &mut String, scope: Scope| {
        for need in NEEDS.iter().filter(|n| n.scope == scope) {
            let group = if need.group.is_empty() {
                "\"\""
            } else {
                need.group
            };
            out.push_str(&format!(
                "# {}\n- apiGroups: [{group}]\n  resources: [{}]\n  verbs: [{}]\n",
                need.why,
                need.resources.join(", "),
                need.verbs.join(", ")
            ));
        }
    };
    rules(&mut out, Scope::JobNamespaces);
    out.push_str("# granted by a Role in the operator's own namespace\noperatorNamespace:\n");
    rules(&mut out, Scope::OperatorNamespace);
    out
}
