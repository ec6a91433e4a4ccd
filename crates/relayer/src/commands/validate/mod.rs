//! Command validation: turns a protocol `Command` into a typed
//! [`ValidatedCommand`] or an INVALID_ARGUMENT [`CommandError`] whose message
//! names the field, the bad value and what is allowed. It does no I/O and
//! knows nothing about which kinds are namespaced — the policy and the
//! executor decide that.
//!
//! This module owns the entry points ([`validate`], [`validate_action`]) and
//! the per-action rules (which fields each action needs, which kinds `scale`
//! and `restart` support, the replica and log-size bounds). The rest is split
//! by job:
//! - [`request`]: the validated request types, the one model the policy, the
//!   router and the executor share (see there for why ping is separate);
//! - [`grammar`]: DNS-1123 names, `apiVersion`, kinds and label selectors;
//! - `manifest`: splitting and parsing `ApplyManifest.manifest`;
//! - [`node_budget`]: how many nodes a manifest may expand to, counted
//!   before anything is built (alias bombs).

pub mod grammar;
mod manifest;
pub mod node_budget;
pub mod request;

pub(crate) use grammar::is_kind;
pub use grammar::{is_label, is_subdomain, label_selector, parse_api_version};
pub use request::{
    ApiVersion, ApplyPlan, KubeRequest, ListQuery, LogsQuery, ManifestObject, PolicyTarget,
    Propagation, RestartableKind, ScalableKind, Target, TargetNamespace, ValidatedCommand,
};

use grammar::{api_version, check_kind, check_label, check_subdomain, optional_label};
use manifest::parse_manifest;

use crate::commands::outcome::CommandError;
use crate::proto::{command::Action, Command, ObjectRef};

/// Limits that come from configuration and the session, passed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationLimits {
    /// Largest `ApplyManifest.manifest` accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Largest `GetLogs.limit_bytes` accepted; also the limit used when the
    /// command sets none (0), so a log answer always fits in one frame.
    pub max_log_bytes: u32,
}

fn invalid(message: String) -> CommandError {
    CommandError::InvalidArgument(message)
}

/// Validates `command`'s action. A command without an action is invalid.
pub fn validate(
    command: &Command,
    limits: &ValidationLimits,
) -> Result<ValidatedCommand, CommandError> {
    let Some(action) = &command.action else {
        return Err(invalid(
            "command has no action: set one of ping, apply, delete, get, list, scale, restart, logs, cluster_info".to_string(),
        ));
    };
    validate_action(action, limits)
}

