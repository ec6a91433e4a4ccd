//! Command validation: turns a protocol `Command` into a typed
//! [`ValidatedCommand`] or an INVALID_ARGUMENT [`CommandError`] whose message
//! names the field, the bad value and what is allowed. It owns the syntax
//! rules (DNS-1123 names, API versions, label selectors, manifest documents);
//! it does no I/O and knows nothing about which kinds are namespaced — the
//! policy and the executor decide that.

use std::fmt;

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

/// A command that passed validation, in the form the executor needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidatedCommand {
    Ping {
        payload_len: usize,
    },
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
            ValidatedCommand::Apply(_) => "apply",
            ValidatedCommand::Delete { .. } => "delete",
            ValidatedCommand::Get { .. } => "get",
            ValidatedCommand::List(_) => "list",
            ValidatedCommand::Scale { .. } => "scale",
            ValidatedCommand::Restart { .. } => "restart",
            ValidatedCommand::Logs(_) => "logs",
            ValidatedCommand::ClusterInfo => "cluster_info",
        }
    }

    /// The objects the policy must check: one per target, every document of
    /// an apply, none for `ping` and `cluster_info`.
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
            ValidatedCommand::Ping { .. } | ValidatedCommand::ClusterInfo => Vec::new(),
            ValidatedCommand::Apply(plan) => plan
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
            ValidatedCommand::Delete { target, .. }
            | ValidatedCommand::Get { target }
            | ValidatedCommand::Scale { target, .. }
            | ValidatedCommand::Restart { target, .. } => vec![of(target)],
            ValidatedCommand::List(query) => vec![PolicyTarget {
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
            ValidatedCommand::Logs(query) => vec![PolicyTarget {
                group: String::new(),
                kind: "Pod".to_string(),
                namespace: TargetNamespace::Named(query.namespace.clone()),
                name: Some(query.pod.clone()),
                document: None,
                kind_rules: false,
            }],
        }
    }
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
    match action {
        Action::Ping(ping) => Ok(ValidatedCommand::Ping {
            payload_len: ping.payload.len(),
        }),
        Action::ClusterInfo(_) => Ok(ValidatedCommand::ClusterInfo),
        Action::Apply(apply) => {
            let default_namespace = optional_label("apply.namespace", &apply.namespace)?;
            let objects = parse_manifest(
                &apply.manifest,
                limits.max_manifest_bytes,
                default_namespace.as_deref(),
            )?;
            Ok(ValidatedCommand::Apply(ApplyPlan {
                objects,
                default_namespace,
                dry_run: apply.dry_run,
                force: apply.force,
            }))
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
            Ok(ValidatedCommand::Delete {
                target,
                propagation,
            })
        }
        Action::Get(get) => Ok(ValidatedCommand::Get {
            target: object_ref("get.target", get.target.as_ref())?,
        }),
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
            Ok(ValidatedCommand::List(ListQuery {
                api_version,
                kind: list.kind.clone(),
                namespace,
                label_selector,
                limit: (list.limit > 0).then_some(list.limit),
            }))
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
            Ok(ValidatedCommand::Scale {
                target,
                workload,
                replicas: scale.replicas,
            })
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
            Ok(ValidatedCommand::Restart { target, workload })
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
            Ok(ValidatedCommand::Logs(LogsQuery {
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
            }))
        }
    }
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

fn api_version(field: &str, value: &str) -> Result<ApiVersion, CommandError> {
    parse_api_version(value).map_err(|why| {
        if value.is_empty() {
            invalid(format!(
                "{field} is empty: use \"v1\" for the core group or \"group/version\" such as \"apps/v1\""
            ))
        } else {
            invalid(format!("{field} {value:?} {why}"))
        }
    })
}

/// Parses `v1` or `group/version`; the error completes "<field> <value> ...".
pub fn parse_api_version(value: &str) -> Result<ApiVersion, String> {
    const FORM: &str = "use \"v1\" for the core group or \"group/version\" such as \"apps/v1\"";
    let (group, version) = match value.split_once('/') {
        None => ("", value),
        Some((group, version)) => (group, version),
    };
    if version.is_empty() || version.contains('/') || !is_label(version) {
        return Err(format!("is not an API version: {FORM}"));
    }
    if !group.is_empty() || value.contains('/') {
        if group == "core" {
            return Err("names the core group, which has no name: use \"v1\"".to_string());
        }
        if !is_subdomain(group) {
            return Err(format!("has an invalid group {group:?}: {FORM}"));
        }
    }
    Ok(ApiVersion {
        group: group.to_string(),
        version: version.to_string(),
    })
}

