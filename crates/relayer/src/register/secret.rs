//! The cluster Secret as `register` sees it: is the cluster registered
//! already (both keys present), can the hook write the Secret (a server-side
//! dry run before the single-use token is spent), writing `clusterId` and
//! `clusterToken` with the chart's labels by server-side apply (field
//! manager `consonant-relayer`), and deleting the bootstrap Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::body::Registration;
use super::error::RegisterError;
use crate::backoff::Backoff;

/// The field manager of every write the relayer makes to the Secret.
pub const FIELD_MANAGER: &str = "consonant-relayer";
pub const ID_KEY: &str = "clusterId";
pub const TOKEN_KEY: &str = "clusterToken";

/// Writes after registration are retried this many times (the token is
/// spent by then, so giving up early would lose the credentials).
const WRITE_ATTEMPTS: u32 = 6;

/// The Secret `<fullname>-cluster` in its namespace.
pub struct ClusterSecret {
    api: Api<KubeSecret>,
    client: kube::Client,
    name: String,
    namespace: String,
}

impl ClusterSecret {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            client,
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// `namespace/name`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The cluster id when the Secret exists and holds both keys, non-empty.
    pub async fn registered_id(&self) -> Result<Option<String>, RegisterError> {
        let secret = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|err| kube_error("get", &self.describe(), &err))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let value = |key: &str| -> Option<String> {
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
            let string_data = || {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.trim().to_string())
            };
            data.or_else(string_data).filter(|v| !v.is_empty())
        };
        Ok(match (value(ID_KEY), value(TOKEN_KEY)) {
            (Some(id), Some(_)) => Some(id),
            _ => None,
        })
    }

    /// A server-side dry run of the write, so missing RBAC fails before the
    /// backend spends the single-use bootstrap token.
    pub async fn check_writable(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RegisterError> {
        let placeholder = Registration {
            cluster_id: "cls_dry_run".into(),
            cluster_token: crate::credentials::Secret::new("dry-run"),
        };
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = true;
        self.api
            .patch(
                &self.name,
                &params,
                &Patch::Apply(self.manifest(&placeholder, labels)),
            )
            .await
            .map(|_| ())
            .map_err(|err| kube_error("write (server-side dry run of)", &self.describe(), &err))
    }

    /// Writes both keys and the labels; retries transient failures with
    /// backoff.
    pub async fn write(
        &self,
        registration: &Registration,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RegisterError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let manifest = Patch::Apply(self.manifest(registration, labels));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.api.patch(&self.name, &params, &manifest).await {
                Ok(_) => return Ok(()),
                Err(err) if attempt < WRITE_ATTEMPTS && transient(&err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt, error = %short(&err), retry_in_ms = delay.as_millis() as u64, secret = %self.describe(), "writing the cluster Secret failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    let cause = kube_error("write", &self.describe(), &err);
                    return Err(RegisterError::Kubernetes(format!(
                        "the cluster registered as {} but its credentials could not be stored: {cause}; the bootstrap token is spent, so after fixing this remove the cluster in the backend and register again with a new bootstrap token",
                        registration.cluster_id
                    )));
                }
            }
        }
    }

    fn manifest(
        &self,
        registration: &Registration,
        labels: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let b64 = |value: &str| base64::engine::general_purpose::STANDARD.encode(value);
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels},
            "data": {
                ID_KEY: b64(&registration.cluster_id),
                TOKEN_KEY: b64(registration.cluster_token.expose()),
            },
        })
    }

    /// Deletes the Secret `name` in this namespace; `Ok(false)` when it was
    /// already gone.
    pub async fn delete_other(&self, name: &str) -> Result<bool, RegisterError> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(kube_error(
                "delete the bootstrap",
                &format!("{}/{name}", self.namespace),
                &err,
            )),
        }
    }
}

fn transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

fn short(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => crate::error_chain::error_chain(other),
    }
}

/// One line: what failed on which Secret, and what to grant or check.
fn kube_error(verb: &str, secret: &str, err: &kube::Error) -> RegisterError {
    let fix = match err {
        kube::Error::Api(status) if status.code == 403 => {
            "the hook's ServiceAccount lacks RBAC: its Role needs get and patch on this Secret (resourceNames), create on secrets, and get and delete on the bootstrap Secret when --delete-bootstrap-secret is used (docs/register.md, \"RBAC\")"
        }
        kube::Error::Api(status) if status.code == 404 => {
            "check that the namespace exists (--namespace, credentials.secret_namespace, POD_NAMESPACE)"
        }
        kube::Error::Api(_) => "see the API server's message",
        _ => "check that the Kubernetes API is reachable from this pod (in-cluster ServiceAccount, or kubernetes.kubeconfig / KUBECONFIG)",
    };
    RegisterError::Kubernetes(format!(
        "cannot {verb} Secret {secret}: {}; {fix}",
        short(err)
    ))
}
