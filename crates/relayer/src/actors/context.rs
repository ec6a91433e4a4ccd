//! `RelayContext`: everything the actors share that must outlive any one of
//! them — configuration, identity, the outbox (replay buffer and sequence
//! counter), the dedup cache, credentials, metrics, the status board, the
//! directory of current actor addresses, and the link status `/health`
//! reports. Created once per process; every actor factory gets an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::directory::Directory;
use super::ledger::CommandLedger;
use crate::commands::dedup::DedupCache;
use crate::commands::policy::CommandPolicy;
use crate::commands::rate::CommandRateLimiter;
use crate::commands::signature::{ClusterLock, ReplayGuard};
use crate::commands::validate::ValidationLimits;
use crate::config::RelayerConfig;
use crate::connection::channel::Endpoints;
use crate::connection::frame_limit::FrameLimit;
use crate::connection::outbox_handle::OutboxHandle;
use crate::credentials::CredentialStore;
use crate::kube::actions::Executor;
use crate::metrics::Metrics;
use crate::observability::CommandTracing;
use crate::supervisor::StatusBoard;
use crate::telemetry::IngestSink;

/// Who this process is, as `Hello` says it.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// New UUID on every process start.
    pub incarnation: String,
    /// The pod name when known (`POD_NAME`), else the host name.
    pub instance_id: String,
    pub version: &'static str,
}

