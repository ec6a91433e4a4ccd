//! The relayer's command policy (`[commands]` `allowed_actions`,
//! `allowed_namespaces`, `denied_kinds`): decides, before anything runs,
//! whether a validated command may touch what it names. It owns the scope
//! rules (an empty namespace means the default namespace for namespaced
//! kinds; cluster-scoped objects and all-namespace lists need
//! `allowed_namespaces = ["*"]`). No I/O: for kinds it does not know it
//! assumes namespaced, and the executor re-checks with [`CommandPolicy::check_target`]
//! once discovery tells the real scope.

use std::collections::BTreeSet;

use k8s_openapi::{ClusterResourceScope, Resource};

use crate::commands::outcome::CommandError;
use crate::commands::validate::{
    is_kind, is_label, is_subdomain, PolicyTarget, TargetNamespace, ValidatedCommand,
};
use crate::config::model::{CommandsConfig, ALL_ACTIONS};

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// The checks of `[commands]` that forbid commands, built once from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    allowed_actions: BTreeSet<&'static str>,
    /// `None` = every namespace (`["*"]`).
    allowed_namespaces: Option<BTreeSet<String>>,
    denied_kinds: Vec<DeniedKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DeniedKind {
    /// `None` for a bare "Kind" entry: that kind in every API group, so
    /// "Deployment" cannot be bypassed through another group's Deployment.
    group: Option<String>,
    kind: String,
    /// The entry as written, for messages.
    entry: String,
}

impl CommandPolicy {
    /// Builds the policy; the error names the key, the bad value and what is allowed.
    pub fn from_config(config: &CommandsConfig) -> Result<Self, String> {
        let mut allowed_actions = BTreeSet::new();
        for action in &config.allowed_actions {
            let Some(known) = ALL_ACTIONS.iter().find(|a| **a == action.as_str()) else {
                return Err(format!(
                    "commands.allowed_actions {action:?} is not an action: use any of {}",
                    ALL_ACTIONS.join(", ")
                ));
            };
            allowed_actions.insert(*known);
        }

        if config.allowed_namespaces.is_empty() {
            return Err(
                "commands.allowed_namespaces is empty: list namespaces, or use [\"*\"] for all"
                    .to_string(),
            );
        }
        let allowed_namespaces = if config.allowed_namespaces.iter().any(|ns| ns == "*") {
            None
        } else {
            for ns in &config.allowed_namespaces {
                if !is_label(ns) {
                    return Err(format!(
                        "commands.allowed_namespaces {ns:?} is not a namespace name: use DNS-1123 labels (lowercase letters, digits, '-') or \"*\""
                    ));
                }
            }
            Some(config.allowed_namespaces.iter().cloned().collect())
        };

        let denied_kinds = config
            .denied_kinds
            .iter()
            .map(|entry| parse_denied_kind(entry))
            .collect::<Result<_, _>>()?;

        Ok(Self {
            allowed_actions,
            allowed_namespaces,
            denied_kinds,
        })
    }

    /// Checks a validated command. `action` is its name as in
    /// `commands.allowed_actions`; `default_namespace` is where namespaced
    /// targets without a namespace go.
    pub fn check(
        &self,
        action: &str,
        validated: &ValidatedCommand,
        default_namespace: &str,
    ) -> Result<(), CommandError> {
        debug_assert_eq!(
            action,
            validated.action_name(),
            "action name and command disagree"
        );
        if !self.allowed_actions.contains(action) {
            let allowed: Vec<&str> = self.allowed_actions.iter().copied().collect();
            return Err(CommandError::Forbidden(format!(
                "action {action:?} is forbidden by commands.allowed_actions, which allows only [{}]",
                allowed.join(", ")
            )));
        }
        for target in validated.targets() {
            let scope = builtin_scope(&target.group, &target.kind);
            self.check_target(&target, scope, default_namespace)?;
        }
        Ok(())
    }

