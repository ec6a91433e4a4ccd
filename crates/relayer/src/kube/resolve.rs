//! Resolving a validated `apiVersion` + `kind` to an API resource through
//! discovery, cached. A kind that is not in the cache is looked up again every
//! time, so a CRD installed after start is found without a restart.

use std::collections::HashMap;

use ::kube::core::GroupVersionKind;
use ::kube::discovery::{ApiCapabilities, ApiResource, Scope};
use parking_lot::RwLock;

use super::errors::from_kube;
use crate::commands::outcome::CommandError;
use crate::commands::validate::ApiVersion;

#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

#[derive(Default)]
pub struct Resolver {
    cache: RwLock<HashMap<(ApiVersion, String), Resolved>>,
}

/// The group/version/kind discovery looks up (the core group is "").
pub fn gvk(api_version: &ApiVersion, kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk(&api_version.group, &api_version.version, kind)
}

impl Resolver {
    pub async fn resolve(
        &self,
        client: &::kube::Client,
        api_version: &ApiVersion,
        kind: &str,
    ) -> Result<Resolved, CommandError> {
        let key = (api_version.clone(), kind.to_string());
        if let Some(hit) = self.cache.read().get(&key) {
            return Ok(hit.clone());
        }
        let wanted = gvk(api_version, kind);
        let (resource, caps): (ApiResource, ApiCapabilities) = ::kube::discovery::pinned_kind(client, &wanted)
            .await
            .map_err(|err| match &err {
                ::kube::Error::Api(status) if status.code == 404 => CommandError::NotFound(format!(
                    "kind {kind} in apiVersion {api_version} is not served by this cluster (is its CRD installed?)"
                )),
                ::kube::Error::Discovery(_) => CommandError::NotFound(format!(
                    "kind {kind} in apiVersion {api_version} is not served by this cluster (is its CRD installed?)"
                )),
                _ => from_kube(&format!("discover {api_version} {kind}"), &err),
            })?;
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.cache.write().insert(key, resolved.clone());
        Ok(resolved)
    }

    pub fn cached(&self) -> usize {
        self.cache.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::gvk;
    use crate::commands::validate::parse_api_version;

    #[test]
    fn api_versions_split_into_group_and_version() {
        fn check(api_version: &str, group: &str, version: &str) {
            let parsed = parse_api_version(api_version).unwrap();
            let gvk = gvk(&parsed, "Kind");
            assert_eq!(
                (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()),
                (group, version, "Kind"),
                "{api_version}"
            );
        }
        check("apps/v1", "apps", "v1");
        check("v1", "", "v1");
        check("kagent.dev/v1alpha2", "kagent.dev", "v1alpha2");
    }
}
