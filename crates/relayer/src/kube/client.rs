//! Building the Kubernetes client: `kubernetes.kubeconfig` when set, else
//! in-cluster configuration, then `KUBECONFIG`, then `~/.kube/config`
//! (`kube::Config::infer`).

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
    ::kube::Client::try_from(config).map_err(KubeClientError::Build)
}
