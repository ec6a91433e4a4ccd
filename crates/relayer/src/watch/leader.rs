//! Leader election on a coordination.k8s.io Lease, so that one replica of the
//! relayer does the singleton work (watching and reporting cluster events).
//!
//! Built on `kube-lease-manager`. Conventions:
//!
//! - The Lease is named `"<credentials.secret_name or cluster.name>-leader"`
//!   ([`lease_name`]) and lives in the relayer's namespace.
//! - The holder renews the Lease when a third of its duration is left (the
//!   grace period is a third of the duration), so clocks may be skewed by up
//!   to that much between nodes.
//! - [`LeaderElection::stop`] releases the Lease: another replica takes over
//!   at once. A replica that dies without releasing is replaced after the
//!   lease duration.
//! - Any error talking to the API server makes this replica step down
//!   (leader = false) until it has checked the Lease again: it can no longer
//!   prove that it still holds it.
//!
//! The ServiceAccount needs `get`, `create`, `update` and `patch` on
//! `leases.coordination.k8s.io` in that namespace.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backoff::Backoff;

/// The shortest lease duration accepted: the grace period (a third) must be
/// at least one whole second.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);
/// How long [`LeaderElection::stop`] waits for the API server to release the Lease.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Lease name: `"<secret_name>-leader"`, or `"<cluster_name>-leader"`
/// when `secret_name` is empty, lower-cased with characters that a Kubernetes
/// name may not hold replaced by `-`.
pub fn lease_name(secret_name: &str, cluster_name: &str) -> String {
    let base = if secret_name.trim().is_empty() {
        cluster_name
    } else {
        secret_name
    };
    let base: String = base
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if base.is_empty() {
        "consonant-relayer-leader".to_string()
    } else {
        format!("{base}-leader")
    }
}

/// Why leader election could not start (or, in logs, why a check failed).
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leader election lease duration {duration:?} is too short: use at least {MIN_LEASE_DURATION:?} \
         (whole seconds; the renewal grace period is a third of it)"
    )]
    DurationTooShort { duration: Duration },

    #[error("leader election identity is empty: set the pod name (POD_NAME) or a host name")]
    EmptyIdentity,

    #[error(
        "the ServiceAccount may not get/create/update Leases in {namespace}: grant coordination.k8s.io \
         leases (get, create, update, patch) there, or set [kubernetes].leader_election = false \
         (Lease {lease}: {message})"
    )]
    Forbidden {
        namespace: String,
        lease: String,
        message: String,
    },

    #[error(
        "the Kubernetes API failed on Lease {namespace}/{lease}: {source}; check that the API server \
         is reachable and the namespace exists"
    )]
    Kube {
        namespace: String,
        lease: String,
        #[source]
        source: kube::Error,
    },

    #[error("leader election on Lease {namespace}/{lease} failed: {source}")]
    Lease {
        namespace: String,
        lease: String,
        #[source]
        source: LeaseManagerError,
    },
}

impl LeaderError {
    fn new(namespace: &str, lease: &str, error: LeaseManagerError) -> Self {
        let (namespace, lease) = (namespace.to_string(), lease.to_string());
        match error {
            LeaseManagerError::KubeError(kube::Error::Api(status)) if status.is_forbidden() => {
                LeaderError::Forbidden {
                    namespace,
                    lease,
                    message: status.message,
                }
            }
            LeaseManagerError::KubeError(source) => LeaderError::Kube {
                namespace,
                lease,
                source,
            },
            source => LeaderError::Lease {
                namespace,
                lease,
                source,
            },
        }
    }
}

/// The lease timing for `duration`: whole seconds, grace a third of it.
fn lease_params(identity: &str, duration: Duration) -> Result<LeaseParams, LeaderError> {
    if identity.trim().is_empty() {
        return Err(LeaderError::EmptyIdentity);
    }
    let seconds = duration.as_secs();
    if seconds < MIN_LEASE_DURATION.as_secs() {
        return Err(LeaderError::DurationTooShort { duration });
    }
    Ok(LeaseParams::new(identity, seconds, seconds / 3))
}

/// Where the Lease is and who campaigns for it.
#[derive(Clone)]
struct Campaign {
    client: Client,
    namespace: String,
    lease: String,
    params: LeaseParams,
    /// The lease duration in whole seconds.
    duration_secs: u64,
}

impl Campaign {
    /// Reads the Lease, creating it if missing.
    async fn manager(&self) -> Result<LeaseManager, LeaderError> {
        LeaseManager::new(
            self.client.clone(),
            &self.lease,
            &self.namespace,
            self.params.clone(),
            LeaseCreateMode::AutoCreate,
        )
        .await
        .map_err(|e| LeaderError::new(&self.namespace, &self.lease, e))
    }
}