    /// Checks one target with a known scope. [`check`](Self::check) uses the
    /// built-in scope table (unknown kinds count as namespaced); the executor
    /// calls this again when discovery finds a kind to be cluster-scoped.
    pub fn check_target(
        &self,
        target: &PolicyTarget,
        scope: Scope,
        default_namespace: &str,
    ) -> Result<(), CommandError> {
        if target.kind_rules {
            if let Some(denied) = self.denied_kinds.iter().find(|d| {
                d.kind == target.kind && d.group.as_ref().is_none_or(|g| *g == target.group)
            }) {
                return Err(CommandError::Forbidden(format!(
                    "{} is forbidden by commands.denied_kinds entry {:?}: the relayer does not touch {} objects",
                    describe(target),
                    denied.entry,
                    qualified_kind(&target.group, &target.kind)
                )));
            }
        }

        let Some(allowed) = &self.allowed_namespaces else {
            return Ok(());
        };
        let listed = || {
            let names: Vec<String> = allowed.iter().map(|ns| format!("{ns:?}")).collect();
            format!("[{}]", names.join(", "))
        };
        if scope == Scope::Cluster {
            return Err(CommandError::Forbidden(format!(
                "{} is cluster-scoped and commands.allowed_namespaces is {}: only [\"*\"] allows objects outside a namespace",
                describe(target),
                listed()
            )));
        }
        let (namespace, implied) = match &target.namespace {
            TargetNamespace::Named(ns) => (ns.as_str(), false),
            TargetNamespace::Unset => (effective_default(default_namespace), true),
            TargetNamespace::All => {
                return Err(CommandError::Forbidden(format!(
                    "listing {} across all namespaces is forbidden because commands.allowed_namespaces is {}: set list.namespace to one of them",
                    target.kind,
                    listed()
                )))
            }
        };
        if allowed.contains(namespace) {
            return Ok(());
        }
        Err(CommandError::Forbidden(format!(
            "{} is in namespace {namespace:?}{}, which commands.allowed_namespaces {} does not allow",
            describe(target),
            if implied {
                " (the default, as none was given)"
            } else {
                ""
            },
            listed()
        )))
    }
}

/// The namespace Kubernetes would use when none is given and the caller has none either.
fn effective_default(default_namespace: &str) -> &str {
    if default_namespace.is_empty() {
        "default"
    } else {
        default_namespace
    }
}

fn parse_denied_kind(entry: &str) -> Result<DeniedKind, String> {
    let fail = |why: &str| {
        Err(format!(
            "commands.denied_kinds {entry:?} {why}: use \"Kind\" (any API group) or \"group/Kind\", such as \"Secret\" or \"apps/Deployment\""
        ))
    };
    let (group, kind) = match entry.split_once('/') {
        None => (None, entry),
        Some((group, kind)) => (Some(group), kind),
    };
    if kind.contains('/') {
        return fail("has more than one '/' (a version does not belong there)");
    }
    if !is_kind(kind) {
        // Matching is case-sensitive: "secret" would silently deny nothing.
        return fail("does not name a kind in CamelCase, as kinds are matched exactly");
    }
    if let Some(group) = group {
        if group == "core" || looks_like_version(group) {
            return fail(
                "names a version or \"core\" as the group; for the core group write the kind alone",
            );
        }
        if !is_subdomain(group) {
            return fail("has an invalid API group");
        }
    }
    Ok(DeniedKind {
        group: group.map(str::to_string),
        kind: kind.to_string(),
        entry: entry.to_string(),
    })
}

/// "v1", "v1beta2", "v2alpha1": a version someone wrote where a group goes.
fn looks_like_version(group: &str) -> bool {
    group
        .strip_prefix('v')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()) && !rest.contains('.'))
}

fn qualified_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        format!("core {kind}")
    } else {
        format!("{group}/{kind}")
    }
}

/// How a message names a target: `Secret "db" (manifest document 2)`.
fn describe(target: &PolicyTarget) -> String {
    let mut text = target.kind.clone();
    if let Some(name) = &target.name {
        text.push_str(&format!(" {name:?}"));
    }
    if let Some(document) = target.document {
        text.push_str(&format!(" (manifest document {document})"));
    }
    text
}

macro_rules! cluster_scoped {
    ($($ty:ty),* $(,)?) => {
        /// Built-in cluster-scoped kinds as (group, kind), from k8s-openapi.
        const CLUSTER_SCOPED: &[(&str, &str)] = &[$((<$ty as Resource>::GROUP, <$ty as Resource>::KIND)),*];
        // Fails to compile if a listed type is not cluster-scoped.
        const _: fn() = || { $(assert_cluster_scoped::<$ty>();)* };
    };
}

fn assert_cluster_scoped<T: Resource<Scope = ClusterResourceScope>>() {}