impl Identity {
    pub fn for_this_process() -> Self {
        let instance_id = std::env::var("POD_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        Self {
            incarnation: uuid::Uuid::new_v4().to_string(),
            instance_id,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// The stream as `/health` reports it; written only by the ConnectionActor.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub state: String,
    pub connected: bool,
    pub cluster_id: Option<String>,
    pub session_id: Option<String>,
    pub last_error: Option<String>,
    /// The backend refused us in a way retrying alone will not fix
    /// (credentials, protocol version) or the breaker is open.
    pub failing_hard: bool,
    pub breaker: String,
    pub consecutive_failures: u32,
    pub endpoint: String,
    pub tls: bool,
    /// The proxy the current endpoint is reached through (redacted).
    pub proxy: Option<String>,
}

impl LinkStatus {
    fn initial(endpoint: &str, tls: bool) -> Self {
        Self {
            state: "Idle".to_string(),
            connected: false,
            cluster_id: None,
            session_id: None,
            last_error: None,
            failing_hard: false,
            breaker: "closed".to_string(),
            consecutive_failures: 0,
            endpoint: endpoint.to_string(),
            tls,
            proxy: None,
        }
    }
}

pub struct RelayContext {
    pub config: Arc<RelayerConfig>,
    pub identity: Identity,
    /// Every backend endpoint and the current one (failover).
    pub endpoints: Endpoints,
    pub outbox: OutboxHandle,
    /// Dedup, the in-flight gauges and every command's owed answer.
    pub ledger: Arc<CommandLedger>,
    /// Manifests validated at once off the actors' thread: one, so
    /// validation never takes both cores from heartbeats and telemetry.
    pub validation_slots: Arc<tokio::sync::Semaphore>,
    pub credentials: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    pub board: StatusBoard,
    pub directory: Directory,
    pub link: RwLock<LinkStatus>,
    /// Set when `backend.tls_verify = false`: shown in every `/health`.
    pub insecure_warning: Option<String>,
    /// The Kubernetes executor once its client is built (kept across
    /// WorkloadExecutor restarts), and why it is not, if it failed.
    pub kube: RwLock<Option<Arc<Executor>>>,
    pub kube_error: RwLock<Option<String>>,
    /// Cancel tokens of the Kubernetes commands running now, by command id.
    pub running: Mutex<HashMap<String, CancellationToken>>,
    /// The command policy, the rate limiter (its tokens survive a router
    /// restart, so a crash loop cannot reset the limit) and validation limits.
    pub policy: CommandPolicy,
    /// The cluster lock: `verify_keys` and `signed_actions`.
    pub lock: ClusterLock,
    pub rate: CommandRateLimiter,
    pub limits: ValidationLimits,
    /// The OTLP receivers' sink (coalescer and counters), made by the first
    /// TelemetryIngest and kept across its restarts.
    pub telemetry: Arc<IngestSink>,
    /// This replica holds the leader Lease (`Hello.leader`); always true when
    /// `kubernetes.leader_election` is off and Kubernetes is on.
    pub leader: AtomicBool,
    /// Whether each command gets its own exported span (`[tracing]`).
    pub command_tracing: CommandTracing,
    /// Largest frame either side takes: `connection.max_frame_bytes`, lowered
    /// to `Welcome.max_frame_bytes` when the backend announces less.
    pub frame_limit: FrameLimit,
}

impl std::fmt::Debug for RelayContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayContext")
            .field("identity", &self.identity)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl RelayContext {
    /// Fails when the `[commands]` policy or rate limit cannot be built; the
    /// message names the key.
    pub fn new(
        config: RelayerConfig,
        endpoints: Endpoints,
        credentials: Arc<CredentialStore>,
    ) -> Result<Self, String> {
        let policy = CommandPolicy::from_config(&config.commands)?;
        let lock = ClusterLock::from_config(&config.commands)?;
        let rate = CommandRateLimiter::from_config(&config.commands)?;
        let max_frame = config.connection.max_frame_bytes as usize;
        let limits = ValidationLimits {
            max_manifest_bytes: max_frame,
            max_log_bytes: max_frame.saturating_sub(8 * 1024) as u32,
        };
        let metrics = Arc::new(Metrics::new());
        let outbox = OutboxHandle::new(
            config.connection.replay_buffer_bytes as usize,
            metrics.clone(),
        );
        let dedup = DedupCache::new(
            config.commands.dedup_retention,
            config.commands.dedup_max_entries as usize,
            usize::try_from(config.commands.dedup_max_bytes).unwrap_or(usize::MAX),
        );
        let replay = ReplayGuard::new(config.commands.dedup_max_entries as usize);
        let ledger = Arc::new(CommandLedger::new(
            dedup,
            replay,
            outbox.clone(),
            metrics.clone(),
        ));
        let dialer = endpoints.current();
        let insecure_warning = (!config.backend.tls_verify && dialer.is_tls()).then(|| {
            format!(
                "backend.tls_verify is false: the backend's certificate at {} is NOT verified, so anyone on the network path can impersonate it; set backend.tls_verify = true (and backend.ca_file for a private CA)",
                dialer.uri()
            )
        });
        let link = LinkStatus::initial(dialer.uri(), dialer.is_tls());
        let leader = config.kubernetes.enabled && !config.kubernetes.leader_election;
        let config_tracing_endpoint = config.tracing.otlp_endpoint.clone();
        let frame_limit = FrameLimit::new(max_frame);
        let telemetry = Arc::new(IngestSink::new(
            &config.telemetry,
            outbox.clone(),
            frame_limit.clone(),
        ));
        Ok(Self {
            config: Arc::new(config),
            identity: Identity::for_this_process(),
            endpoints,
            outbox,
            ledger,
            validation_slots: Arc::new(tokio::sync::Semaphore::new(1)),
            credentials,
            metrics,
            board: StatusBoard::new(),
            directory: Directory::default(),
            link: RwLock::new(link),
            insecure_warning,
            kube: RwLock::new(None),
            kube_error: RwLock::new(None),
            running: Mutex::new(HashMap::new()),
            leader: AtomicBool::new(leader),
            policy,
            lock,
            rate,
            limits,
            telemetry,
            command_tracing: CommandTracing::new(!config_tracing_endpoint.is_empty()),
            frame_limit,
        })
    }

    /// The frame size limit now in force (see [`RelayContext::frame_limit`]).
    pub fn max_frame_bytes(&self) -> usize {
        self.frame_limit.get()
    }

    /// The heartbeat interval this relayer announces in `Hello`.
    pub fn heartbeat_interval(&self) -> Duration {
        self.config.connection.heartbeat_interval
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A `RelayContext` for actor tests: no backend, credentials in a temp dir.
    use super::*;

    pub(crate) fn context(mut config: RelayerConfig) -> (Arc<RelayContext>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("clusterId"), "cls_unit").unwrap();
        std::fs::write(dir.path().join("clusterToken"), "unit-token-unit-token").unwrap();
        config.credentials.cluster_id_file = dir.path().join("clusterId");
        config.credentials.cluster_token_file = dir.path().join("clusterToken");
        let dialer = crate::connection::channel::Dialer::new(
            "http://127.0.0.1:9",
            false,
            &config.backend,
            &config.connection,
            &crate::egress::EgressRoute::direct(),
        )
        .unwrap();
        let credentials = Arc::new(CredentialStore::new(&config.credentials));
        let endpoints = Endpoints::new(vec![dialer]);
        (
            Arc::new(RelayContext::new(config, endpoints, credentials).expect("test config")),
            dir,
        )
    }
}
