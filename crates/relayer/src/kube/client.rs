//! Building the Kubernetes client: `kubernetes.kubeconfig` when set, else
//! in-cluster configuration, then `KUBECONFIG`, then `~/.kube/config`
//! (`kube::Config::infer`).
//!
//! The Kubernetes API is always reached directly. kube-rs takes
//! `HTTPS_PROXY` from the environment for a kubeconfig-based client (and
//! then cannot build one without its proxy feature); but in a cluster whose
//! egress goes through a proxy that variable is meant for the backend
//! (docs/egress.md), never for the API server. So a proxy that came from
//! the environment is dropped, and one a kubeconfig names itself
//! (`proxy-url`) is refused with a message that says so.

use crate::config::KubernetesConfig;

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("cannot read kubernetes.kubeconfig {path}: {source}; fix the path or leave it empty to use the in-cluster ServiceAccount")]
    Kubeconfig {
        path: String,
        source: ::kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration found ({0}): run in a pod with a ServiceAccount, set KUBECONFIG, or set kubernetes.kubeconfig")]
    Infer(::kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Build(::kube::Error),
    #[error("the kubeconfig names proxy-url {0} for the Kubernetes API; the relayer reaches the API server directly (proxies are for the backend: backend.proxy): remove proxy-url")]
    KubeconfigProxy(String),
}

pub async fn connect(cfg: &KubernetesConfig) -> Result<::kube::Client, KubeClientError> {
    let config = if cfg.kubeconfig.is_empty() {
        ::kube::Config::infer()
            .await
            .map_err(KubeClientError::Infer)?
    } else {
        let kubeconfig =
            ::kube::config::Kubeconfig::read_from(&cfg.kubeconfig).map_err(|source| {
                KubeClientError::Kubeconfig {
                    path: cfg.kubeconfig.clone(),
                    source,
                }
            })?;
        ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|source| KubeClientError::Kubeconfig {
                path: cfg.kubeconfig.clone(),
                source,
            })?
    };
    let mut config = without_environment_proxy(config, |var| std::env::var(var).ok())?;
    // kube's own retry sends writes again after a 503/504, when they may
    // have taken effect; ours repeats only what cannot have (kube/retry.rs).
    // Retry needs a service it can call again: the Buffer makes the boxed
    // stack cloneable, as kube's documentation does.
    config.default_retry = false;
    let builder =
        ::kube::client::ClientBuilder::try_from(config).map_err(KubeClientError::Build)?;
    let safe_retry = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(super::retry::SafeRetry::new()))
        .layer(tower::buffer::BufferLayer::new(1024));
    Ok(builder.with_layer(&safe_retry).build())
}

/// Drops a proxy kube-rs took from `HTTPS_PROXY`/`https_proxy`; refuses one
/// the kubeconfig named.
fn without_environment_proxy(
    mut config: ::kube::Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<::kube::Config, KubeClientError> {
    let Some(proxy) = config.proxy_url.take() else {
        return Ok(config);
    };
    let from_environment = ["HTTPS_PROXY", "https_proxy"]
        .into_iter()
        .filter_map(&env)
        .any(|value| value.trim().parse::<http::Uri>().ok().as_ref() == Some(&proxy));
    if from_environment {
        tracing::debug!("the Kubernetes API is reached directly; HTTPS_PROXY is for the backend");
        return Ok(config);
    }
    let shown = crate::config::redact::redact_url_password(&proxy.to_string())
        .unwrap_or_else(|| proxy.to_string());
    Err(KubeClientError::KubeconfigProxy(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(proxy: Option<&str>) -> ::kube::Config {
        let mut config = ::kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.proxy_url = proxy.map(|p| p.parse().unwrap());
        config
    }

    #[test]
    fn the_api_server_is_always_direct() {
        let env = |var: &str| (var == "HTTPS_PROXY").then(|| "http://proxy.corp:3128".to_string());
        let dropped =
            without_environment_proxy(config(Some("http://proxy.corp:3128")), env).unwrap();
        assert!(dropped.proxy_url.is_none());
        assert!(without_environment_proxy(config(None), env)
            .unwrap()
            .proxy_url
            .is_none());
        let error = without_environment_proxy(config(Some("http://u:pw@other:8080")), env)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("proxy-url http://u:***@other:8080"),
            "{error}"
        );
    }

    /// Against an API server that answers 504 (its own request timeout,
    /// after which the write may still land) or 429 (flow control, before
    /// anything is handled): the client sends a read again after a 504, a
    /// write again only after a 429, and a write answered 504 once only.
    #[tokio::test]
    async fn the_client_repeats_only_requests_that_cannot_have_taken_effect() {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        use axum::http::{Method, StatusCode};
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Api, Patch, PatchParams};

        // Per (method, name): the statuses to answer in turn, then 200.
        type Script = Arc<Mutex<HashMap<(Method, String), Vec<u16>>>>;
        let script: Script = Arc::new(Mutex::new(HashMap::from([
            ((Method::GET, "read".to_string()), vec![504, 503, 429]),
            ((Method::PATCH, "timed-out".to_string()), vec![504]),
            ((Method::PATCH, "unavailable".to_string()), vec![503]),
            ((Method::PATCH, "throttled".to_string()), vec![429]),
        ])));
        let seen: Arc<Mutex<Vec<(Method, String)>>> = Arc::default();
        let (script_at_server, seen_at_server) = (script.clone(), seen.clone());
        let app = axum::Router::new().fallback(move |method: Method, uri: axum::http::Uri| {
            let (script, seen) = (script_at_server.clone(), seen_at_server.clone());
            async move {
                let name = uri.path().rsplit('/').next().unwrap_or_default().to_string();
                seen.lock().unwrap().push((method.clone(), name.clone()));
                let next = script
                    .lock()
                    .unwrap()
                    .get_mut(&(method, name.clone()))
                    .and_then(|statuses| (!statuses.is_empty()).then(|| statuses.remove(0)));
                match next {
                    Some(code) => (
                        StatusCode::from_u16(code).unwrap(),
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":0}"#.to_string(),
                    ),
                    None => (
                        StatusCode::OK,
                        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default"}}}}"#),
                    ),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://{addr}\"}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: default}}}}]\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        let client = connect(&KubernetesConfig {
            kubeconfig: kubeconfig.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
        let maps: Api<ConfigMap> = Api::namespaced(client, "default");
        let patch = |name: &'static str| {
            let maps = maps.clone();
            async move {
                maps.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({})),
                )
                .await
            }
        };

        assert!(
            maps.get("read").await.is_ok(),
            "a read is retried through 504, 503, 429"
        );
        assert!(patch("timed-out").await.is_err());
        assert!(patch("unavailable").await.is_err());
        assert!(
            patch("throttled").await.is_ok(),
            "a throttled write is retried"
        );

        let count = |method: Method, name: &str| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(m, n)| *m == method && n == name)
                .count()
        };
        assert_eq!(count(Method::GET, "read"), 4);
        assert_eq!(
            count(Method::PATCH, "timed-out"),
            1,
            "a write answered 504 is sent once"
        );
        assert_eq!(
            count(Method::PATCH, "unavailable"),
            1,
            "a write answered 503 is sent once"
        );
        assert_eq!(count(Method::PATCH, "throttled"), 2);
    }
}
