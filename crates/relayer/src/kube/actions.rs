//! The Kubernetes actions, one async method each, returning the output JSON
//! documented in `docs/commands.md`. Every Kubernetes error goes through
//! `errors::from_kube`; nothing here knows about actors or the protocol's
//! frames.

use ::kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PropagationPolicy,
};
use ::kube::core::ObjectMeta;
use ::kube::Client;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::{json, Value};

use super::errors::from_kube;
use super::resolve::{Resolved, Resolver};
use crate::commands::outcome::CommandError;
use crate::commands::validate::{self, ValidatedCommand};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "consonant-relayer";
/// The annotation `restart` writes into the pod template.
pub const RESTART_ANNOTATION: &str = "consonant.xyz/restartedAt";
/// Namespace for namespaced targets that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One object a command names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Target {
    fn describe(&self, verb: &str) -> String {
        if self.namespace.is_empty() {
            format!("{verb} {} {} {}", self.api_version, self.kind, self.name)
        } else {
            format!(
                "{verb} {} {} {}/{}",
                self.api_version, self.kind, self.namespace, self.name
            )
        }
    }
}

/// One document of an apply manifest, already parsed.
#[derive(Debug, Clone)]
pub struct ManifestDocument {
    pub value: Value,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

pub struct Executor {
    client: Client,
    resolver: Resolver,
    /// `commands.allowed_namespaces = ["*"]`: only then may a command touch
    /// a cluster-scoped object (the policy cannot know a CRD's scope before
    /// discovery; this closes that gap).
    cluster_scoped_allowed: bool,
}

fn strip_managed_fields(mut value: Value) -> Value {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    value
}

fn summary(meta: &ObjectMeta, api_version: &str, kind: &str) -> Value {
    json!({
        "api_version": api_version,
        "kind": kind,
        "namespace": meta.namespace,
        "name": meta.name,
        "uid": meta.uid,
        "resource_version": meta.resource_version,
    })
}

impl Executor {
    pub fn new(client: Client, cluster_scoped_allowed: bool) -> Self {
        Self {
            client,
            resolver: Resolver::default(),
            cluster_scoped_allowed,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<(Api<DynamicObject>, Resolved, String), CommandError> {
        let resolved = self
            .resolver
            .resolve(&self.client, api_version, kind)
            .await?;
        if resolved.namespaced {
            let namespace = if namespace.is_empty() {
                DEFAULT_NAMESPACE
            } else {
                namespace
            };
            Ok((
                Api::namespaced_with(self.client.clone(), namespace, &resolved.resource),
                resolved,
                namespace.to_string(),
            ))
        } else {
            if !self.cluster_scoped_allowed {
                return Err(CommandError::Forbidden(format!(
                    "{kind} ({api_version}) is cluster-scoped, and commands.allowed_namespaces does not include \"*\"; only namespaced objects in the allowed namespaces may be touched"
                )));
            }
            Ok((
                Api::all_with(self.client.clone(), &resolved.resource),
                resolved,
                String::new(),
            ))
        }
    }

    /// Server-side apply of every document, in order; stops at the first failure.
    pub async fn apply(
        &self,
        documents: &[ManifestDocument],
        default_namespace: &str,
        dry_run: bool,
        force: bool,
    ) -> Result<Value, CommandError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = force;
        params.dry_run = dry_run;
        let mut applied = Vec::new();
        for (index, document) in documents.iter().enumerate() {
            let namespace = document.namespace.as_deref().unwrap_or(default_namespace);
            let (api, _, namespace) = self
                .api(&document.api_version, &document.kind, namespace)
                .await?;
            let what = format!(
                "apply document {} ({} {} {})",
                index + 1,
                document.api_version,
                document.kind,
                if namespace.is_empty() {
                    document.name.clone()
                } else {
                    format!("{namespace}/{}", document.name)
                }
            );
            let mut value = document.value.clone();
            if !namespace.is_empty() {
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("namespace".into(), Value::String(namespace.clone()));
                }
            }
            let object = api
                .patch(&document.name, &params, &Patch::Apply(&value))
                .await
                .map_err(|err| from_kube(&what, &err))?;
            let mut entry = summary(&object.metadata, &document.api_version, &document.kind);
            entry["dry_run"] = json!(dry_run);
            applied.push(entry);
        }
        Ok(json!({ "applied": applied }))
    }

