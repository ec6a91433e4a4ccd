//! The table of resource types the simulated API server serves: built-in
//! kinds registered at start and kinds added at run time by
//! CustomResourceDefinitions. Discovery, routing and storage all read it.

use parking_lot::RwLock;
use serde_json::Value;

/// A subresource a resource type answers at `.../{name}/{subresource}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `status`: writes touch only `.status`.
    Status,
    /// `scale`: an `autoscaling/v1` `Scale` view of `.spec.replicas`.
    Scale,
    /// `log`: pod logs (Pods only).
    Log,
}

impl Subresource {
    /// The path segment, e.g. `scale`.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Log => "log",
        }
    }
}

/// One served resource type (one group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name used in URLs, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names advertised in discovery.
    pub short_names: Vec<String>,
    /// Subresources served.
    pub subresources: Vec<Subresource>,
    /// Set for types that came from a CustomResourceDefinition.
    pub from_crd: bool,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            short_names: Vec::new(),
            subresources: Vec::new(),
            from_crd: false,
        }
    }

    fn with(mut self, subresources: &[Subresource], short_names: &[&str]) -> Self {
        self.subresources = subresources.to_vec();
        self.short_names = short_names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key: versions of one group/plural share their objects.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `deployments.apps`, or `pods` for the core group, as the real API
    /// names resources in error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `sub` is served for this type.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The resource types a CustomResourceDefinition object declares (one per
    /// served version), or an error message when it is malformed.
    pub fn from_crd_object(crd: &Value) -> Result<Vec<ResourceType>, String> {
        let spec = crd.get("spec").ok_or("spec is required")?;
        let group = spec["group"].as_str().ok_or("spec.group is required")?;
        let names = &spec["names"];
        let plural = names["plural"]
            .as_str()
            .ok_or("spec.names.plural is required")?;
        let kind = names["kind"]
            .as_str()
            .ok_or("spec.names.kind is required")?;
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let namespaced = spec["scope"].as_str().unwrap_or("Namespaced") == "Namespaced";
        let short_names: Vec<String> = names["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let versions = spec["versions"]
            .as_array()
            .filter(|v| !v.is_empty())
            .ok_or("spec.versions must list at least one version")?;
        let mut out = Vec::new();
        for v in versions {
            let name = v["name"]
                .as_str()
                .ok_or("spec.versions[].name is required")?;
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let mut subresources = Vec::new();
            if v["subresources"].get("status").is_some() {
                subresources.push(Subresource::Status);
            }
            if v["subresources"].get("scale").is_some() {
                subresources.push(Subresource::Scale);
            }
            out.push(ResourceType {
                group: group.to_string(),
                version: name.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: singular.clone(),
                namespaced,
                short_names: short_names.clone(),
                subresources,
                from_crd: true,
            });
        }
        Ok(out)
    }
}

/// The resource types registered when the simulator starts.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    use Subresource::*;
    let b = ResourceType::builtin;
    vec![
        b("", "v1", "Namespace", "namespaces", false).with(&[Status], &["ns"]),
        b("", "v1", "Node", "nodes", false).with(&[Status], &["no"]),
        b("", "v1", "Pod", "pods", true).with(&[Status, Log], &["po"]),
        b("", "v1", "Service", "services", true).with(&[Status], &["svc"]),
        b("", "v1", "ConfigMap", "configmaps", true).with(&[], &["cm"]),
        b("", "v1", "Secret", "secrets", true),
        b("", "v1", "ServiceAccount", "serviceaccounts", true).with(&[], &["sa"]),
        b("", "v1", "Event", "events", true).with(&[], &["ev"]),
        b("apps", "v1", "Deployment", "deployments", true).with(&[Status, Scale], &["deploy"]),
        b("apps", "v1", "StatefulSet", "statefulsets", true).with(&[Status, Scale], &["sts"]),
        b("apps", "v1", "DaemonSet", "daemonsets", true).with(&[Status], &["ds"]),
        b("apps", "v1", "ReplicaSet", "replicasets", true).with(&[Status, Scale], &["rs"]),
        b("batch", "v1", "Job", "jobs", true).with(&[Status], &[]),
        b("coordination.k8s.io", "v1", "Lease", "leases", true),
        b("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        b(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        b(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .with(&[Status], &["crd", "crds"]),
    ]
}

/// The live table of served resource types.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    types: RwLock<Vec<ResourceType>>,
}

impl Registry {
    /// A registry holding the built-in types.
    pub(crate) fn with_builtins() -> Self {
        Registry {
            types: RwLock::new(builtin_types()),
        }
    }

    /// The type served at `group/version/plural`.
    pub(crate) fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Any version of `group/plural` (storage is shared across versions).
    pub(crate) fn lookup_any_version(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .read()
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
    }

    /// The type with `apiVersion` and `kind`, as found in owner references.
    pub(crate) fn lookup_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.types
            .read()
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    /// Groups with their versions, in registration order (core group excluded).
    pub(crate) fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.read().iter().filter(|t| !t.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => {
                    versions.push(t.version.clone())
                }
                Some(_) => {}
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// The types served under one group/version.
    pub(crate) fn in_group_version(&self, group: &str, version: &str) -> Vec<ResourceType> {
        self.types
            .read()
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Adds or replaces the types a CRD declares for `group/plural`.
    pub(crate) fn register_crd(&self, group: &str, plural: &str, types: Vec<ResourceType>) {
        let mut all = self.types.write();
        all.retain(|t| !(t.from_crd && t.group == group && t.plural == plural));
        all.extend(types);
    }

    /// Removes the types of a deleted CRD.
    pub(crate) fn unregister_crd(&self, group: &str, plural: &str) {
        self.types
            .write()
            .retain(|t| !(t.from_crd && t.group == group && t.plural == plural));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_object_yields_one_type_per_served_version() {
        let crd = json!({"spec": {"group": "kagent.dev", "scope": "Namespaced",
            "names": {"plural": "agents", "kind": "Agent"},
            "versions": [{"name": "v1alpha2", "served": true, "subresources": {"status": {}}},
                         {"name": "v1alpha1", "served": false}]}});
        let types = ResourceType::from_crd_object(&crd).unwrap();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].api_version(), "kagent.dev/v1alpha2");
        assert_eq!(types[0].singular, "agent");
        assert!(types[0].has(Subresource::Status));
        let registry = Registry::with_builtins();
        registry.register_crd("kagent.dev", "agents", types);
        assert!(registry
            .lookup("kagent.dev", "v1alpha2", "agents")
            .is_some());
        assert!(registry.groups().iter().any(|(g, _)| g == "kagent.dev"));
        registry.unregister_crd("kagent.dev", "agents");
        assert!(registry
            .lookup("kagent.dev", "v1alpha2", "agents")
            .is_none());
    }
}
