//! Writing a rotated cluster token back into the cluster Secret
//! (`credentials.secret_name`), so a restarted relayer — and the mounted
//! files, once kubelet syncs them — use the new token.
//!
//! The write is a JSON merge patch of `data.clusterToken` alone, with field
//! manager `consonant-relayer`: it needs only `patch` on that one Secret
//! (RBAC by resourceNames), never creates it, and leaves `clusterId` and
//! the labels alone. A server-side apply of only that key by the same field
//! manager that applied the whole Secret at registration would make a real
//! API server *remove* `clusterId` and the labels (fields a manager stops
//! applying are deleted), so apply is not used here.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::namespace;
use crate::backoff::Backoff;
use crate::config::CredentialsConfig;
use consonant_secret::Secret;

pub const FIELD_MANAGER: &str = "consonant-relayer";
pub const TOKEN_KEY: &str = "clusterToken";
/// Attempts per write; transient failures (5xx, 429, network) are retried.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error(
        "credentials.secret_name is empty, so there is no Secret to write the rotated token to"
    )]
    NoSecret,
    #[error("cannot build a Kubernetes client to write Secret {secret}: {detail}")]
    Client { secret: String, detail: String },
    #[error("cannot patch Secret {secret}: {detail}; {fix}")]
    Patch {
        secret: String,
        detail: String,
        fix: &'static str,
    },
}

/// Where the token goes: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTarget {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Secret from `credentials.secret_name` in `credentials.secret_namespace`
/// (else `POD_NAMESPACE`, the ServiceAccount's namespace, the client's
/// default namespace).
pub fn target(
    cfg: &CredentialsConfig,
    client: &kube::Client,
) -> Result<SecretTarget, WriteBackError> {
    if cfg.secret_name.is_empty() {
        return Err(WriteBackError::NoSecret);
    }
    let namespace = namespace::resolve(&cfg.secret_namespace)
        .map(|r| r.namespace)
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok(SecretTarget {
        namespace,
        name: cfg.secret_name.clone(),
    })
}

/// Patches `data.clusterToken` of `target` to `token`, retrying transient
/// failures with backoff.
pub async fn write_token(
    client: kube::Client,
    target: &SecretTarget,
    token: &Secret,
) -> Result<(), WriteBackError> {
    let api: Api<KubeSecret> = Api::namespaced(client, &target.namespace);
    let patch = json!({
        "data": {TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(token.expose())}
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match api
            .patch(&target.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let (transient, detail, fix) = classify(&err);
        if !transient || attempt >= ATTEMPTS {
            return Err(WriteBackError::Patch {
                secret: target.to_string(),
                detail,
                fix,
            });
        }
        let delay = backoff.next_delay();
        tracing::debug!(attempt, %detail, retry_in_ms = delay.as_millis() as u64, secret = %target, "patching the cluster Secret failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

fn classify(err: &kube::Error) -> (bool, String, &'static str) {
    match err {
        kube::Error::Api(status) => {
            let detail = format!("{} {}: {}", status.code, status.reason, status.message);
            let fix = match status.code {
                403 => "the relayer's Role needs get and patch on this Secret (resourceNames: [<fullname>-cluster])",
                404 => "the Secret (or namespace) does not exist: check credentials.secret_name / credentials.secret_namespace, or run `consonant-relayer register`",
                _ => "see the API server's message",
            };
            (status.code == 429 || status.code >= 500, detail, fix)
        }
        other => (
            true,
            crate::error_chain::error_chain(other),
            "check that the Kubernetes API is reachable from the relayer",
        ),
    }
}
