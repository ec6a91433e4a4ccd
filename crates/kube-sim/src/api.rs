//! Resource operations behind the REST routes: list, get, create, replace,
//! patch, delete (with garbage collection of dependents), and the status,
//! scale and log subresources. Each takes the shared state and parsed
//! request parts and returns JSON or an [`ApiError`].

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::logs::{pod_logs, LogQuery};
use super::patch::{server_side_apply, PatchKind};
use super::resources::{ResourceType, Subresource};
use super::selector::{match_labels_string, Selector};
use super::status::ApiError;
use super::store::{check_rv, now_rfc3339};
use super::SimState;

/// Query parameters of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(pub HashMap<String, String>);

impl Params {
    /// One parameter.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `dryRun=All`.
    pub(crate) fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    /// `watch=true` or `watch=1`.
    pub(crate) fn watch(&self) -> bool {
        matches!(self.get("watch"), Some("true") | Some("1"))
    }

    /// An integer parameter; 400 when it does not parse.
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid {key}: {v:?} is not an integer"))
                })
            })
            .transpose()
    }

    /// The label and field selectors; 400 when one does not parse.
    pub(crate) fn selectors(&self) -> Result<(Selector, Selector), ApiError> {
        let parse = |key: &str| {
            Selector::parse(self.get(key).unwrap_or_default())
                .map_err(|e| ApiError::bad_request(format!("invalid {key}: {e}")))
        };
        Ok((parse("labelSelector")?, parse("fieldSelector")?))
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(value)
}

/// 400 when the body names another kind or namespace than the URL.
fn check_identity(
    rt: &ResourceType,
    ns: &str,
    name: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    if let Some(kind) = obj["kind"]
        .as_str()
        .filter(|k| !k.is_empty() && *k != rt.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the provided object ({kind}) does not match the resource ({}, kind {})",
            rt.group_resource(),
            rt.kind
        )));
    }
    if let Some(api_version) = obj["apiVersion"]
        .as_str()
        .filter(|v| !v.is_empty() && *v != rt.api_version())
    {
        return Err(ApiError::bad_request(format!(
            "the apiVersion of the provided object ({api_version}) does not match the URL ({})",
            rt.api_version()
        )));
    }
    if rt.namespaced {
        if let Some(body_ns) = obj["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty() && *n != ns)
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )));
        }
    }
    if let (Some(url_name), Some(body_name)) = (name, obj["metadata"]["name"].as_str()) {
        if url_name != body_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
            )));
        }
    }
    Ok(())
}

fn ensure_namespace(state: &SimState, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    let ns_type = state
        .registry
        .lookup("", "v1", "namespaces")
        .expect("namespaces registered");
    match state.store.get(&ns_type, "", ns) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("", "namespaces", "namespaces", ns)),
    }
}

/// Defaulting and conversion the real API server does on every write:
/// `spec.replicas` defaults to 1 for scalable workloads, a Secret's
/// `stringData` moves into `data` (base64).
fn normalize(rt: &ResourceType, obj: &mut Value) {
    match rt.kind.as_str() {
        "Deployment" | "StatefulSet" | "ReplicaSet"
            if obj["spec"].is_object() && obj["spec"]["replicas"].is_null() =>
        {
            obj["spec"]["replicas"] = json!(1);
        }
        "Secret" => {
            let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
                return;
            };
            for (k, v) in string_data.as_object().cloned().unwrap_or_default() {
                let bytes =
                    k8s_openapi::ByteString(v.as_str().unwrap_or_default().as_bytes().to_vec());
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                obj["data"][k] = serde_json::to_value(bytes).unwrap_or_default();
            }
        }
        _ => {}
    }
}