/// Validates one action (the part of [`validate`] after the action is known).
pub fn validate_action(
    action: &Action,
    limits: &ValidationLimits,
) -> Result<ValidatedCommand, CommandError> {
    let request = match action {
        Action::Ping(ping) => {
            return Ok(ValidatedCommand::Ping {
                payload_len: ping.payload.len(),
            })
        }
        Action::ClusterInfo(_) => KubeRequest::ClusterInfo,
        Action::Apply(apply) => {
            let default_namespace = optional_label("apply.namespace", &apply.namespace)?;
            let objects = parse_manifest(
                &apply.manifest,
                limits.max_manifest_bytes,
                default_namespace.as_deref(),
            )?;
            KubeRequest::Apply(ApplyPlan {
                objects,
                default_namespace,
                dry_run: apply.dry_run,
                force: apply.force,
            })
        }
        Action::Delete(delete) => {
            let target = object_ref("delete.target", delete.target.as_ref())?;
            let propagation = match delete.propagation.as_str() {
                "" => None,
                "Foreground" => Some(Propagation::Foreground),
                "Background" => Some(Propagation::Background),
                "Orphan" => Some(Propagation::Orphan),
                other => {
                    return Err(invalid(format!(
                        "delete.propagation {other:?} is not a propagation policy: use Foreground, Background, Orphan or leave it empty"
                    )))
                }
            };
            KubeRequest::Delete {
                target,
                propagation,
            }
        }
        Action::Get(get) => KubeRequest::Get {
            target: object_ref("get.target", get.target.as_ref())?,
        },
        Action::List(list) => {
            let api_version = api_version("list.api_version", &list.api_version)?;
            check_kind("list.kind", &list.kind)?;
            let namespace = optional_label("list.namespace", &list.namespace)?;
            let label_selector = if list.label_selector.is_empty() {
                None
            } else {
                label_selector(&list.label_selector).map_err(|why| {
                    invalid(format!(
                        "list.label_selector {:?} is not a label selector: {why}",
                        list.label_selector
                    ))
                })?;
                Some(list.label_selector.clone())
            };
            KubeRequest::List(ListQuery {
                api_version,
                kind: list.kind.clone(),
                namespace,
                label_selector,
                limit: (list.limit > 0).then_some(list.limit),
            })
        }
        Action::Scale(scale) => {
            let target = object_ref("scale.target", scale.target.as_ref())?;
            let workload = match (target.api_version.group.as_str(), target.kind.as_str()) {
                ("apps", "Deployment") => ScalableKind::Deployment,
                ("apps", "StatefulSet") => ScalableKind::StatefulSet,
                ("apps", "ReplicaSet") => ScalableKind::ReplicaSet,
                _ => {
                    return Err(invalid(format!(
                        "scale.target {} {} cannot be scaled: scale supports apps/v1 Deployment, StatefulSet and ReplicaSet",
                        target.api_version, target.kind
                    )))
                }
            };
            if !(0..=MAX_REPLICAS).contains(&scale.replicas) {
                return Err(invalid(format!(
                    "scale.replicas {} is out of range: use 0 to {MAX_REPLICAS}",
                    scale.replicas
                )));
            }
            KubeRequest::Scale {
                target,
                workload,
                replicas: scale.replicas,
            }
        }
        Action::Restart(restart) => {
            let target = object_ref("restart.target", restart.target.as_ref())?;
            let workload = match (target.api_version.group.as_str(), target.kind.as_str()) {
                ("apps", "Deployment") => RestartableKind::Deployment,
                ("apps", "StatefulSet") => RestartableKind::StatefulSet,
                ("apps", "DaemonSet") => RestartableKind::DaemonSet,
                _ => {
                    return Err(invalid(format!(
                        "restart.target {} {} cannot be restarted: restart supports apps/v1 Deployment, StatefulSet and DaemonSet",
                        target.api_version, target.kind
                    )))
                }
            };
            KubeRequest::Restart { target, workload }
        }
        Action::Logs(logs) => {
            if logs.namespace.is_empty() {
                return Err(invalid(
                    "logs.namespace is empty: name the pod's namespace".to_string(),
                ));
            }
            check_label("logs.namespace", &logs.namespace)?;
            if logs.pod.is_empty() {
                return Err(invalid(
                    "logs.pod is empty: name the pod to read logs from".to_string(),
                ));
            }
            check_subdomain("logs.pod", &logs.pod)?;
            let container = optional_label("logs.container", &logs.container)?;
            if logs.tail_lines < 0 {
                return Err(invalid(format!(
                    "logs.tail_lines {} is negative: use 0 (all lines) or more",
                    logs.tail_lines
                )));
            }
            if logs.since_seconds < 0 {
                return Err(invalid(format!(
                    "logs.since_seconds {} is negative: use 0 (no time limit) or more",
                    logs.since_seconds
                )));
            }
            if logs.limit_bytes > limits.max_log_bytes {
                return Err(invalid(format!(
                    "logs.limit_bytes {} is more than this relayer can send in one frame: use at most {} (or 0 for that maximum)",
                    logs.limit_bytes, limits.max_log_bytes
                )));
            }
            KubeRequest::Logs(LogsQuery {
                namespace: logs.namespace.clone(),
                pod: logs.pod.clone(),
                container,
                tail_lines: (logs.tail_lines > 0).then_some(logs.tail_lines),
                since_seconds: (logs.since_seconds > 0).then_some(logs.since_seconds),
                limit_bytes: if logs.limit_bytes == 0 {
                    limits.max_log_bytes
                } else {
                    logs.limit_bytes
                },
            })
        }
    };
    Ok(ValidatedCommand::Kube(request))
}

/// Upper bound on `scale.replicas`: a typo guard, far above real workloads.
pub const MAX_REPLICAS: i32 = 10_000;

