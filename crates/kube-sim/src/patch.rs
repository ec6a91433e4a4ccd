//! Patch semantics: JSON merge patch (RFC 7386), a simplified strategic
//! merge patch (merge patch that merges lists of named items by `name`),
//! and a simplified server-side apply built on it. Pure functions.

use serde_json::{json, Map, Value};

use super::status::ApiError;

/// The patch flavours the simulator understands, by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// The kind for a `Content-Type` header value, or 415.
    pub(crate) fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// Parses a patch body (YAML is accepted for apply).
    pub(crate) fn parse_body(self, body: &[u8]) -> Result<Value, ApiError> {
        let parsed: Result<Value, String> = match self {
            PatchKind::Apply => serde_yaml_ng::from_slice(body).map_err(|e| e.to_string()),
            _ => serde_json::from_slice(body).map_err(|e| e.to_string()),
        };
        let value =
            parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        Ok(value)
    }

    /// Applies a patch of this kind to `target`.
    pub(crate) fn apply_to(self, target: &mut Value, patch: &Value) {
        match self {
            PatchKind::Merge => merge_patch(target, patch),
            PatchKind::Strategic | PatchKind::Apply => strategic_merge(target, patch),
        }
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes a
/// key, anything else (lists included) replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object");
    for (k, v) in patch_map {
        if v.is_null() {
            target_map.remove(k);
        } else {
            merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn named_items(list: &[Value]) -> bool {
    !list.is_empty()
        && list
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// Strategic merge patch, simplified: merge patch, except that a list whose
/// patch items all carry a `name` (containers, env, ports, volumes, ...) is
/// merged item by item on `name`, keeping items the patch does not name.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let target_map = target.as_object_mut().expect("object");
            for (k, v) in patch_map {
                if v.is_null() {
                    target_map.remove(k);
                } else {
                    strategic_merge(target_map.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        Value::Array(patch_items) => {
            if let Some(items) = target.as_array_mut() {
                if named_items(patch_items) && named_items(items) {
                    for p in patch_items {
                        match items.iter_mut().find(|i| i["name"] == p["name"]) {
                            Some(existing) => strategic_merge(existing, p),
                            None => items.push(p.clone()),
                        }
                    }
                    return;
                }
            }
            *target = strip_nulls(patch);
        }
        other => *target = other.clone(),
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Server-side apply, simplified: merges `applied` onto `existing` (or
/// starts from nothing) and records `manager` in `metadata.managedFields`.
/// There is no per-field ownership, so there are no apply conflicts.
pub(crate) fn server_side_apply(
    existing: Option<&Value>,
    applied: &Value,
    manager: &str,
    now: &str,
) -> Value {
    let mut result = existing.cloned().unwrap_or_else(|| json!({}));
    let mut applied = applied.clone();
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    strategic_merge(&mut result, &applied);
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied.get("apiVersion").cloned().unwrap_or(Value::Null),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    let mut managed: Vec<Value> = existing
        .and_then(|e| e["metadata"]["managedFields"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !(f["manager"] == manager && f["operation"] == "Apply"))
        .collect();
    managed.push(entry);
    result["metadata"]["managedFields"] = Value::Array(managed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: PatchKind, target: Value, patch: Value, expected: Value) {
        let mut t = target;
        kind.apply_to(&mut t, &patch);
        assert_eq!(t, expected);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        check(
            PatchKind::Merge,
            json!({"a": "b"}),
            json!({"a": "c"}),
            json!({"a": "c"}),
        );
        check(
            PatchKind::Merge,
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        );
        check(
            PatchKind::Merge,
            json!({"a": "b"}),
            json!({"a": null}),
            json!({}),
        );
        check(
            PatchKind::Merge,
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        );
        check(
            PatchKind::Merge,
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        );
        check(
            PatchKind::Merge,
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        );
        check(
            PatchKind::Merge,
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        );
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let target = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "y:2"}, {"name": "c", "image": "z"}]}});
        let expected = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}, {"name": "c", "image": "z"}]}});
        check(PatchKind::Strategic, target, patch, expected);
        check(
            PatchKind::Strategic,
            json!({"args": ["a"]}),
            json!({"args": ["b"]}),
            json!({"args": ["b"]}),
        );
        check(
            PatchKind::Strategic,
            json!({"a": 1}),
            json!({"a": null}),
            json!({}),
        );
    }

    #[test]
    fn apply_creates_updates_and_records_the_manager() {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let created = server_side_apply(None, &applied, "consonant-relayer", "now");
        assert_eq!(created["data"]["k"], "v");
        assert_eq!(
            created["metadata"]["managedFields"][0]["manager"],
            "consonant-relayer"
        );
        let again = server_side_apply(
            Some(&created),
            &json!({"data": {"x": "y"}}),
            "consonant-relayer",
            "later",
        );
        assert_eq!(again["data"], json!({"k": "v", "x": "y"}));
        assert_eq!(
            again["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json")
                .unwrap_err()
                .code,
            415
        );
        assert!(PatchKind::Apply
            .parse_body(b"metadata:\n  name: a\n")
            .is_ok());
    }
}