/// Fills what the real API server sets on a new object of `rt`.
fn prepare_new(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    normalize(rt, obj);
    if rt.has(Subresource::Status) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    match rt.kind.as_str() {
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        "CustomResourceDefinition" => {
            ResourceType::from_crd_object(obj).map_err(|e| {
                ApiError::invalid(format!("CustomResourceDefinition is invalid: {e}"))
            })?;
            obj["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now_rfc3339()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now_rfc3339()},
                ],
                "acceptedNames": obj["spec"]["names"].clone(),
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            });
        }
        _ => {}
    }
    Ok(())
}

/// Keeps side tables in step with a written object (CRDs register types).
fn after_write(state: &SimState, rt: &ResourceType, obj: &Value) {
    if rt.kind == "CustomResourceDefinition" {
        if let Ok(types) = ResourceType::from_crd_object(obj) {
            let group = obj["spec"]["group"].as_str().unwrap_or_default();
            let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or_default();
            state.registry.register_crd(group, plural, types);
        }
    }
}

/// GET on a collection (without `watch`).
pub(crate) fn list(
    state: &SimState,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &Params,
) -> Result<Value, ApiError> {
    let (labels, fields) = q.selectors()?;
    let (items, rv) = state.store.list(rt, ns);
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
        .collect();
    let offset = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid continue token {token:?}")))?,
        None => 0,
    };
    let limit = q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let total = items.len();
    let page: Vec<Value> = items
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let next = offset + page.len();
    if next < total {
        metadata["continue"] = json!(next.to_string());
        metadata["remainingItemCount"] = json!(total - next);
    }
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": page}),
    )
}

/// GET on one object.
pub(crate) fn get(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<Value, ApiError> {
    state
        .store
        .get(rt, ns, name)
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &rt.group_resource(), name))
}

/// POST on a collection.
pub(crate) fn create(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let mut obj = parse_body(body)?;
    check_identity(rt, ns, None, &obj)?;
    ensure_namespace(state, rt, ns)?;
    prepare_new(rt, &mut obj)?;
    let created = state.store.create(rt, ns, obj, q.dry_run())?;
    if !q.dry_run() {
        after_write(state, rt, &created);
    }
    Ok(created)
}

/// PUT on an object: 409 Conflict on a stale `metadata.resourceVersion`.
pub(crate) fn replace(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let obj = parse_body(body)?;
    check_identity(rt, ns, Some(name), &obj)?;
    let expected = obj["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let keep_status = rt.has(Subresource::Status);
    let updated = state.store.update(rt, ns, name, q.dry_run(), |current| {
        check_rv(rt, name, current, expected.as_deref())?;
        let status = current.get("status").cloned();
        *current = obj;
        if keep_status {
            restore_status(current, status);
        }
        normalize(rt, current);
        Ok(())
    })?;
    if !q.dry_run() {
        after_write(state, rt, &updated);
    }
    Ok(updated)
}

fn restore_status(obj: &mut Value, status: Option<Value>) {
    if let Some(m) = obj.as_object_mut() {
        match status {
            Some(s) => {
                m.insert("status".into(), s);
            }
            None => {
                m.remove("status");
            }
        }
    }
}

/// PATCH on an object. Returns the HTTP code (201 when apply created it).
pub(crate) fn patch(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    q: &Params,
) -> Result<(u16, Value), ApiError> {
    let kind = PatchKind::from_content_type(content_type)?;
    let patch = kind.parse_body(body)?;
    let keep_status = rt.has(Subresource::Status);
    // A resourceVersion in any patch is a precondition, as in the real API.
    let expected = patch["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    if kind == PatchKind::Apply {
        let manager = q
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "PATCH request for server-side apply must set the fieldManager query parameter",
                )
            })?
            .to_string();
        if patch["kind"].as_str().is_none_or(str::is_empty)
            || patch["apiVersion"].as_str().is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "server-side apply needs apiVersion and kind in the applied object",
            ));
        }
        check_identity(rt, ns, Some(name), &patch)?;
        let now = now_rfc3339();
        if state.store.get(rt, ns, name).is_none() {
            ensure_namespace(state, rt, ns)?;
            let mut obj = server_side_apply(None, &patch, &manager, &now);
            obj["metadata"]["name"] = json!(name);
            prepare_new(rt, &mut obj)?;
            let created = state.store.create(rt, ns, obj, q.dry_run())?;
            if !q.dry_run() {
                after_write(state, rt, &created);
            }
            return Ok((201, created));
        }
        let updated = state.store.update(rt, ns, name, q.dry_run(), |current| {
            check_rv(rt, name, current, expected.as_deref())?;
            let status = current.get("status").cloned();
            *current = server_side_apply(Some(current), &patch, &manager, &now);
            if keep_status {
                restore_status(current, status);
            }
            normalize(rt, current);
            Ok(())
        })?;
        if !q.dry_run() {
            after_write(state, rt, &updated);
        }
        return Ok((200, updated));
    }
    let updated = state.store.update(rt, ns, name, q.dry_run(), |current| {
        check_rv(rt, name, current, expected.as_deref())?;
        let status = current.get("status").cloned();
        kind.apply_to(current, &patch);
        if keep_status {
            restore_status(current, status);
        }
        normalize(rt, current);
        Ok(())
    })?;
    if !q.dry_run() {
        after_write(state, rt, &updated);
    }
    Ok((200, updated))
}