fn object_ref(field: &str, target: Option<&ObjectRef>) -> Result<Target, CommandError> {
    let Some(target) = target else {
        return Err(invalid(format!(
            "{field} is missing: set api_version, kind, name and (for namespaced kinds) namespace"
        )));
    };
    let api_version = api_version(&format!("{field}.api_version"), &target.api_version)?;
    check_kind(&format!("{field}.kind"), &target.kind)?;
    if target.name.is_empty() {
        return Err(invalid(format!("{field}.name is empty: name the object")));
    }
    check_subdomain(&format!("{field}.name"), &target.name)?;
    let namespace = optional_label(&format!("{field}.namespace"), &target.namespace)?;
    Ok(Target {
        api_version,
        kind: target.kind.clone(),
        namespace,
        name: target.name.clone(),
    })
}

/// Shared by the test modules of `validate/`: the limits, the runner that
/// turns an error into its message, and the table-outcome comparison.
#[cfg(test)]
mod testing {
    use std::fmt;

    use super::{validate_action, ApiVersion, Target, ValidatedCommand, ValidationLimits};
    use crate::commands::outcome::CommandError;
    use crate::proto::{command::Action, ObjectRef};

    pub(super) const LIMITS: ValidationLimits = ValidationLimits {
        max_manifest_bytes: 4096,
        max_log_bytes: 1_000_000,
    };

    /// Validates `action`; an error becomes its message so tables can match on text.
    pub(super) fn run(action: Action) -> Result<ValidatedCommand, String> {
        validate_action(&action, &LIMITS).map_err(|e| {
            assert!(matches!(e, CommandError::InvalidArgument(_)), "{e:?}");
            e.to_string()
        })
    }