    /// Deletes `target`; a missing object is success with `deleted: false`.
    pub async fn delete(&self, target: &Target, propagation: &str) -> Result<Value, CommandError> {
        let (api, _, namespace) = self
            .api(&target.api_version, &target.kind, &target.namespace)
            .await?;
        let params = DeleteParams {
            propagation_policy: match propagation {
                "Foreground" => Some(PropagationPolicy::Foreground),
                "Background" => Some(PropagationPolicy::Background),
                "Orphan" => Some(PropagationPolicy::Orphan),
                _ => None,
            },
            ..Default::default()
        };
        let deleted = match api.delete(&target.name, &params).await {
            Ok(_) => true,
            Err(::kube::Error::Api(status)) if status.code == 404 => false,
            Err(err) => return Err(from_kube(&target.describe("delete"), &err)),
        };
        Ok(json!({
            "deleted": deleted,
            "api_version": target.api_version,
            "kind": target.kind,
            "namespace": namespace,
            "name": target.name,
        }))
    }

    pub async fn get(&self, target: &Target) -> Result<Value, CommandError> {
        let (api, _, _) = self
            .api(&target.api_version, &target.kind, &target.namespace)
            .await?;
        let object = api
            .get(&target.name)
            .await
            .map_err(|err| from_kube(&target.describe("get"), &err))?;
        let value =
            serde_json::to_value(&object).map_err(|err| CommandError::Internal(err.to_string()))?;
        Ok(json!({ "object": strip_managed_fields(value) }))
    }

    /// Lists objects; an empty namespace lists across all namespaces.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        label_selector: &str,
        limit: u32,
    ) -> Result<Value, CommandError> {
        let resolved = self
            .resolver
            .resolve(&self.client, api_version, kind)
            .await?;
        let api: Api<DynamicObject> = if resolved.namespaced && !namespace.is_empty() {
            Api::namespaced_with(self.client.clone(), namespace, &resolved.resource)
        } else {
            Api::all_with(self.client.clone(), &resolved.resource)
        };
        let mut params = ListParams::default();
        if !label_selector.is_empty() {
            params = params.labels(label_selector);
        }
        if limit > 0 {
            params = params.limit(limit);
        }
        let what = format!(
            "list {api_version} {kind} in {}",
            if namespace.is_empty() {
                "all namespaces"
            } else {
                namespace
            }
        );
        let list = api
            .list(&params)
            .await
            .map_err(|err| from_kube(&what, &err))?;
        let items: Vec<Value> = list
            .items
            .into_iter()
            .filter_map(|item| serde_json::to_value(item).ok())
            .map(strip_managed_fields)
            .collect();
        Ok(json!({
            "count": items.len(),
            "items": items,
            "continue": list.metadata.continue_.unwrap_or_default(),
        }))
    }