/// DeleteOptions from the query and body: the propagation policy and the
/// optional `preconditions` (uid, resourceVersion).
fn delete_options(body: &[u8], q: &Params) -> Result<(String, Value), ApiError> {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(body)?
    };
    let policy = q
        .get("propagationPolicy")
        .map(str::to_string)
        .or_else(|| options["propagationPolicy"].as_str().map(str::to_string))
        .unwrap_or_else(|| "Background".into());
    match policy.as_str() {
        "Foreground" | "Background" | "Orphan" => Ok((policy, options["preconditions"].clone())),
        other => Err(ApiError::bad_request(format!(
            "propagationPolicy {other:?} is not one of Foreground, Background, Orphan"
        ))),
    }
}

/// DELETE on an object; dependents are deleted (or orphaned) too. 409 when
/// a precondition (uid, resourceVersion) does not hold.
pub(crate) fn delete(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let (policy, preconditions) = delete_options(body, q)?;
    let current = get(state, rt, ns, name)?;
    for field in ["uid", "resourceVersion"] {
        if let Some(expected) = preconditions[field].as_str() {
            let actual = current["metadata"][field].as_str().unwrap_or_default();
            if expected != actual {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: {field} in precondition: {expected}, {field} in object meta: {actual}"
                    ),
                ));
            }
        }
    }
    if q.dry_run() {
        return Ok(current);
    }
    delete_cascading(state, rt, ns, name, &policy)
}

/// Deletes one object and garbage-collects what it owns.
pub(crate) fn delete_cascading(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    policy: &str,
) -> Result<Value, ApiError> {
    let deleted = state.store.delete(rt, ns, name, false)?;
    let uid = deleted["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (key, dep_ns, dep) in state.store.dependents(&uid) {
        let Some(dep_rt) = state.type_for_key(&key) else {
            continue;
        };
        let dep_name = dep["metadata"]["name"].as_str().unwrap_or_default();
        if policy == "Orphan" {
            let _ = state.store.update(&dep_rt, &dep_ns, dep_name, false, |o| {
                if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                }
                Ok(())
            });
        } else {
            let _ = delete_cascading(state, &dep_rt, &dep_ns, dep_name, "Background");
        }
    }
    match rt.kind.as_str() {
        "Namespace" => {
            for (key, obj) in state.store.in_namespace(name) {
                if let Some(t) = state.type_for_key(&key) {
                    let _ = state.store.delete(
                        &t,
                        name,
                        obj["metadata"]["name"].as_str().unwrap_or_default(),
                        false,
                    );
                }
            }
        }
        "CustomResourceDefinition" => {
            let group = deleted["spec"]["group"].as_str().unwrap_or_default();
            let plural = deleted["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default();
            if let Some(t) = state.registry.lookup_any_version(group, plural) {
                for o in state.store.list(&t, None).0 {
                    let (o_ns, o_name) = (
                        o["metadata"]["namespace"].as_str().unwrap_or_default(),
                        o["metadata"]["name"].as_str().unwrap_or_default(),
                    );
                    let _ = state.store.delete(&t, o_ns, o_name, false);
                }
            }
            state.registry.unregister_crd(group, plural);
        }
        _ => {}
    }
    Ok(deleted)
}