/// Kinds are matched case-sensitively by the policy, so only the canonical
/// CamelCase form is accepted: "secret" must not slip past a "Secret" rule.
fn check_kind(field: &str, kind: &str) -> Result<(), CommandError> {
    if kind.is_empty() {
        return Err(invalid(format!(
            "{field} is empty: name the kind, such as \"Deployment\""
        )));
    }
    if !is_kind(kind) {
        return Err(invalid(format!(
            "{field} {kind:?} is not a kind: use the CamelCase kind as in the object's \"kind\" field, such as \"Deployment\""
        )));
    }
    Ok(())
}

pub(crate) fn is_kind(kind: &str) -> bool {
    kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric())
}

fn optional_label(field: &str, value: &str) -> Result<Option<String>, CommandError> {
    if value.is_empty() {
        return Ok(None);
    }
    check_label(field, value)?;
    Ok(Some(value.to_string()))
}

fn check_label(field: &str, value: &str) -> Result<(), CommandError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {value:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )))
    }
}

fn check_subdomain(field: &str, value: &str) -> Result<(), CommandError> {
    if is_subdomain(value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {value:?} is not a DNS-1123 subdomain: use at most 253 lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit"
        )))
    }
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels (each without the 63 limit), at most 253.
pub fn is_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

// ---------------------------------------------------------------- selectors

/// Checks that a label selector is plausible, as Kubernetes would parse it:
/// comma-separated requirements `key`, `!key`, `key=v`, `key==v`, `key!=v`,
/// `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`. The error completes
/// "... is not a label selector: <why>".
pub fn label_selector(selector: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("')' at position {} has no matching '('", i + 1));
                }
            }
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '(' is never closed".to_string());
    }
    parts.push(&selector[start..]);
    for part in parts {
        requirement(part.trim())?;
    }
    Ok(())
}

fn requirement(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("it has an empty requirement (a stray comma)".to_string());
    }
    if let Some(key) = part.strip_prefix('!') {
        return selector_key(key.trim(), part);
    }
    let key_end = part
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>' | '(' | ')'))
        .unwrap_or(part.len());
    let (key, rest) = part.split_at(key_end);
    selector_key(key, part)?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Ok(()); // `key`: exists
    }
    for op in ["==", "!=", "=", ">", "<"] {
        if let Some(value) = rest.strip_prefix(op) {
            let value = value.trim();
            if value.is_empty() {
                return Err(format!(
                    "{part:?} has no value after {op:?}: write key{op}value"
                ));
            }
            if matches!(op, ">" | "<") && value.parse::<i64>().is_err() {
                return Err(format!(
                    "{part:?} compares with {value:?}, which is not an integer"
                ));
            }
            return selector_value(value, part);
        }
    }
    let (word, set) = rest.split_at(rest.find(['(', ' ', '\t']).unwrap_or(rest.len()));
    if word != "in" && word != "notin" {
        return Err(format!(
            "{part:?} has no operator after the key: use =, ==, !=, in (...), notin (...), or the key alone"
        ));
    }
    let set = set.trim();
    let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
        return Err(format!(
            "{part:?} needs a parenthesised set after {word:?}, such as (a,b)"
        ));
    };
    if inner.contains(['(', ')']) {
        return Err(format!("{part:?} has nested parentheses"));
    }
    for value in inner.split(',') {
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{part:?} has an empty value in its set"));
        }
        selector_value(value, part)?;
    }
    Ok(())
}