    /// Sets the replica count through the scale subresource.
    pub async fn scale(&self, target: &Target, replicas: i32) -> Result<Value, CommandError> {
        let (api, _, _) = self
            .api(&target.api_version, &target.kind, &target.namespace)
            .await?;
        let what = target.describe("scale");
        let before = api
            .get_scale(&target.name)
            .await
            .map_err(|err| from_kube(&what, &err))?;
        let previous = before.spec.and_then(|spec| spec.replicas).unwrap_or(0);
        let patch = json!({ "spec": { "replicas": replicas } });
        let after = api
            .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|err| from_kube(&what, &err))?;
        Ok(json!({
            "replicas": after.spec.and_then(|spec| spec.replicas).unwrap_or(replicas),
            "previous_replicas": previous,
        }))
    }

    /// Rollout restart: writes `consonant.xyz/restartedAt: <command_id>` into
    /// the pod template, once per command id.
    pub async fn restart(&self, target: &Target, command_id: &str) -> Result<Value, CommandError> {
        let (api, _, _) = self
            .api(&target.api_version, &target.kind, &target.namespace)
            .await?;
        let what = target.describe("restart");
        let current = api
            .get(&target.name)
            .await
            .map_err(|err| from_kube(&what, &err))?;
        let already = current
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|annotations| annotations.get(RESTART_ANNOTATION))
            .and_then(Value::as_str)
            == Some(command_id);
        if !already {
            let patch = json!({ "spec": { "template": { "metadata": { "annotations": { RESTART_ANNOTATION: command_id } } } } });
            api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|err| from_kube(&what, &err))?;
        }
        Ok(json!({ "restarted_at": command_id, "changed": !already }))
    }

    /// Reads a pod's logs, at most `limit_bytes`.
    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        tail_lines: i64,
        since_seconds: i64,
        limit_bytes: u32,
    ) -> Result<Value, CommandError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = LogParams {
            container: (!container.is_empty()).then(|| container.to_string()),
            tail_lines: (tail_lines > 0).then_some(tail_lines),
            since_seconds: (since_seconds > 0).then_some(since_seconds),
            limit_bytes: (limit_bytes > 0).then_some(i64::from(limit_bytes)),
            ..Default::default()
        };
        let what = format!("logs of pod {namespace}/{pod}");
        let text = api
            .logs(pod, &params)
            .await
            .map_err(|err| from_kube(&what, &err))?;
        let truncated = limit_bytes > 0 && text.len() as u64 >= u64::from(limit_bytes);
        Ok(json!({
            "namespace": namespace,
            "pod": pod,
            "container": container,
            "lines": text.lines().count(),
            "bytes": text.len(),
            "truncated": truncated,
            "log": text,
        }))
    }

    pub async fn cluster_info(&self) -> Result<Value, CommandError> {
        let version = self
            .client
            .apiserver_version()
            .await
            .map_err(|err| from_kube("read the Kubernetes version", &err))?;
        let nodes = Api::<Node>::all(self.client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(|err| from_kube("list nodes", &err))?;
        let namespaces = Api::<Namespace>::all(self.client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(|err| from_kube("list namespaces", &err))?;
        Ok(json!({
            "kubernetes_version": version.git_version,
            "nodes": nodes.items.len(),
            "namespaces": namespaces.items.len(),
            "relayer_version": env!("CARGO_PKG_VERSION"),
        }))
    }
}

/// One Kubernetes action, validated and ready to run.
#[derive(Debug, Clone)]
pub enum KubeRequest {
    Apply {
        documents: Vec<ManifestDocument>,
        default_namespace: String,
        dry_run: bool,
        force: bool,
    },
    Delete {
        target: Target,
        propagation: String,
    },
    Get {
        target: Target,
    },
    List {
        api_version: String,
        kind: String,
        namespace: String,
        label_selector: String,
        limit: u32,
    },
    Scale {
        target: Target,
        replicas: i32,
    },
    Restart {
        target: Target,
    },
    Logs {
        namespace: String,
        pod: String,
        container: String,
        tail_lines: i64,
        since_seconds: i64,
        limit_bytes: u32,
    },
    ClusterInfo,
}

impl KubeRequest {
    /// What the audit line names as the command's target (never contents).
    pub fn target_summary(&self) -> String {
        match self {
            KubeRequest::Apply { documents, .. } => documents
                .iter()
                .map(|d| format!("{}/{}", d.kind, d.name))
                .collect::<Vec<_>>()
                .join(","),
            KubeRequest::Delete { target, .. }
            | KubeRequest::Get { target }
            | KubeRequest::Scale { target, .. }
            | KubeRequest::Restart { target } => {
                format!("{} {}/{}", target.kind, target.namespace, target.name)
            }
            KubeRequest::List {
                kind, namespace, ..
            } => format!("{kind} in {namespace}"),
            KubeRequest::Logs { namespace, pod, .. } => format!("Pod {namespace}/{pod}"),
            KubeRequest::ClusterInfo => "cluster".to_string(),
        }
    }
}

impl Executor {
    /// Runs one request; `command_id` is the restart annotation's value.
    pub async fn run(
        &self,
        request: &KubeRequest,
        command_id: &str,
    ) -> Result<Value, CommandError> {
        match request {
            KubeRequest::Apply {
                documents,
                default_namespace,
                dry_run,
                force,
            } => {
                self.apply(documents, default_namespace, *dry_run, *force)
                    .await
            }
            KubeRequest::Delete {
                target,
                propagation,
            } => self.delete(target, propagation).await,
            KubeRequest::Get { target } => self.get(target).await,
            KubeRequest::List {
                api_version,
                kind,
                namespace,
                label_selector,
                limit,
            } => {
                self.list(api_version, kind, namespace, label_selector, *limit)
                    .await
            }
            KubeRequest::Scale { target, replicas } => self.scale(target, *replicas).await,
            KubeRequest::Restart { target } => self.restart(target, command_id).await,
            KubeRequest::Logs {
                namespace,
                pod,
                container,
                tail_lines,
                since_seconds,
                limit_bytes,
            } => {
                self.logs(
                    namespace,
                    pod,
                    container,
                    *tail_lines,
                    *since_seconds,
                    *limit_bytes,
                )
                .await
            }
            KubeRequest::ClusterInfo => self.cluster_info().await,
        }
    }
}

impl KubeRequest {
    /// The Kubernetes request for a validated command; `None` for ping.
    pub fn from_validated(validated: ValidatedCommand) -> Option<KubeRequest> {
        fn target(t: validate::Target) -> Target {
            Target {
                api_version: t.api_version.to_string(),
                kind: t.kind,
                namespace: t.namespace.unwrap_or_default(),
                name: t.name,
            }
        }
        Some(match validated {
            ValidatedCommand::Ping { .. } => return None,
            ValidatedCommand::Apply(plan) => KubeRequest::Apply {
                documents: plan
                    .objects
                    .into_iter()
                    .map(|object| ManifestDocument {
                        value: object.value,
                        api_version: object.api_version.to_string(),
                        kind: object.kind,
                        name: object.name,
                        namespace: object.namespace,
                    })
                    .collect(),
                default_namespace: plan
                    .default_namespace
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
                dry_run: plan.dry_run,
                force: plan.force,
            },
            ValidatedCommand::Delete {
                target: t,
                propagation,
            } => KubeRequest::Delete {
                target: target(t),
                propagation: propagation
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
            },
            ValidatedCommand::Get { target: t } => KubeRequest::Get { target: target(t) },
            ValidatedCommand::List(query) => KubeRequest::List {
                api_version: query.api_version.to_string(),
                kind: query.kind,
                namespace: query.namespace.unwrap_or_default(),
                label_selector: query.label_selector.unwrap_or_default(),
                limit: query.limit.unwrap_or(0),
            },
            ValidatedCommand::Scale {
                target: t,
                replicas,
                ..
            } => KubeRequest::Scale {
                target: target(t),
                replicas,
            },
            ValidatedCommand::Restart { target: t, .. } => {
                KubeRequest::Restart { target: target(t) }
            }
            ValidatedCommand::Logs(query) => KubeRequest::Logs {
                namespace: query.namespace,
                pod: query.pod,
                container: query.container.unwrap_or_default(),
                tail_lines: query.tail_lines.unwrap_or(0),
                since_seconds: query.since_seconds.unwrap_or(0),
                limit_bytes: query.limit_bytes,
            },
            ValidatedCommand::ClusterInfo => KubeRequest::ClusterInfo,
        })
    }
}
