//! The validated request: the one typed model a command has from validation
//! to execution. [`validate`](super::validate) builds a [`ValidatedCommand`];
//! the policy reads its [`targets`](ValidatedCommand::targets), the router
//! answers [`ValidatedCommand::Ping`] itself and hands the
//! [`KubeRequest`] inside [`ValidatedCommand::Kube`] to the WorkloadExecutor,
//! whose `kube::actions::Executor` runs it as is. Nothing here knows about
//! Kubernetes clients or discovery (that lives in `kube/`, which imports this
//! module, never the other way round).
//!
//! Why `Ping` and `Kube(KubeRequest)` rather than one flat enum: ping is the
//! only action the relayer answers without the Kubernetes API. Making the
//! Kubernetes actions their own type lets the router tell the two apart with
//! one `match`, and lets the executor take a type that cannot hold a ping, so
//! neither side needs an "impossible" arm or an `Option` conversion.

use std::fmt;

/// A command that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidatedCommand {
    /// Answered by the router itself; never reaches Kubernetes.
    Ping { payload_len: usize },
    /// Every other action: run by the WorkloadExecutor.
    Kube(KubeRequest),
}

/// One validated Kubernetes action, in the form the executor runs.
#[derive(Debug, Clone, PartialEq)]
pub enum KubeRequest {
    Apply(ApplyPlan),
    Delete {
        target: Target,
        propagation: Option<Propagation>,
    },
    Get {
        target: Target,
    },
    List(ListQuery),
    Scale {
        target: Target,
        workload: ScalableKind,
        replicas: i32,
    },
    Restart {
        target: Target,
        workload: RestartableKind,
    },
    Logs(LogsQuery),
    ClusterInfo,
}

/// An `apiVersion` split into group ("" for the core group) and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiVersion {
    pub group: String,
    pub version: String,
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.version)
        } else {
            write!(f, "{}/{}", self.group, self.version)
        }
    }
}

/// A validated `ObjectRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api_version: ApiVersion,
    pub kind: String,
    /// `None` when the command left it empty: the default namespace for a
    /// namespaced kind, nothing for a cluster-scoped one.
    pub namespace: Option<String>,
    pub name: String,
}

/// `DeleteResource.propagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Foreground,
    Background,
    Orphan,
}

impl Propagation {
    /// The Kubernetes `propagationPolicy` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Foreground => "Foreground",
            Propagation::Background => "Background",
            Propagation::Orphan => "Orphan",
        }
    }
}

/// Kinds `scale` supports (all in the `apps` group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalableKind {
    Deployment,
    StatefulSet,
    ReplicaSet,
}

/// Kinds `restart` supports (all in the `apps` group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartableKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// A validated `ApplyManifest`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyPlan {
    /// Non-empty documents in manifest order.
    pub objects: Vec<ManifestObject>,
    /// `ApplyManifest.namespace` when set.
    pub default_namespace: Option<String>,
    pub dry_run: bool,
    pub force: bool,
}

/// One document of an apply manifest, as JSON, untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestObject {
    /// 1-based, counting documents that have content.
    pub index: usize,
    /// 1-based line in the whole manifest where the document's content starts.
    pub line: usize,
    pub value: serde_json::Value,
    pub api_version: ApiVersion,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace` if set, else the command's `namespace` if set.
    /// Whether it applies depends on the kind's scope, which the executor knows.
    pub namespace: Option<String>,
    /// True when `namespace` came from `metadata.namespace`, false when it is
    /// the command's default (the executor uses it only for namespaced kinds).
    pub namespace_in_manifest: bool,
}

/// A validated `ListResources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub api_version: ApiVersion,
    pub kind: String,
    /// `None` = all namespaces (or a cluster-scoped kind).
    pub namespace: Option<String>,
    /// `None` when empty.
    pub label_selector: Option<String>,
    /// `None` when 0 (no limit).
    pub limit: Option<u32>,
}

/// A validated `GetLogs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsQuery {
    pub namespace: String,
    pub pod: String,
    /// `None` = the pod's only or default container.
    pub container: Option<String>,
    /// `None` when 0 (proto3 cannot tell unset from 0; "no lines" is useless).
    pub tail_lines: Option<i64>,
    /// `None` when 0.
    pub since_seconds: Option<i64>,
    /// Never 0: the caller's cap when the command set none.
    pub limit_bytes: u32,
}

/// What the policy checks for one object a command touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTarget {
    /// API group, "" for core.
    pub group: String,
    pub kind: String,
    pub namespace: TargetNamespace,
    /// The object's name when the command names one (for messages).
    pub name: Option<String>,
    /// The manifest document (1-based) for apply (for messages).
    pub document: Option<usize>,
    /// False for `logs`: reading a pod's logs is governed by namespace rules only.
    pub kind_rules: bool,
}

/// The namespace a target asks for, before scope is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetNamespace {
    /// A namespace the command or manifest named.
    Named(String),
    /// None given: the default namespace for a namespaced kind.
    Unset,
    /// `list` with no namespace: every namespace.
    All,
}

impl ValidatedCommand {
    /// The action name as in `commands.allowed_actions`.
    pub fn action_name(&self) -> &'static str {
        match self {
            ValidatedCommand::Ping { .. } => "ping",
            ValidatedCommand::Kube(request) => request.action_name(),
        }
    }

    /// The objects the policy must check: one per target, every document of
    /// an apply, none for `ping` and `cluster_info`.
    pub fn targets(&self) -> Vec<PolicyTarget> {
        match self {
            ValidatedCommand::Ping { .. } => Vec::new(),
            ValidatedCommand::Kube(request) => request.targets(),
        }
    }
}

