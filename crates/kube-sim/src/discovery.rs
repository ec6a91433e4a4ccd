//! Discovery documents: `/version`, `/api`, `/apis` and the resource lists
//! at `/api/v1` and `/apis/{group}/{version}`, built from the registry.

use serde_json::{json, Value};

use super::resources::{Registry, ResourceType, Subresource};

/// `/version` for a given `gitVersion` such as `v1.32.3`.
pub(crate) fn version(git_version: &str) -> Value {
    let trimmed = git_version.trim_start_matches('v');
    let mut parts = trimmed.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("32");
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
}

/// `/apis`: every named group.
pub(crate) fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`: one group, or None when it is not served.
pub(crate) fn group(registry: &Registry, group: &str) -> Option<Value> {
    let (name, versions) = registry.groups().into_iter().find(|(g, _)| g == group)?;
    let mut entry = group_entry(&name, &versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

fn verbs(rt: &ResourceType) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| rt.kind != "Node" || !matches!(*v, "create" | "delete" | "deletecollection"))
    .collect()
}

fn subresource_entry(rt: &ResourceType, sub: Subresource) -> Value {
    let name = format!("{}/{}", rt.plural, sub.name());
    match sub {
        Subresource::Status => {
            json!({"name": name, "singularName": "", "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        }
        Subresource::Scale => json!({"name": name, "singularName": "", "namespaced": rt.namespaced,
            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
        Subresource::Log => json!({"name": name, "singularName": "", "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": ["get"]}),
    }
}

/// `/api/v1` or `/apis/{group}/{version}`, or None when nothing is served there.
pub(crate) fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in &types {
        let mut entry = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs(rt),
        });
        if !rt.short_names.is_empty() {
            entry["shortNames"] = json!(rt.short_names);
        }
        resources.push(entry);
        for sub in &rt.subresources {
            resources.push(subresource_entry(rt, *sub));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let registry = Registry::with_builtins();
        assert_eq!(version("v1.32.3")["minor"], "32");
        let apps = resource_list(&registry, "apps", "v1").unwrap();
        let names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"deployments")
                && names.contains(&"deployments/scale")
                && names.contains(&"deployments/status")
        );
        let core = resource_list(&registry, "", "v1").unwrap();
        assert!(core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/log"));
        assert!(group_list(&registry)["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "batch"));
        assert!(resource_list(&registry, "nope", "v1").is_none());
        assert!(group(&registry, "apps").is_some());
    }
}
