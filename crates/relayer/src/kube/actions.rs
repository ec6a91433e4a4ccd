//! The Kubernetes actions, one async method each, returning the output JSON
//! documented in `docs/commands.md`. They take the validated request
//! (`commands::validate::KubeRequest` and its parts) as it is, with no
//! conversion; what is Kubernetes-specific is decided here: discovery
//! (apiVersion + kind → API resource, see `resolve`), the kind's scope, the
//! default namespace, and the API parameters. Every Kubernetes error goes
//! through `errors::from_kube`; nothing here knows about actors or the
//! protocol's frames.

use ::kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PropagationPolicy,
};
use ::kube::core::ObjectMeta;
use ::kube::Client;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::{json, Value};

use super::errors::from_kube;
use super::resolve::Resolver;
use crate::commands::outcome::CommandError;
use crate::commands::validate::{
    ApiVersion, ApplyPlan, KubeRequest, ListQuery, LogsQuery, Propagation, Target,
};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "consonant-relayer";
/// The annotation `restart` writes into the pod template.
pub const RESTART_ANNOTATION: &str = "consonant.xyz/restartedAt";
/// The namespace of a namespaced target that names none (admission
/// checks the policy against the same one).
pub use crate::commands::admission::DEFAULT_NAMESPACE;

/// `<verb> <apiVersion> <kind> [<namespace>/]<name>` for error messages; the
/// namespace appears only when the command named one.
fn describe(verb: &str, target: &Target) -> String {
    match &target.namespace {
        None => format!(
            "{verb} {} {} {}",
            target.api_version, target.kind, target.name
        ),
        Some(namespace) => format!(
            "{verb} {} {} {namespace}/{}",
            target.api_version, target.kind, target.name
        ),
    }
}

