//! A cluster's token and its rotation (`POST .../rotate`, sent to the
//! relayer as `RotateCredentials`): the old token stays valid until the new
//! one is used once.

use rand::distr::{Alphanumeric, SampleString};

use super::registry::ClusterError;
use super::DevBackendState;
use consonant_proto::{self as proto, backend_frame::Body as Out};
use consonant_secret::Secret;

/// A cluster's token, and during a rotation the new one. The old token
/// stays valid until the new one is used once; then only the new one is.
#[derive(Debug)]
pub(crate) struct Credentials {
    current: Secret,
    rotated_to: Option<Secret>,
}

impl Credentials {
    pub(crate) fn new(token: Secret) -> Self {
        Self {
            current: token,
            rotated_to: None,
        }
    }

    /// True when `presented` is valid; using the rotated token completes
    /// the rotation.
    pub(crate) fn check(&mut self, presented: &str) -> bool {
        if let Some(next) = &self.rotated_to {
            if tokens_equal(next.expose(), presented) {
                self.current = self.rotated_to.take().unwrap_or_default();
                return true;
            }
        }
        tokens_equal(self.current.expose(), presented)
    }

    /// Starts a rotation and returns the new token.
    fn rotate(&mut self) -> Secret {
        let token = new_token();
        self.rotated_to = Some(token.clone());
        token
    }
}

/// A fresh cluster token: 48 random alphanumerics.
pub(crate) fn new_token() -> Secret {
    Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 48))
}

/// Compares tokens without stopping at the first differing byte, so the
/// time taken does not tell how much of a guess was right.
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl DevBackendState {
    /// Starts a credential rotation; returns the new token and how many
    /// sessions were told.
    pub fn rotate(&self, cluster_id: &str) -> Result<(Secret, usize), ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let mut inner = cluster.inner.lock();
        if inner.revoked {
            return Err(ClusterError::Revoked(cluster_id.to_string()));
        }
        let token = inner.credentials.rotate();
        let frame = proto::BackendFrame {
            body: Some(Out::RotateCredentials(proto::RotateCredentials {
                cluster_token: token.expose().to_string(),
            })),
        };
        let told = inner.sessions.send_to_all(&frame);
        tracing::info!(cluster_id, sessions = told, "credentials rotation started");
        Ok((token, told))
    }

    /// Sends `RotateCredentials` with exactly `token` to every session of
    /// the cluster without adopting it — what a buggy or hostile backend
    /// does; for tests of the relayer's defences. Returns how many sessions
    /// were told.
    pub fn send_rotation_unchecked(
        &self,
        cluster_id: &str,
        token: &str,
    ) -> Result<usize, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        let frame = proto::BackendFrame {
            body: Some(Out::RotateCredentials(proto::RotateCredentials {
                cluster_token: token.to_string(),
            })),
        };
        Ok(inner.sessions.send_to_all(&frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_token_until_the_new_one_is_used() {
        let mut creds = Credentials::new(Secret::new("old"));
        let new = creds.rotate();
        assert!(creds.check("old"));
        assert!(creds.check(new.expose()));
        assert!(!creds.check("old"));
        assert!(creds.check(new.expose()));
        assert!(new_token().expose().len() >= 32);
    }
}