cluster_scoped![
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Node,
    k8s_openapi::api::core::v1::PersistentVolume,
    k8s_openapi::api::rbac::v1::ClusterRole,
    k8s_openapi::api::rbac::v1::ClusterRoleBinding,
    k8s_openapi::api::storage::v1::StorageClass,
    k8s_openapi::api::storage::v1::CSIDriver,
    k8s_openapi::api::storage::v1::CSINode,
    k8s_openapi::api::storage::v1::VolumeAttachment,
    k8s_openapi::api::scheduling::v1::PriorityClass,
    k8s_openapi::api::node::v1::RuntimeClass,
    k8s_openapi::api::networking::v1::IngressClass,
    k8s_openapi::api::networking::v1::IPAddress,
    k8s_openapi::api::networking::v1::ServiceCIDR,
    k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
    k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
    k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    k8s_openapi::api::certificates::v1::CertificateSigningRequest,
    k8s_openapi::api::flowcontrol::v1::FlowSchema,
    k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
];

/// The scope of a built-in kind; kinds not in the table (including custom
/// resources) count as namespaced until discovery says otherwise.
pub fn builtin_scope(group: &str, kind: &str) -> Scope {
    if CLUSTER_SCOPED.iter().any(|&(g, k)| g == group && k == kind) {
        Scope::Cluster
    } else {
        Scope::Namespaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::validate::{validate_action, ValidationLimits};
    use crate::proto::command::Action;
    use crate::proto::{
        ApplyManifest, GetClusterInfo, GetLogs, GetResource, ListResources, ObjectRef, Ping,
        ScaleWorkload,
    };

    const LIMITS: ValidationLimits = ValidationLimits {
        max_manifest_bytes: 1 << 20,
        max_log_bytes: 1 << 20,
    };

    fn config(actions: &[&str], namespaces: &[&str], denied: &[&str]) -> CommandsConfig {
        CommandsConfig {
            allowed_actions: actions.iter().map(|s| s.to_string()).collect(),
            allowed_namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            denied_kinds: denied.iter().map(|s| s.to_string()).collect(),
            ..CommandsConfig::default()
        }
    }

    fn oref(api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<ObjectRef> {
        Some(ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        })
    }

    fn get(api_version: &str, kind: &str, namespace: &str) -> Action {
        Action::Get(GetResource {
            target: oref(api_version, kind, namespace, "x"),
        })
    }

    fn list(api_version: &str, kind: &str, namespace: &str) -> Action {
        Action::List(ListResources {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            ..Default::default()
        })
    }

    fn apply(manifest: &str, namespace: &str) -> Action {
        Action::Apply(ApplyManifest {
            manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
            namespace: namespace.into(),
            ..Default::default()
        })
    }

    /// Checks `action` against `policy` with default namespace "relayer";
    /// `Err(part)` expects FORBIDDEN with a message containing `part`.
    fn check(policy: &CommandPolicy, action: Action, expected: Result<(), &str>) {
        let validated = validate_action(&action, &LIMITS).expect("test commands are valid");
        let got = policy.check(validated.action_name(), &validated, "relayer");
        match (&got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(CommandError::Forbidden(message)), Err(part)) => {
                assert!(
                    message.contains(part),
                    "{action:?}: {message:?} lacks {part:?}"
                )
            }
            _ => panic!("{action:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn allowed_actions() {
        let policy = CommandPolicy::from_config(&config(&["ping", "get"], &["*"], &[])).unwrap();
        let table: Vec<(Action, Result<(), &str>)> = vec![
            (Action::Ping(Ping::default()), Ok(())),
            (get("v1", "ConfigMap", "web"), Ok(())),
            (
                Action::ClusterInfo(GetClusterInfo {}),
                Err("action \"cluster_info\" is forbidden by commands.allowed_actions, which allows only [get, ping]"),
            ),
            (list("v1", "ConfigMap", "web"), Err("action \"list\" is forbidden by commands.allowed_actions")),
        ];
        for (action, expected) in table {
            check(&policy, action, expected);
        }
    }

    #[test]
    fn denied_kinds() {
        let policy = CommandPolicy::from_config(&config(
            &ALL_ACTIONS,
            &["*"],
            &["Secret", "apps/DaemonSet", "example.com/Widget"],
        ))
        .unwrap();
        let secret_second = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: db}\n";
        let table: Vec<(Action, Result<(), &str>)> = vec![
            (get("v1", "ConfigMap", "web"), Ok(())),
            (
                get("v1", "Secret", "web"),
                Err("Secret \"x\" is forbidden by commands.denied_kinds entry \"Secret\": the relayer does not touch core Secret objects"),
            ),
            // A bare kind denies it in every group, so another group is no way around it.
            (get("example.com/v1", "Secret", "web"), Err("entry \"Secret\"")),
            // Case-sensitive: validation already refuses "secret" as a kind.
            (get("apps/v1", "DaemonSet", "web"), Err("entry \"apps/DaemonSet\"")),
            (get("example.com/v1", "DaemonSet", "web"), Ok(())),
            (get("example.com/v1alpha1", "Widget", "web"), Err("example.com/Widget")),
            (get("other.com/v1", "Widget", "web"), Ok(())),
            (list("v1", "Secret", ""), Err("entry \"Secret\"")),
            (apply(secret_second, "web"), Err("Secret \"db\" (manifest document 2) is forbidden by commands.denied_kinds")),
            (
                Action::Scale(ScaleWorkload { target: oref("apps/v1", "Deployment", "web", "api"), replicas: 2 }),
                Ok(()),
            ),
            // Logs read pods: only namespace rules apply, even if Pod were denied.
            (Action::Logs(GetLogs { namespace: "web".into(), pod: "p".into(), ..Default::default() }), Ok(())),
        ];
        for (action, expected) in table {
            check(&policy, action, expected);
        }
        let pods_denied =
            CommandPolicy::from_config(&config(&ALL_ACTIONS, &["*"], &["Pod"])).unwrap();
        check(
            &pods_denied,
            Action::Logs(GetLogs {
                namespace: "web".into(),
                pod: "p".into(),
                ..Default::default()
            }),
            Ok(()),
        );
        check(&pods_denied, get("v1", "Pod", "web"), Err("entry \"Pod\""));
    }

    #[test]
    fn allowed_namespaces() {
        let policy =
            CommandPolicy::from_config(&config(&ALL_ACTIONS, &["web", "relayer"], &[])).unwrap();
        let two_docs = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: kube-system}\n";
        let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: admin}\n";
        let table: Vec<(Action, Result<(), &str>)> = vec![
            (get("v1", "ConfigMap", "web"), Ok(())),
            (
                get("v1", "ConfigMap", "kube-system"),
                Err("ConfigMap \"x\" is in namespace \"kube-system\", which commands.allowed_namespaces [\"relayer\", \"web\"] does not allow"),
            ),
            // An empty namespace on a namespaced target means the default namespace.
            (get("apps/v1", "Deployment", ""), Ok(())),
            (list("v1", "ConfigMap", "web"), Ok(())),
            (
                list("v1", "ConfigMap", ""),
                Err("listing ConfigMap across all namespaces is forbidden because commands.allowed_namespaces is [\"relayer\", \"web\"]: set list.namespace"),
            ),
            // Cluster-scoped objects are outside every namespace.
            (get("v1", "Namespace", ""), Err("Namespace \"x\" is cluster-scoped and commands.allowed_namespaces is [\"relayer\", \"web\"]: only [\"*\"]")),
            (get("v1", "Node", "web"), Err("cluster-scoped")),
            (list("v1", "Node", ""), Err("cluster-scoped")),
            (apply(crb, "web"), Err("ClusterRoleBinding \"admin\" (manifest document 1) is cluster-scoped")),
            // Every document is checked; the second names its own namespace.
            (apply(two_docs, "web"), Err("ConfigMap \"b\" (manifest document 2) is in namespace \"kube-system\"")),
            (apply(two_docs.split("---").next().unwrap(), "web"), Ok(())),
            (apply(two_docs.split("---").next().unwrap(), ""), Ok(())),
            (apply(two_docs.split("---").next().unwrap(), "other"), Err("in namespace \"other\"")),
            (Action::Logs(GetLogs { namespace: "web".into(), pod: "p".into(), ..Default::default() }), Ok(())),
            (
                Action::Logs(GetLogs { namespace: "kube-system".into(), pod: "p".into(), ..Default::default() }),
                Err("Pod \"p\" is in namespace \"kube-system\""),
            ),
            (Action::Ping(Ping::default()), Ok(())),
            (Action::ClusterInfo(GetClusterInfo {}), Ok(())),
        ];
        for (action, expected) in table {
            check(&policy, action, expected);
        }

        let everywhere = CommandPolicy::from_config(&config(&ALL_ACTIONS, &["*"], &[])).unwrap();
        for action in [
            list("v1", "ConfigMap", ""),
            get("v1", "Namespace", ""),
            apply(crb, ""),
        ] {
            check(&everywhere, action, Ok(()));
        }
    }

    #[test]
    fn default_namespace_is_named_when_implied() {
        let policy = CommandPolicy::from_config(&config(&ALL_ACTIONS, &["web"], &[])).unwrap();
        check(
            &policy,
            get("v1", "ConfigMap", ""),
            Err("is in namespace \"relayer\" (the default, as none was given)"),
        );
        // An empty default falls back to Kubernetes' own default.
        let validated = validate_action(&get("v1", "ConfigMap", ""), &LIMITS).unwrap();
        let error = policy.check("get", &validated, "").unwrap_err();
        assert!(
            error.to_string().contains("namespace \"default\""),
            "{error}"
        );
    }

    #[test]
    fn executor_recheck_with_discovered_scope() {
        let policy = CommandPolicy::from_config(&config(&ALL_ACTIONS, &["web"], &[])).unwrap();
        let validated = validate_action(&get("example.com/v1", "Widget", "web"), &LIMITS).unwrap();
        let target = &validated.targets()[0];
        assert_eq!(
            policy.check_target(target, Scope::Namespaced, "web"),
            Ok(())
        );
        assert!(matches!(
            policy.check_target(target, Scope::Cluster, "web"),
            Err(CommandError::Forbidden(_))
        ));
    }

    #[test]
    fn from_config_errors() {
        fn check(cfg: CommandsConfig, expected: Result<(), &str>) {
            match (CommandPolicy::from_config(&cfg), expected) {
                (Ok(_), Ok(())) => {}
                (Err(message), Err(part)) => {
                    assert!(
                        message.contains(part),
                        "{cfg:?}: {message:?} lacks {part:?}"
                    )
                }
                (got, expected) => panic!("{cfg:?}: got {got:?}, expected {expected:?}"),
            }
        }
        let table: Vec<(CommandsConfig, Result<(), &str>)> = vec![
            (CommandsConfig::default(), Ok(())),
            (
                config(
                    &[],
                    &["web"],
                    &["Secret", "apps/Deployment", "kagent.dev/Agent"],
                ),
                Ok(()),
            ),
            (
                config(&["pong"], &["*"], &[]),
                Err("commands.allowed_actions \"pong\" is not an action"),
            ),
            (
                config(&[], &[], &[]),
                Err("commands.allowed_namespaces is empty"),
            ),
            (
                config(&[], &["Web"], &[]),
                Err("commands.allowed_namespaces \"Web\" is not a namespace name"),
            ),
            (
                config(&[], &["*"], &["secret"]),
                Err("commands.denied_kinds \"secret\" does not name a kind in CamelCase"),
            ),
            (
                config(&[], &["*"], &[""]),
                Err("commands.denied_kinds \"\""),
            ),
            (
                config(&[], &["*"], &["apps/v1/Deployment"]),
                Err("more than one '/'"),
            ),
            (
                config(&[], &["*"], &["v1/Secret"]),
                Err("names a version or \"core\""),
            ),
            (
                config(&[], &["*"], &["core/Secret"]),
                Err("names a version or \"core\""),
            ),
            (
                config(&[], &["*"], &["Apps/Deployment"]),
                Err("invalid API group"),
            ),
        ];
        for (cfg, expected) in table {
            check(cfg, expected);
        }
    }

    #[test]
    fn builtin_scopes() {
        let table = [
            ("", "Namespace", Scope::Cluster),
            ("", "Node", Scope::Cluster),
            ("rbac.authorization.k8s.io", "ClusterRole", Scope::Cluster),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                Scope::Cluster,
            ),
            ("apiregistration.k8s.io", "APIService", Scope::Cluster),
            ("", "ConfigMap", Scope::Namespaced),
            ("rbac.authorization.k8s.io", "Role", Scope::Namespaced),
            // same kind name in another group is not assumed cluster-scoped
            ("example.com", "Namespace", Scope::Namespaced),
        ];
        for (group, kind, expected) in table {
            assert_eq!(builtin_scope(group, kind), expected, "{group}/{kind}");
        }
    }
}
