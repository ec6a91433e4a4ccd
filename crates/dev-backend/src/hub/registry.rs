//! The registered clusters by id: lookup, pre-registered clusters, the
//! listing of `GET /api/v1/clusters`, and revocation.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use tonic::Status;

use super::cluster::Cluster;
use super::credentials::Credentials;
use super::sessions::SessionView;
use super::DevBackendState;
use consonant_secret::Secret;

/// Errors naming the cluster they are about.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0:?} is not registered with this backend; list clusters with GET /api/v1/clusters")]
    Unknown(String),
    #[error("cluster {0:?} was revoked; register it again to get new credentials")]
    Revoked(String),
}

/// `GET /api/v1/clusters` entry.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub name: String,
    pub connected: bool,
    pub revoked: bool,
    pub pending_commands: usize,
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_id: RwLock<HashMap<Arc<str>, Arc<Cluster>>>,
}

impl Registry {
    fn get(&self, cluster_id: &str) -> Result<Arc<Cluster>, ClusterError> {
        self.by_id
            .read()
            .get(cluster_id)
            .cloned()
            .ok_or_else(|| ClusterError::Unknown(cluster_id.to_string()))
    }

    /// A snapshot, so that cluster locks are taken after the registry's
    /// lock is released.
    pub(crate) fn all(&self) -> Vec<Arc<Cluster>> {
        self.by_id.read().values().cloned().collect()
    }

    /// Adds a cluster unless another one is called `name`; false when the
    /// name is taken.
    pub(crate) fn insert_named(&self, cluster_id: &str, name: &str, token: Secret) -> bool {
        let mut clusters = self.by_id.write();
        if clusters.values().any(|c| c.inner.lock().name == name) {
            return false;
        }
        let id: Arc<str> = Arc::from(cluster_id);
        clusters.insert(
            id.clone(),
            Arc::new(Cluster::new(id, name.to_string(), token)),
        );
        true
    }
}

impl DevBackendState {
    pub(crate) fn cluster(&self, cluster_id: &str) -> Result<Arc<Cluster>, ClusterError> {
        self.clusters.get(cluster_id)
    }

    /// Adds (or replaces the token of) a pre-registered cluster; its name is its id.
    pub fn add_cluster(&self, cluster_id: &str, token: Secret) {
        let mut clusters = self.clusters.by_id.write();
        if let Some(cluster) = clusters.get(cluster_id) {
            let mut inner = cluster.inner.lock();
            inner.credentials = Credentials::new(token);
            inner.revoked = false;
            return;
        }
        let id: Arc<str> = Arc::from(cluster_id);
        clusters.insert(
            id.clone(),
            Arc::new(Cluster::new(id, cluster_id.to_string(), token)),
        );
    }

    /// All clusters with their sessions (`GET /api/v1/clusters`).
    pub fn list_clusters(&self) -> Vec<ClusterView> {
        let mut views: Vec<ClusterView> = self
            .clusters
            .all()
            .iter()
            .map(|cluster| {
                let inner = cluster.inner.lock();
                ClusterView {
                    cluster_id: cluster.id.to_string(),
                    name: inner.name.clone(),
                    connected: !inner.sessions.is_empty(),
                    revoked: inner.revoked,
                    pending_commands: inner.commands.pending_len(),
                    sessions: inner.sessions.views(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Revokes a cluster: its streams end with PERMISSION_DENIED and new
    /// ones are refused. Returns how many streams were ended.
    pub fn revoke(&self, cluster_id: &str) -> Result<usize, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let mut inner = cluster.inner.lock();
        inner.revoked = true;
        let ended = inner.sessions.end_all(&Status::permission_denied(format!(
            "cluster {cluster_id} was revoked by the backend"
        )));
        tracing::info!(cluster_id, sessions = ended, "cluster revoked");
        Ok(ended)
    }
}