fn selector_key(key: &str, part: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_subdomain(p)) || !is_label_name(name) {
        return Err(format!(
            "{part:?} has an invalid key {key:?}: use an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn selector_value(value: &str, part: &str) -> Result<(), String> {
    if is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{part:?} has an invalid value {value:?}: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A label name or value: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
fn is_label_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------- manifests

/// One document's text and where it starts in the manifest.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the chunk's first line.
    first_line: usize,
}

/// Splits a manifest at document markers. A `---` line starts the next chunk
/// (so the chunk parses as an explicit document and its line numbers map
/// back with one offset); a `...` line ends the current one. Markers only
/// count at column 0, where YAML forbids content, so a block scalar cannot
/// contain one.
fn split_documents(manifest: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (number, line) in manifest.split_inclusive('\n').enumerate() {
        let number = number + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = |marker: &str| {
            bare == marker
                || bare
                    .strip_prefix(marker)
                    .is_some_and(|rest| rest.starts_with([' ', '\t']))
        };
        if is_marker("---") && offset > start {
            chunks.push(Chunk {
                text: &manifest[start..offset],
                first_line,
            });
            start = offset;
            first_line = number;
        }
        offset += line.len();
        if is_marker("...") {
            chunks.push(Chunk {
                text: &manifest[start..offset],
                first_line,
            });
            start = offset;
            first_line = number + 1;
        }
    }
    if offset > start {
        chunks.push(Chunk {
            text: &manifest[start..offset],
            first_line,
        });
    }
    chunks
}

/// The 1-based manifest line of a chunk's first content line, or `None` if
/// the chunk holds only markers, directives, comments and blank lines.
fn content_line(chunk: &Chunk<'_>) -> Option<usize> {
    chunk.text.lines().enumerate().find_map(|(i, line)| {
        let line = line.trim();
        let line = line
            .strip_prefix("---")
            .map(str::trim_start)
            .unwrap_or(line);
        let empty =
            line.is_empty() || line.starts_with('#') || line.starts_with('%') || line == "...";
        (!empty).then_some(chunk.first_line + i)
    })
}

fn parse_manifest(
    manifest: &[u8],
    max_bytes: usize,
    default_namespace: Option<&str>,
) -> Result<Vec<ManifestObject>, CommandError> {
    if manifest.is_empty() {
        return Err(invalid(
            "apply.manifest is empty: send one or more YAML or JSON documents".to_string(),
        ));
    }
    if manifest.len() > max_bytes {
        return Err(invalid(format!(
            "apply.manifest is {} bytes, more than the {max_bytes} allowed: split it into several apply commands",
            manifest.len()
        )));
    }
    let manifest = std::str::from_utf8(manifest).map_err(|e| {
        invalid(format!(
            "apply.manifest is not valid UTF-8 (at byte {}): send YAML or JSON text",
            e.valid_up_to()
        ))
    })?;

    let mut objects = Vec::new();
    let mut index = 0;
    // Directive lines (`%YAML 1.2`) belong to the document after them.
    let mut pending: Option<Chunk<'_>> = None;
    for chunk in split_documents(manifest) {
        let chunk = match pending.take() {
            Some(prev) => Chunk {
                text: &manifest[offset_of(manifest, prev.text)
                    ..offset_of(manifest, chunk.text) + chunk.text.len()],
                first_line: prev.first_line,
            },
            None => chunk,
        };
        let Some(line) = content_line(&chunk) else {
            if chunk.text.lines().any(|l| l.trim_start().starts_with('%')) {
                pending = Some(chunk);
            }
            continue;
        };
        index += 1;
        if let Some(object) = parse_document(&chunk, index, line, default_namespace)? {
            objects.push(object);
        } else {
            // `null` or `~` as a whole document: nothing to apply.
            index -= 1;
        }
    }
    if objects.is_empty() {
        return Err(invalid(
            "apply.manifest has no documents, only comments or empty documents: send at least one object".to_string(),
        ));
    }
    Ok(objects)
}

/// Byte offset of `part` (a subslice) within `whole`.
fn offset_of(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

fn parse_document(
    chunk: &Chunk<'_>,
    index: usize,
    line: usize,
    default_namespace: Option<&str>,
) -> Result<Option<ManifestObject>, CommandError> {
    let at = |line: usize| format!("apply.manifest document {index} (line {line})");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(chunk.text).map_err(|e| {
        // The error's line is within the chunk; report it within the manifest.
        let line = e
            .location()
            .map(|loc| chunk.first_line + loc.line().saturating_sub(1))
            .unwrap_or(line);
        invalid(format!("{}: {}", at(line), yaml_problem(&e)))
    })?;
    let mut yaml = yaml;
    // Kubernetes' own YAML reader honours merge keys (`<<: *base`).
    yaml.apply_merge()
        .map_err(|e| invalid(format!("{}: {}", at(line), yaml_problem(&e))))?;
    if yaml.is_null() {
        return Ok(None);
    }
    let value = serde_json::to_value(&yaml).map_err(|e| {
        invalid(format!(
            "{}: cannot be represented as JSON ({e}): use string keys and plain values",
            at(line)
        ))
    })?;
    let Some(map) = value.as_object() else {
        return Err(invalid(format!(
            "{} is a {}, not an object: each document must be a mapping with apiVersion, kind and metadata.name",
            at(line),
            json_type(&value)
        )));
    };
    let field = |name: &str| -> Result<&str, CommandError> {
        match map.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
            Some(serde_json::Value::String(_)) | None => Err(invalid(format!(
                "{} has no {name}: each object needs apiVersion, kind and metadata.name",
                at(line)
            ))),
            Some(other) => Err(invalid(format!(
                "{} has a {} as {name}: it must be a string",
                at(line),
                json_type(other)
            ))),
        }
    };
    let api_version_text = field("apiVersion")?;
    let api_version = parse_api_version(api_version_text).map_err(|why| {
        invalid(format!(
            "{} apiVersion {api_version_text:?} {why}",
            at(line)
        ))
    })?;
    let kind = field("kind")?;
    if !is_kind(kind) {
        return Err(invalid(format!(
            "{} kind {kind:?} is not a kind: use the CamelCase kind, such as \"Deployment\"",
            at(line)
        )));
    }
    let metadata = match map.get("metadata") {
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => {
            return Err(invalid(format!(
                "{} has a {} as metadata: it must be a mapping with a name",
                at(line),
                json_type(other)
            )))
        }
        None => {
            return Err(invalid(format!(
                "{} has no metadata: each object needs metadata.name",
                at(line)
            )))
        }
    };
    let name = match metadata.get("name") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => {
            return Err(invalid(format!(
                "{} ({kind}) has no metadata.name: server-side apply needs a name (generateName is not supported)",
                at(line)
            )))
        }
    };
    // Names are path segments; many kinds allow more than DNS names (e.g. "system:x"
    // for RBAC), so only what can never be a path segment is refused here.
    if name == "." || name == ".." || name.contains(['/', '%']) || name.len() > 253 {
        return Err(invalid(format!(
            "{} metadata.name {name:?} cannot be an object name: avoid '/', '%', \".\" and \"..\" and keep it to 253 characters",
            at(line)
        )));
    }
    let (namespace, namespace_in_manifest) = match metadata.get("namespace") {
        None | Some(serde_json::Value::Null) => (default_namespace.map(str::to_string), false),
        Some(serde_json::Value::String(ns)) if ns.is_empty() => {
            (default_namespace.map(str::to_string), false)
        }
        Some(serde_json::Value::String(ns)) => {
            if !is_label(ns) {
                return Err(invalid(format!(
                    "{} metadata.namespace {ns:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-'",
                    at(line)
                )));
            }
            (Some(ns.clone()), true)
        }
        Some(other) => {
            return Err(invalid(format!(
                "{} has a {} as metadata.namespace: it must be a string",
                at(line),
                json_type(other)
            )))
        }
    };
    Ok(Some(ManifestObject {
        index,
        line,
        api_version,
        kind: kind.to_string(),
        name: name.to_string(),
        namespace,
        namespace_in_manifest,
        value,
    }))
}

/// The parser's message without its position, which is relative to the
/// document and would mislead; the caller adds the manifest line.
fn yaml_problem(error: &serde_yaml_ng::Error) -> String {
    let text = error.to_string();
    match text
        .find(" at line ")
        .or_else(|| text.find(" at position "))
    {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        ApplyManifest, DeleteResource, GetClusterInfo, GetLogs, GetResource, ListResources, Ping,
        RestartWorkload, ScaleWorkload,
    };

    const LIMITS: ValidationLimits = ValidationLimits {
        max_manifest_bytes: 4096,
        max_log_bytes: 1_000_000,
    };

    /// Validates `action`; an error becomes its message so tables can match on text.
    fn run(action: Action) -> Result<ValidatedCommand, String> {
        validate_action(&action, &LIMITS).map_err(|e| {
            assert!(matches!(e, CommandError::InvalidArgument(_)), "{e:?}");
            e.to_string()
        })
    }

    /// `Err(part)` expects an error message containing `part`.
    fn check_outcome<T: PartialEq + fmt::Debug>(
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

    fn oref(api_version: &str, kind: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    fn target(group: &str, version: &str, kind: &str, ns: Option<&str>, name: &str) -> Target {
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

    #[test]
    fn dns_names() {
        fn check(value: &str, label: bool, subdomain: bool) {
            assert_eq!(is_label(value), label, "label {value:?}");
            assert_eq!(is_subdomain(value), subdomain, "subdomain {value:?}");
        }
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_sub = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let too_long_sub = format!("{long_sub}e");
        let table: &[(&str, bool, bool)] = &[
            ("web", true, true),
            ("web-1", true, true),
            ("0web", true, true),
            ("web.example.com", false, true),
            ("", false, false),
            ("-web", false, false),
            ("web-", false, false),
            ("Web", false, false),
            ("web_1", false, false),
            ("web..x", false, false),
            ("web.-x", false, false),
            (".web", false, false),
            (&long_label, true, true),
            (&too_long_label, false, true),
            (&long_sub, false, true),
            (&too_long_sub, false, false),
        ];
        for &(value, label, subdomain) in table {
            check(value, label, subdomain);
        }
    }

    /// (group, version)
    type GroupVersion = (&'static str, &'static str);

    #[test]
    fn api_versions() {
        fn check(input: &str, expected: Result<GroupVersion, &str>) {
            let got = parse_api_version(input).map(|v| {
                let text = v.to_string();
                assert_eq!(text, input, "round trip");
                (v.group, v.version)
            });
            let expected = expected.map(|(g, v)| (g.to_string(), v.to_string()));
            check_outcome(input, got, expected);
        }
        let table: &[(&str, Result<GroupVersion, &str>)] = &[
            ("v1", Ok(("", "v1"))),
            ("apps/v1", Ok(("apps", "v1"))),
            ("kagent.dev/v1alpha2", Ok(("kagent.dev", "v1alpha2"))),
            ("", Err("is not an API version")),
            ("apps/", Err("is not an API version")),
            ("/v1", Err("invalid group \"\"")),
            ("apps/v1/x", Err("is not an API version")),
            ("Apps/v1", Err("invalid group \"Apps\"")),
            ("core/v1", Err("use \"v1\"")),
            ("V1", Err("is not an API version")),
        ];
        for &(input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn object_ref_targets() {
        fn check(input: Option<ObjectRef>, expected: Result<Target, &str>) {
            let got = run(Action::Get(GetResource {
                target: input.clone(),
            }))
            .map(|v| match v {
                ValidatedCommand::Get { target } => target,
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
                ValidatedCommand::Delete { propagation, .. } => propagation,
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
    fn label_selectors() {
        fn check(selector: &str, expected: Result<(), &str>) {
            check_outcome(selector, label_selector(selector), expected);
        }
        let table: &[(&str, Result<(), &str>)] = &[
            ("app=web", Ok(())),
            ("app==web", Ok(())),
            ("app!=web", Ok(())),
            ("app", Ok(())),
            ("!app", Ok(())),
            ("app.kubernetes.io/name=web, tier in (front,back)", Ok(())),
            ("tier notin (a, b),env", Ok(())),
            ("tier in(a)", Ok(())),
            ("replicas>2", Ok(())),
            ("app = web , tier", Ok(())),
            ("example.com/app_name=v_1.2", Ok(())),
            ("app==", Err("\"app==\" has no value after \"==\"")),
            ("app=", Err("no value after \"=\"")),
            ("a,,b", Err("empty requirement")),
            ("a,", Err("empty requirement")),
            ("tier in (a,b", Err("never closed")),
            ("tier in a,b)", Err("no matching '('")),
            ("tier in ((a))", Err("nested parentheses")),
            ("tier in (a,)", Err("empty value in its set")),
            ("tier in", Err("needs a parenthesised set")),
            ("tier within (a)", Err("no operator after the key")),
            ("app===web", Err("invalid value \"=web\"")),
            ("app=we b", Err("invalid value")),
            ("-app=web", Err("invalid key \"-app\"")),
            ("Bad_Prefix/app=web", Err("invalid key")),
            ("replicas>two", Err("not an integer")),
        ];
        for &(input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn list_queries() {
        fn check(input: ListResources, expected: Result<ListQuery, &str>) {
            let got = run(Action::List(input.clone())).map(|v| match v {
                ValidatedCommand::List(q) => q,
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
        fn check(input: Action, expected: Result<ValidatedCommand, &str>) {
            check_outcome(&input, run(input.clone()), expected);
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
                Ok(ValidatedCommand::Scale {
                    target: t("Deployment"),
                    workload: ScalableKind::Deployment,
                    replicas: 3,
                }),
            ),
            (
                scale("apps/v1", "StatefulSet", 0),
                Ok(ValidatedCommand::Scale {
                    target: t("StatefulSet"),
                    workload: ScalableKind::StatefulSet,
                    replicas: 0,
                }),
            ),
            (
                scale("apps/v1", "ReplicaSet", 10_000),
                Ok(ValidatedCommand::Scale {
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
            (scale("apps/v1", "Deployment", 1), Ok(ValidatedCommand::Scale {
                target: t("Deployment"),
                workload: ScalableKind::Deployment,
                replicas: 1,
            })),
            (
                restart("apps/v1", "DaemonSet"),
                Ok(ValidatedCommand::Restart {
                    target: t("DaemonSet"),
                    workload: RestartableKind::DaemonSet,
                }),
            ),
            (
                restart("apps/v1", "Deployment"),
                Ok(ValidatedCommand::Restart {
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
                ValidatedCommand::Logs(q) => q,
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
        assert_eq!(info, Ok(ValidatedCommand::ClusterInfo));
        assert_eq!(info.unwrap().targets(), vec![]);
        let error = validate(&Command::default(), &LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("command has no action"),
            "{error}"
        );
    }

    /// (index, line, kind, name, namespace, namespace_in_manifest) per object.
    type Summary = (
        usize,
        usize,
        &'static str,
        &'static str,
        Option<&'static str>,
        bool,
    );

    /// Objects expected from a manifest, or part of the error message.
    type ManifestCase = Result<&'static [Summary], &'static str>;

    #[test]
    fn manifests() {
        fn check(manifest: &str, namespace: &str, expected: Result<&[Summary], &str>) {
            let got = run(Action::Apply(ApplyManifest {
                manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
                namespace: namespace.into(),
                dry_run: false,
                force: false,
            }))
            .map(|v| match v {
                ValidatedCommand::Apply(plan) => plan
                    .objects
                    .iter()
                    .map(|o| {
                        (
                            o.index,
                            o.line,
                            o.kind.clone(),
                            o.name.clone(),
                            o.namespace.clone(),
                            o.namespace_in_manifest,
                        )
                    })
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            });
            let expected = expected.map(|objects| {
                objects
                    .iter()
                    .map(|&(i, l, k, n, ns, m)| {
                        (
                            i,
                            l,
                            k.to_string(),
                            n.to_string(),
                            ns.map(str::to_string),
                            m,
                        )
                    })
                    .collect::<Vec<_>>()
            });
            check_outcome(manifest, got, expected);
        }
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n";
        let two = format!("{cm}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: web\n");
        let leading = format!("# generated\n---\n{cm}---\n---\n# only a comment\n");
        let broken = format!(
            "{cm}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  bad: a: b\n"
        );
        let json = r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "web"}}"#;
        let directive = format!("%YAML 1.2\n---\n{cm}");
        let merge = "base: &b\n  name: m\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  <<: {name: merged}\n";
        let too_big = format!("{cm}data:\n  blob: {}\n", "x".repeat(5000));
        let table: Vec<(&str, &str, ManifestCase)> = vec![
            (cm, "", Ok(&[(1, 1, "ConfigMap", "settings", None, false)])),
            (cm, "web", Ok(&[(1, 1, "ConfigMap", "settings", Some("web"), false)])),
            (
                &two,
                "dflt",
                Ok(&[
                    (1, 1, "ConfigMap", "settings", Some("dflt"), false),
                    (2, 6, "Deployment", "api", Some("web"), true),
                ]),
            ),
            (&leading, "", Ok(&[(1, 3, "ConfigMap", "settings", None, false)])),
            (json, "", Ok(&[(1, 1, "Secret", "db", Some("web"), true)])),
            (&directive, "", Ok(&[(1, 3, "ConfigMap", "settings", None, false)])),
            ("--- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n", "", Ok(&[(1, 1, "ConfigMap", "a", None, false)])),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n...\n---\nnull\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
                "",
                Ok(&[(1, 1, "ConfigMap", "a", None, false), (2, 8, "ConfigMap", "b", None, false)]),
            ),
            (
                "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: a}\r\n--- # next\r\napiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: b}\r\n",
                "",
                Ok(&[
                    (1, 1, "ConfigMap", "a", None, false),
                    (2, 5, "ConfigMap", "b", None, false),
                ]),
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  script: |\n    echo ---\n    ---x\n",
                "",
                Ok(&[(1, 1, "ConfigMap", "a", None, false)]),
            ),
            ("", "", Err("apply.manifest is empty")),
            ("---\n# nothing\n---\n", "", Err("has no documents")),
            (&too_big, "", Err("more than the 4096 allowed")),
            (&broken, "", Err("apply.manifest document 2 (line 10): mapping values are not allowed")),
            ("a: [1, 2\n", "", Err("apply.manifest document 1 (line 2)")),
            ("- a\n- b\n", "", Err("document 1 (line 1) is a list, not an object")),
            ("just text\n", "", Err("document 1 (line 1) is a string, not an object")),
            ("kind: ConfigMap\nmetadata: {name: a}\n", "", Err("document 1 (line 1) has no apiVersion")),
            ("apiVersion: v1\nmetadata: {name: a}\n", "", Err("has no kind")),
            ("apiVersion: v1\nkind: 3\nmetadata: {name: a}\n", "", Err("has a number as kind")),
            ("apiVersion: v1\nkind: ConfigMap\n", "", Err("has no metadata")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: a-}\n", "", Err("(ConfigMap) has no metadata.name")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a/b}\n", "", Err("metadata.name \"a/b\" cannot be an object name")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: Web}\n", "", Err("metadata.namespace \"Web\" is not a DNS-1123 label")),
            ("apiVersion: apps/v1/x\nkind: ConfigMap\nmetadata: {name: a}\n", "", Err("apiVersion \"apps/v1/x\" is not an API version")),
            ("apiVersion: v1\nkind: configMap\nmetadata: {name: a}\n", "", Err("kind \"configMap\" is not a kind")),
            ("apiVersion: v1\nkind: ConfigMap\nkind: Secret\nmetadata: {name: a}\n", "", Err("document 1 (line 1): duplicate entry with key \"kind\"")),
            (cm, "Web", Err("apply.namespace \"Web\" is not a DNS-1123 label")),
        ];
        for (manifest, namespace, expected) in table {
            check(manifest, namespace, expected);
        }
        // Merge keys resolve as in Kubernetes; the first document has no kind.
        check(merge, "", Err("document 1 (line 1) has no apiVersion"));
        let merged = &merge[merge.find("apiVersion").unwrap()..];
        check(
            merged,
            "",
            Ok(&[(1, 1, "ConfigMap", "merged", None, false)]),
        );
    }

    #[test]
    fn manifest_errors_are_not_utf8_safe_panics() {
        let got = run(Action::Apply(ApplyManifest {
            manifest: bytes::Bytes::from_static(b"apiVersion: v1\n\xff\n"),
            ..Default::default()
        }));
        check_outcome("invalid utf-8", got, Err("not valid UTF-8 (at byte 15)"));
    }

    #[test]
    fn manifest_values_are_kept_untouched() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  n: \"1\"\n  flag: \"true\"\n";
        let Ok(ValidatedCommand::Apply(plan)) = run(Action::Apply(ApplyManifest {
            manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
            namespace: "web".into(),
            ..Default::default()
        })) else {
            panic!("valid manifest refused");
        };
        assert_eq!(
            plan.objects[0].value,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a"}, "data": {"n": "1", "flag": "true"}})
        );
        assert_eq!(plan.default_namespace.as_deref(), Some("web"));
    }

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
