//! Resolving `apiVersion` + `kind` to an API resource through discovery,
//! cached. A kind that is not in the cache is looked up again every time, so
//! a CRD installed after start is found without a restart.

use std::collections::HashMap;

use ::kube::core::GroupVersionKind;
use ::kube::discovery::{ApiCapabilities, ApiResource, Scope};
use parking_lot::RwLock;

use super::errors::from_kube;
use crate::commands::outcome::CommandError;

#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

#[derive(Default)]
pub struct Resolver {
    cache: RwLock<HashMap<(String, String), Resolved>>,
}

/// `"apps/v1"` → `("apps", "v1")`, `"v1"` → `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

impl Resolver {
    pub async fn resolve(
        &self,
        client: &::kube::Client,
        api_version: &str,
        kind: &str,
    ) -> Result<Resolved, CommandError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(hit) = self.cache.read().get(&key) {
            return Ok(hit.clone());
        }
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps): (ApiResource, ApiCapabilities) = ::kube::discovery::pinned_kind(client, &gvk)
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
    use super::split_api_version;

    #[test]
    fn api_versions_split_into_group_and_version() {
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(split_api_version("v1"), ("", "v1"));
        assert_eq!(
            split_api_version("kagent.dev/v1alpha2"),
            ("kagent.dev", "v1alpha2")
        );
    }
}