    /// `Err(part)` expects an error message containing `part`.
    pub(super) fn check_outcome<T: PartialEq + fmt::Debug>(
        input: impl fmt::Debug,
        got: Result<T, String>,
        expected: Result<T, &str>,
    ) {
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "input {input:?}"),
            (Err(got), Err(part)) => assert!(
                got.contains(part),
                "input {input:?}: message {got:?} lacks {part:?}"
            ),
            (got, expected) => panic!("input {input:?}: got {got:?}, expected {expected:?}"),
        }
    }

    pub(super) fn oref(api_version: &str, kind: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    pub(super) fn target(
        group: &str,
        version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Target {
        Target {
            api_version: ApiVersion {
                group: group.into(),
                version: version.into(),
            },
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: name.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{check_outcome, oref, run, target, LIMITS};
    use super::*;
    use crate::proto::{
        DeleteResource, GetClusterInfo, GetLogs, GetResource, ListResources, Ping, RestartWorkload,
        ScaleWorkload,
    };

    #[test]
    fn object_ref_targets() {
        fn check(input: Option<ObjectRef>, expected: Result<Target, &str>) {
            let got = run(Action::Get(GetResource {
                target: input.clone(),
            }))
            .map(|v| match v {
                ValidatedCommand::Kube(KubeRequest::Get { target }) => target,
                other => panic!("{other:?}"),
            });
            check_outcome(input, got, expected);
        }
        let long_name = format!("a{}", ".b".repeat(130));
        let table: Vec<(Option<ObjectRef>, Result<Target, &str>)> = vec![
            (
                Some(oref("apps/v1", "Deployment", "web", "api")),
                Ok(target("apps", "v1", "Deployment", Some("web"), "api")),
            ),
            (
                Some(oref("v1", "Node", "", "node-1.example.com")),
                Ok(target("", "v1", "Node", None, "node-1.example.com")),
            ),
            (None, Err("get.target is missing")),
            (
                Some(oref("", "Deployment", "web", "api")),
                Err("get.target.api_version is empty"),
            ),
            (
                Some(oref("apps/v1", "", "web", "api")),
                Err("get.target.kind is empty"),
            ),
            (
                Some(oref("apps/v1", "deployment", "web", "api")),
                Err("get.target.kind \"deployment\" is not a kind"),
            ),
            (
                Some(oref("apps/v1", "Deployment", "web", "")),
                Err("get.target.name is empty"),
            ),
            (
                Some(oref("apps/v1", "Deployment", "web", "API")),
                Err("get.target.name \"API\" is not a DNS-1123 subdomain"),
            ),
            (
                Some(oref("apps/v1", "Deployment", "web", &long_name)),
                Err("not a DNS-1123 subdomain"),
            ),
            (
                Some(oref("apps/v1", "Deployment", "web.x", "api")),
                Err("get.target.namespace \"web.x\" is not a DNS-1123 label"),
            ),
        ];
        for (input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn delete_propagation() {
        fn check(propagation: &str, expected: Result<Option<Propagation>, &str>) {
            let got = run(Action::Delete(DeleteResource {
                target: Some(oref("v1", "ConfigMap", "web", "settings")),
                propagation: propagation.into(),
            }))
            .map(|v| match v {
                ValidatedCommand::Kube(KubeRequest::Delete { propagation, .. }) => propagation,
                other => panic!("{other:?}"),
            });
            check_outcome(propagation, got, expected);
        }
        let table: &[(&str, Result<Option<Propagation>, &str>)] = &[
            ("", Ok(None)),
            ("Foreground", Ok(Some(Propagation::Foreground))),
            ("Background", Ok(Some(Propagation::Background))),
            ("Orphan", Ok(Some(Propagation::Orphan))),
            ("foreground", Err("delete.propagation \"foreground\" is not a propagation policy: use Foreground, Background, Orphan")),
            ("Cascade", Err("not a propagation policy")),
        ];
        for &(input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn list_queries() {
        fn check(input: ListResources, expected: Result<ListQuery, &str>) {
            let got = run(Action::List(input.clone())).map(|v| match v {
                ValidatedCommand::Kube(KubeRequest::List(q)) => q,
                other => panic!("{other:?}"),
            });
            check_outcome(input, got, expected);
        }
        let list = |api: &str, kind: &str, ns: &str, sel: &str, limit: u32| ListResources {
            api_version: api.into(),
            kind: kind.into(),
            namespace: ns.into(),
            label_selector: sel.into(),
            limit,
        };
        let apps_v1 = ApiVersion {
            group: "apps".into(),
            version: "v1".into(),
        };
        let table = vec![
            (
                list("apps/v1", "Deployment", "web", "app=api", 10),
                Ok(ListQuery {
                    api_version: apps_v1.clone(),
                    kind: "Deployment".into(),
                    namespace: Some("web".into()),
                    label_selector: Some("app=api".into()),
                    limit: Some(10),
                }),
            ),
            (
                list("apps/v1", "Deployment", "", "", 0),
                Ok(ListQuery {
                    api_version: apps_v1,
                    kind: "Deployment".into(),
                    namespace: None,
                    label_selector: None,
                    limit: None,
                }),
            ),
            (
                list("", "Deployment", "", "", 0),
                Err("list.api_version is empty"),
            ),
            (list("apps/v1", "", "", "", 0), Err("list.kind is empty")),
            (
                list("apps/v1", "Deployment", "Web", "", 0),
                Err("list.namespace \"Web\" is not a DNS-1123 label"),
            ),
            (
                list("apps/v1", "Deployment", "", "a==", 0),
                Err("list.label_selector \"a==\" is not a label selector"),
            ),
        ];
        for (input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn scale_and_restart() {
        fn check(input: Action, expected: Result<KubeRequest, &str>) {
            let got = run(input.clone()).map(|v| match v {
                ValidatedCommand::Kube(request) => request,
                other => panic!("{other:?}"),
            });
            check_outcome(&input, got, expected);
        }
        let scale = |api: &str, kind: &str, replicas: i32| {
            Action::Scale(ScaleWorkload {
                target: Some(oref(api, kind, "web", "api")),
                replicas,
            })
        };
        let restart = |api: &str, kind: &str| {
            Action::Restart(RestartWorkload {
                target: Some(oref(api, kind, "web", "api")),
            })
        };
        let t = |kind: &str| target("apps", "v1", kind, Some("web"), "api");
        let table = vec![
            (
                scale("apps/v1", "Deployment", 3),
                Ok(KubeRequest::Scale {
                    target: t("Deployment"),
                    workload: ScalableKind::Deployment,
                    replicas: 3,
                }),
            ),
            (
                scale("apps/v1", "StatefulSet", 0),
                Ok(KubeRequest::Scale {
                    target: t("StatefulSet"),
                    workload: ScalableKind::StatefulSet,
                    replicas: 0,
                }),
            ),
            (
                scale("apps/v1", "ReplicaSet", 10_000),
                Ok(KubeRequest::Scale {
                    target: t("ReplicaSet"),
                    workload: ScalableKind::ReplicaSet,
                    replicas: 10_000,
                }),
            ),
            (scale("apps/v1", "Deployment", -1), Err("scale.replicas -1 is out of range: use 0 to 10000")),
            (scale("apps/v1", "Deployment", 10_001), Err("scale.replicas 10001 is out of range")),
            (
                scale("apps/v1", "DaemonSet", 1),
                Err("scale.target apps/v1 DaemonSet cannot be scaled: scale supports apps/v1 Deployment, StatefulSet and ReplicaSet"),
            ),
            (scale("v1", "Deployment", 1), Err("v1 Deployment cannot be scaled")),
            (scale("apps/v1", "Deployment", 1), Ok(KubeRequest::Scale {
                target: t("Deployment"),
                workload: ScalableKind::Deployment,
                replicas: 1,
            })),
            (
                restart("apps/v1", "DaemonSet"),
                Ok(KubeRequest::Restart {
                    target: t("DaemonSet"),
                    workload: RestartableKind::DaemonSet,
                }),
            ),
            (
                restart("apps/v1", "Deployment"),
                Ok(KubeRequest::Restart {
                    target: t("Deployment"),
                    workload: RestartableKind::Deployment,
                }),
            ),
            (
                restart("apps/v1", "ReplicaSet"),
                Err("restart.target apps/v1 ReplicaSet cannot be restarted: restart supports apps/v1 Deployment, StatefulSet and DaemonSet"),
            ),
            (
                Action::Scale(ScaleWorkload { target: None, replicas: 1 }),
                Err("scale.target is missing"),
            ),
        ];
        for (input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn logs() {
        fn check(input: GetLogs, expected: Result<LogsQuery, &str>) {
            let got = run(Action::Logs(input.clone())).map(|v| match v {
                ValidatedCommand::Kube(KubeRequest::Logs(q)) => q,
                other => panic!("{other:?}"),
            });
            check_outcome(input, got, expected);
        }
        let logs =
            |ns: &str, pod: &str, container: &str, tail: i64, since: i64, limit: u32| GetLogs {
                namespace: ns.into(),
                pod: pod.into(),
                container: container.into(),
                tail_lines: tail,
                since_seconds: since,
                limit_bytes: limit,
            };
        let table = vec![
            (
                logs("web", "api-7d9f.x", "app", 100, 60, 4096),
                Ok(LogsQuery {
                    namespace: "web".into(),
                    pod: "api-7d9f.x".into(),
                    container: Some("app".into()),
                    tail_lines: Some(100),
                    since_seconds: Some(60),
                    limit_bytes: 4096,
                }),
            ),
            (
                logs("web", "api", "", 0, 0, 0),
                Ok(LogsQuery {
                    namespace: "web".into(),
                    pod: "api".into(),
                    container: None,
                    tail_lines: None,
                    since_seconds: None,
                    limit_bytes: LIMITS.max_log_bytes,
                }),
            ),
            (logs("", "api", "", 0, 0, 0), Err("logs.namespace is empty")),
            (logs("web", "", "", 0, 0, 0), Err("logs.pod is empty")),
            (logs("web.x", "api", "", 0, 0, 0), Err("logs.namespace \"web.x\" is not a DNS-1123 label")),
            (logs("web", "API", "", 0, 0, 0), Err("logs.pod \"API\" is not a DNS-1123 subdomain")),
            (logs("web", "api", "App", 0, 0, 0), Err("logs.container \"App\"")),
            (logs("web", "api", "", -1, 0, 0), Err("logs.tail_lines -1 is negative")),
            (logs("web", "api", "", 0, -5, 0), Err("logs.since_seconds -5 is negative")),
            (logs("web", "api", "", 0, 0, 1_000_001), Err("logs.limit_bytes 1000001 is more than this relayer can send in one frame: use at most 1000000")),
        ];
        for (input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn always_valid_and_missing_action() {
        let ping = run(Action::Ping(Ping {
            payload: bytes::Bytes::from_static(b"abc"),
        }));
        assert_eq!(ping, Ok(ValidatedCommand::Ping { payload_len: 3 }));
        let info = run(Action::ClusterInfo(GetClusterInfo {}));
        assert_eq!(info, Ok(ValidatedCommand::Kube(KubeRequest::ClusterInfo)));
        assert_eq!(info.unwrap().targets(), vec![]);
        let error = validate(&Command::default(), &LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("command has no action"),
            "{error}"
        );
    }
}
