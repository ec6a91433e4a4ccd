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
    let config = without_environment_proxy(config, |var| std::env::var(var).ok())?;
    ::kube::Client::try_from(config).map_err(KubeClientError::Build)
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
}