/// A running campaign for the Lease. [`LeaderElection::stop`] releases the
/// Lease and waits for that; dropping it cancels the campaign, which then
/// releases in the background while the runtime lives.
pub struct LeaderElection {
    leader: watch::Receiver<bool>,
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElection {
    /// Reads (or creates) the Lease `namespace/lease_name` and starts
    /// campaigning for it in the background as `identity` (unique per
    /// replica, e.g. the pod name). Not yet leader on return: watch
    /// [`subscribe`](Self::subscribe).
    pub async fn start(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Result<Self, LeaderError> {
        let campaign = Campaign {
            client,
            namespace: namespace.to_string(),
            lease: lease_name.to_string(),
            params: lease_params(identity, lease_duration)?,
            duration_secs: lease_duration.as_secs(),
        };
        let manager = campaign.manager().await?;
        let (tx, leader) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(campaign, manager, tx, stop.clone()));
        Ok(Self {
            leader,
            stop: stop.drop_guard(),
            task,
        })
    }

    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// A receiver that sees every change of leadership; `false` at the end.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops campaigning and releases the Lease (waiting at most
    /// [`RELEASE_TIMEOUT`] for the API server) so another replica takes over
    /// at once.
    pub async fn stop(self) {
        let Self { stop, task, .. } = self;
        drop(stop); // cancels the token
        if let Err(error) = task.await {
            tracing::warn!(%error, "leader election task ended abnormally");
        }
    }
}

/// Campaigns until `stop`, publishing leadership on `tx`, then releases.
async fn run(
    campaign: Campaign,
    mut manager: LeaseManager,
    tx: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let ceiling = Duration::from_secs((campaign.duration_secs / 3).max(1));
    let mut backoff = Backoff::new(Duration::from_millis(500), ceiling);
    'campaign: loop {
        let changed = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = manager.changed() => changed,
        };
        match changed {
            Ok(leader) => {
                backoff.reset();
                tracing::info!(lease = %campaign.lease, leader, "leadership changed");
                tx.send_replace(leader);
            }
            Err(error) => {
                let error = LeaderError::new(&campaign.namespace, &campaign.lease, error);
                let was_leader = tx.send_replace(false);
                tracing::warn!(%error, was_leader, "Lease check failed; not leader until it succeeds");
                // The manager may still believe it holds the Lease: start over
                // with a fresh one, which re-reads the Lease.
                loop {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break 'campaign,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    let fresh = tokio::select! {
                        biased;
                        () = stop.cancelled() => break 'campaign,
                        fresh = campaign.manager() => fresh,
                    };
                    match fresh {
                        Ok(fresh) => {
                            manager = fresh;
                            break;
                        }
                        Err(error) => tracing::warn!(%error, "Lease still unavailable"),
                    }
                }
            }
        }
    }
    tx.send_replace(false);
    match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
        Ok(Ok(())) => tracing::info!(lease = %campaign.lease, "Lease released"),
        Ok(Err(error)) => tracing::warn!(
            error = %LeaderError::new(&campaign.namespace, &campaign.lease, error),
            "could not release the Lease; another replica takes over when it expires"
        ),
        Err(_) => tracing::warn!(
            lease = %campaign.lease,
            "releasing the Lease timed out; another replica takes over when it expires"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_name_prefers_the_secret_name() {
        for (secret, cluster, want) in [
            ("relayer-creds", "prod-eu", "relayer-creds-leader"),
            ("", "prod-eu", "prod-eu-leader"),
            ("  ", "Prod EU_1", "prod-eu-1-leader"),
            ("", "", "consonant-relayer-leader"),
            ("", "-edge-", "edge-leader"),
        ] {
            assert_eq!(lease_name(secret, cluster), want, "{secret:?} {cluster:?}");
        }
    }

    #[test]
    fn lease_params_need_an_identity_and_three_seconds() {
        assert!(matches!(
            lease_params("", Duration::from_secs(15)),
            Err(LeaderError::EmptyIdentity)
        ));
        let short = lease_params("pod-0", Duration::from_millis(2_900)).unwrap_err();
        assert!(short.to_string().contains("at least 3s"), "{short}");
        assert!(lease_params("pod-0", Duration::from_secs(3)).is_ok());
        assert!(lease_params("pod-0", Duration::from_secs(15)).is_ok());
    }

    #[test]
    fn forbidden_says_what_to_grant() {
        let status = kube::core::Status::failure("leases is forbidden", "Forbidden").with_code(403);
        let error = LeaderError::new(
            "consonant",
            "prod-leader",
            LeaseManagerError::KubeError(kube::Error::Api(Box::new(status))),
        );
        let text = error.to_string();
        assert!(matches!(error, LeaderError::Forbidden { .. }));
        assert!(
            text.contains("may not get/create/update Leases in consonant"),
            "{text}"
        );
        assert!(text.contains("grant coordination.k8s.io leases"), "{text}");
    }
}