/// DELETE on a collection (honouring selectors); returns the deleted list.
pub(crate) fn delete_collection(
    state: &SimState,
    rt: &ResourceType,
    ns: Option<&str>,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let (policy, _) = delete_options(body, q)?;
    let mut listed = list(
        state,
        rt,
        ns,
        &Params(
            q.0.iter()
                .filter(|(k, _)| *k != "limit" && *k != "continue")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
    )?;
    if !q.dry_run() {
        for item in listed["items"].as_array().cloned().unwrap_or_default() {
            let (i_ns, i_name) = (
                item["metadata"]["namespace"].as_str().unwrap_or_default(),
                item["metadata"]["name"].as_str().unwrap_or_default(),
            );
            let _ = delete_cascading(state, rt, i_ns, i_name, &policy);
        }
    }
    listed["metadata"]["resourceVersion"] = json!(state.store.current_rv().to_string());
    Ok(listed)
}

/// The `autoscaling/v1` Scale view of a workload.
pub(crate) fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
                   "selector": match_labels_string(&obj["spec"]["selector"]["matchLabels"])},
    })
}

fn replicas_of(scale: &Value) -> Result<i64, ApiError> {
    scale["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Scale is invalid: spec.replicas: Invalid value: {}: must be an integer >= 0",
                scale["spec"]["replicas"]
            ))
        })
}

/// PUT or PATCH on `.../scale` (`content_type` None means PUT).
pub(crate) fn write_scale(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let (kind, input) = match content_type {
        Some(ct) => {
            let kind = PatchKind::from_content_type(ct)?;
            (Some(kind), kind.parse_body(body)?)
        }
        None => (None, parse_body(body)?),
    };
    let expected = input["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let updated = state.store.update(rt, ns, name, q.dry_run(), |current| {
        check_rv(rt, name, current, expected.as_deref())?;
        let scale = match kind {
            Some(kind) => {
                let mut scale = scale_of(current);
                kind.apply_to(&mut scale, &input);
                scale
            }
            None => input.clone(),
        };
        current["spec"]["replicas"] = json!(replicas_of(&scale)?);
        Ok(())
    })?;
    Ok(scale_of(&updated))
}

/// PUT or PATCH on `.../status` (`content_type` None means PUT): only
/// `.status` changes.
pub(crate) fn write_status(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
    q: &Params,
) -> Result<Value, ApiError> {
    let (kind, input) = match content_type {
        Some(ct) => {
            let kind = PatchKind::from_content_type(ct)?;
            (Some(kind), kind.parse_body(body)?)
        }
        None => (None, parse_body(body)?),
    };
    let expected = input["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    state.store.update(rt, ns, name, q.dry_run(), |current| {
        check_rv(rt, name, current, expected.as_deref())?;
        let status = match kind {
            Some(kind) => {
                let mut whole = current.clone();
                kind.apply_to(&mut whole, &input);
                whole.get("status").cloned()
            }
            None => input.get("status").cloned(),
        };
        restore_status(current, status);
        Ok(())
    })
}

/// GET `.../pods/{name}/log` as plain text.
pub(crate) fn logs(
    state: &SimState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    q: &Params,
) -> Result<String, ApiError> {
    let pod = get(state, rt, ns, name)?;
    let query = LogQuery {
        container: q
            .get("container")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        tail_lines: q.int("tailLines")?,
        since_seconds: q.int("sinceSeconds")?,
        limit_bytes: q.int("limitBytes")?,
    };
    pod_logs(&pod, &query, SystemTime::now())
}