fn propagation_policy(propagation: Propagation) -> PropagationPolicy {
    match propagation {
        Propagation::Foreground => PropagationPolicy::Foreground,
        Propagation::Background => PropagationPolicy::Background,
        Propagation::Orphan => PropagationPolicy::Orphan,
    }
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

fn summary(meta: &ObjectMeta, api_version: &ApiVersion, kind: &str) -> Value {
    json!({
        "api_version": api_version.to_string(),
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

    /// Runs one request; `command_id` is the restart annotation's value.
    pub async fn run(
        &self,
        request: &KubeRequest,
        command_id: &str,
    ) -> Result<Value, CommandError> {
        match request {
            KubeRequest::Apply(plan) => self.apply(plan).await,
            KubeRequest::Delete {
                target,
                propagation,
            } => self.delete(target, *propagation).await,
            KubeRequest::Get { target } => self.get(target).await,
            KubeRequest::List(query) => self.list(query).await,
            KubeRequest::Scale {
                target, replicas, ..
            } => self.scale(target, *replicas).await,
            KubeRequest::Restart { target, .. } => self.restart(target, command_id).await,
            KubeRequest::Logs(query) => self.logs(query).await,
            KubeRequest::ClusterInfo => self.cluster_info().await,
        }
    }

    /// The API for `kind`, and the namespace it works in: `namespace`, or
    /// [`DEFAULT_NAMESPACE`] when `None`, for a namespaced kind; `None` for a
    /// cluster-scoped kind (refused unless `cluster_scoped_allowed`).
    async fn api(
        &self,
        api_version: &ApiVersion,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(Api<DynamicObject>, Option<String>), CommandError> {
        let resolved = self
            .resolver
            .resolve(&self.client, api_version, kind)
            .await?;
        if resolved.namespaced {
            let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
            Ok((
                Api::namespaced_with(self.client.clone(), namespace, &resolved.resource),
                Some(namespace.to_string()),
            ))
        } else {
            self.check_cluster_scope(api_version, kind)?;
            Ok((Api::all_with(self.client.clone(), &resolved.resource), None))
        }
    }

    /// A cluster-scoped kind is refused unless `allowed_namespaces = ["*"]`:
    /// the policy cannot know a CRD's scope, discovery does.
    fn check_cluster_scope(
        &self,
        api_version: &ApiVersion,
        kind: &str,
    ) -> Result<(), CommandError> {
        if self.cluster_scoped_allowed {
            return Ok(());
        }
        Err(CommandError::PolicyForbidden(format!(
            "{kind} ({api_version}) is cluster-scoped, and commands.allowed_namespaces does not include \"*\"; only namespaced objects in the allowed namespaces may be touched"
        )))
    }

    /// Server-side apply of every document, in order; stops at the first
    /// failure. A document without `metadata.namespace` goes to the
    /// command's namespace, else the default one (namespaced kinds only).
    pub async fn apply(&self, plan: &ApplyPlan) -> Result<Value, CommandError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = plan.force;
        params.dry_run = plan.dry_run;
        let mut applied = Vec::new();
        for (index, object) in plan.objects.iter().enumerate() {
            let requested = object
                .namespace
                .as_deref()
                .or(plan.default_namespace.as_deref());
            let (api, namespace) = self
                .api(&object.api_version, &object.kind, requested)
                .await?;
            let what = format!(
                "apply document {} ({} {} {})",
                index + 1,
                object.api_version,
                object.kind,
                match &namespace {
                    None => object.name.clone(),
                    Some(namespace) => format!("{namespace}/{}", object.name),
                }
            );
            let mut value = object.value.clone();
            if let Some(namespace) = &namespace {
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("namespace".into(), Value::String(namespace.clone()));
                }
            }
            let result = api
                .patch(&object.name, &params, &Patch::Apply(&value))
                .await
                .map_err(|err| from_kube(&what, &err))?;
            let mut entry = summary(&result.metadata, &object.api_version, &object.kind);
            entry["dry_run"] = json!(plan.dry_run);
            applied.push(entry);
        }
        Ok(json!({ "applied": applied }))
    }

    /// Deletes `target`; a missing object is success with `deleted: false`.
    pub async fn delete(
        &self,
        target: &Target,
        propagation: Option<Propagation>,
    ) -> Result<Value, CommandError> {
        let (api, namespace) = self
            .api(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let params = DeleteParams {
            propagation_policy: propagation.map(propagation_policy),
            ..Default::default()
        };
        let deleted = match api.delete(&target.name, &params).await {
            Ok(_) => true,
            Err(::kube::Error::Api(status)) if status.code == 404 => false,
            Err(err) => return Err(from_kube(&describe("delete", target), &err)),
        };
        Ok(json!({
            "deleted": deleted,
            "api_version": target.api_version.to_string(),
            "kind": target.kind,
            "namespace": namespace.unwrap_or_default(),
            "name": target.name,
        }))
    }

    pub async fn get(&self, target: &Target) -> Result<Value, CommandError> {
        let (api, _) = self
            .api(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let object = api
            .get(&target.name)
            .await
            .map_err(|err| from_kube(&describe("get", target), &err))?;
        let value =
            serde_json::to_value(&object).map_err(|err| CommandError::Internal(err.to_string()))?;
        Ok(json!({ "object": strip_managed_fields(value) }))
    }

    /// Lists objects; no namespace lists across all namespaces (the policy
    /// allowed that only with `allowed_namespaces = ["*"]`); a cluster-scoped
    /// kind is refused unless the policy allows cluster-scoped objects.
    pub async fn list(&self, query: &ListQuery) -> Result<Value, CommandError> {
        let resolved = self
            .resolver
            .resolve(&self.client, &query.api_version, &query.kind)
            .await?;
        if !resolved.namespaced {
            // Listing a cluster-scoped kind is touching it, whatever
            // namespace the command named.
            self.check_cluster_scope(&query.api_version, &query.kind)?;
        }
        let api: Api<DynamicObject> = match &query.namespace {
            Some(namespace) if resolved.namespaced => {
                Api::namespaced_with(self.client.clone(), namespace, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        };
        let mut params = ListParams::default();
        if let Some(selector) = &query.label_selector {
            params = params.labels(selector);
        }
        if let Some(limit) = query.limit {
            params = params.limit(limit);
        }
        let what = format!(
            "list {} {} in {}",
            query.api_version,
            query.kind,
            query.namespace.as_deref().unwrap_or("all namespaces")
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
        let (api, _) = self
            .api(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let what = describe("scale", target);
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
        let (api, _) = self
            .api(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let what = describe("restart", target);
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
    pub async fn logs(&self, query: &LogsQuery) -> Result<Value, CommandError> {
        let LogsQuery {
            namespace,
            pod,
            container,
            tail_lines,
            since_seconds,
            limit_bytes,
        } = query;
        let limit_bytes = *limit_bytes;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = LogParams {
            container: container.clone(),
            tail_lines: *tail_lines,
            since_seconds: *since_seconds,
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
            "container": container.as_deref().unwrap_or_default(),
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