impl KubeRequest {
    /// The action name as in `commands.allowed_actions`.
    pub fn action_name(&self) -> &'static str {
        match self {
            KubeRequest::Apply(_) => "apply",
            KubeRequest::Delete { .. } => "delete",
            KubeRequest::Get { .. } => "get",
            KubeRequest::List(_) => "list",
            KubeRequest::Scale { .. } => "scale",
            KubeRequest::Restart { .. } => "restart",
            KubeRequest::Logs(_) => "logs",
            KubeRequest::ClusterInfo => "cluster_info",
        }
    }

    /// The objects the policy must check: one per target, every document of
    /// an apply, none for `cluster_info`.
    pub fn targets(&self) -> Vec<PolicyTarget> {
        fn of(target: &Target) -> PolicyTarget {
            PolicyTarget {
                group: target.api_version.group.clone(),
                kind: target.kind.clone(),
                namespace: match &target.namespace {
                    Some(ns) => TargetNamespace::Named(ns.clone()),
                    None => TargetNamespace::Unset,
                },
                name: Some(target.name.clone()),
                document: None,
                kind_rules: true,
            }
        }
        match self {
            KubeRequest::ClusterInfo => Vec::new(),
            KubeRequest::Apply(plan) => plan
                .objects
                .iter()
                .map(|object| PolicyTarget {
                    group: object.api_version.group.clone(),
                    kind: object.kind.clone(),
                    namespace: match &object.namespace {
                        Some(ns) => TargetNamespace::Named(ns.clone()),
                        None => TargetNamespace::Unset,
                    },
                    name: Some(object.name.clone()),
                    document: Some(object.index),
                    kind_rules: true,
                })
                .collect(),
            KubeRequest::Delete { target, .. }
            | KubeRequest::Get { target }
            | KubeRequest::Scale { target, .. }
            | KubeRequest::Restart { target, .. } => vec![of(target)],
            KubeRequest::List(query) => vec![PolicyTarget {
                group: query.api_version.group.clone(),
                kind: query.kind.clone(),
                namespace: match &query.namespace {
                    Some(ns) => TargetNamespace::Named(ns.clone()),
                    None => TargetNamespace::All,
                },
                name: None,
                document: None,
                kind_rules: true,
            }],
            KubeRequest::Logs(query) => vec![PolicyTarget {
                group: String::new(),
                kind: "Pod".to_string(),
                namespace: TargetNamespace::Named(query.namespace.clone()),
                name: Some(query.pod.clone()),
                document: None,
                kind_rules: false,
            }],
        }
    }

    /// What the audit line names as the command's target (never contents).
    /// A namespace the command left empty stays empty here.
    pub fn target_summary(&self) -> String {
        match self {
            KubeRequest::Apply(plan) => plan
                .objects
                .iter()
                .map(|object| format!("{}/{}", object.kind, object.name))
                .collect::<Vec<_>>()
                .join(","),
            KubeRequest::Delete { target, .. }
            | KubeRequest::Get { target }
            | KubeRequest::Scale { target, .. }
            | KubeRequest::Restart { target, .. } => format!(
                "{} {}/{}",
                target.kind,
                target.namespace.as_deref().unwrap_or_default(),
                target.name
            ),
            KubeRequest::List(query) => format!(
                "{} in {}",
                query.kind,
                query.namespace.as_deref().unwrap_or_default()
            ),
            KubeRequest::Logs(query) => format!("Pod {}/{}", query.namespace, query.pod),
            KubeRequest::ClusterInfo => "cluster".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::validate::testing::{oref, run};
    use crate::proto::{command::Action, ApplyManifest, GetLogs, GetResource, ListResources, Ping};

    /// (group, kind, namespace, document, kind_rules)
    type TargetSummary = (
        &'static str,
        &'static str,
        TargetNamespace,
        Option<usize>,
        bool,
    );

    #[test]
    fn targets_for_the_policy() {
        fn check(input: Action, expected: &[TargetSummary]) {
            let got: Vec<_> = run(input.clone())
                .unwrap()
                .targets()
                .into_iter()
                .map(|t| (t.group, t.kind, t.namespace, t.document, t.kind_rules))
                .collect();
            let expected: Vec<_> = expected
                .iter()
                .map(|(g, k, ns, d, r)| (g.to_string(), k.to_string(), ns.clone(), *d, *r))
                .collect();
            assert_eq!(got, expected, "{input:?}");
        }
        use TargetNamespace::{All, Named, Unset};
        let manifest = "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: b, namespace: x}\n";
        let table: Vec<(Action, Vec<TargetSummary>)> = vec![
            (
                Action::Apply(ApplyManifest {
                    manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
                    ..Default::default()
                }),
                vec![
                    ("", "Secret", Unset, Some(1), true),
                    (
                        "rbac.authorization.k8s.io",
                        "ClusterRole",
                        Named("x".into()),
                        Some(2),
                        true,
                    ),
                ],
            ),
            (
                Action::Get(GetResource {
                    target: Some(oref("apps/v1", "Deployment", "", "a")),
                }),
                vec![("apps", "Deployment", Unset, None, true)],
            ),
            (
                Action::List(ListResources {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    ..Default::default()
                }),
                vec![("", "Pod", All, None, true)],
            ),
            (
                Action::Logs(GetLogs {
                    namespace: "web".into(),
                    pod: "p".into(),
                    ..Default::default()
                }),
                vec![("", "Pod", Named("web".into()), None, false)],
            ),
            (Action::Ping(Ping::default()), vec![]),
        ];
        for (input, expected) in table {
            check(input, &expected);
        }
    }
}
