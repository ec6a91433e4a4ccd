//! The shared in-memory backend: clusters (each behind one short mutex
//! around its `state.rs` bookkeeping and its sessions' outbound channels),
//! fault switches and counters. Both servers (`grpc.rs`, `admin.rs`) and
//! in-process users (tests, benches, `demo`) go through `DevBackendState`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use super::otlp::OtlpCounts;
use super::state::{
    self, BootstrapRefusal, BootstrapTokens, CommandBook, CommandState, Credentials, Dedup,
    FrameKind, FrameLog, FrameRecord, ResultOutcome, TelemetryCounters,
};
use consonant_proto::{self as proto, backend_frame::Body as Out, relayer_frame::Body as In};
use consonant_secret::Secret;

/// Completed commands kept per cluster (older ones are forgotten).
const MAX_COMPLETED_COMMANDS: usize = 100_000;
/// Reliable frames kept per cluster for the `/frames` debug endpoint.
const MAX_FRAME_LOG: usize = 200_000;
/// Cluster events kept per cluster.
const MAX_EVENTS: usize = 10_000;

/// The outbound half of one session's stream.
pub(crate) type FrameSender = mpsc::UnboundedSender<Result<proto::BackendFrame, Status>>;

/// Errors naming the cluster they are about.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {0:?} is not registered with this backend; list clusters with GET /api/v1/clusters")]
    Unknown(String),
    #[error("cluster {0:?} was revoked; register it again to get new credentials")]
    Revoked(String),
}

/// Why a registration failed (maps onto the HTTP statuses of protocol.md).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the bootstrap token is missing or not accepted by this backend")]
    WrongBootstrapToken,
    #[error("the bootstrap token was used already; bootstrap tokens are single-use")]
    BootstrapTokenUsed,
    #[error("{0}")]
    InvalidName(String),
    #[error("cluster name {0:?} is taken by another cluster")]
    NameTaken(String),
}

/// Fault injection for tests (not part of the contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Faults {
    /// Receive and dedup frames but send no `Ack`.
    pub withhold_acks: bool,
    /// Send no heartbeats and no acks, keep reading.
    pub silent: bool,
    /// Refuse every new `Connect` with this status.
    pub reject_all: Option<RejectCode>,
}

/// Statuses `Faults::reject_all` can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectCode {
    Unauthenticated,
    Unavailable,
    ResourceExhausted,
}

impl RejectCode {
    fn code(self) -> Code {
        match self {
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Unavailable => Code::Unavailable,
            Self::ResourceExhausted => Code::ResourceExhausted,
        }
    }
}

/// A partial update of `Faults`: absent fields keep their value;
/// `reject_all: null` clears it; `end_streams: true` ends all open streams
/// with UNAVAILABLE once.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    #[serde(default)]
    pub withhold_acks: Option<bool>,
    #[serde(default)]
    pub silent: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    pub reject_all: Option<Option<RejectCode>>,
    #[serde(default)]
    pub end_streams: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<RejectCode>>, D::Error> {
    Option::<RejectCode>::deserialize(d).map(Some)
}

/// Process-wide counters (`GET /api/v1/debug/stats`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connect_attempts: AtomicU64,
    pub connects_refused: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub frames_received: AtomicU64,
    pub duplicate_frames: AtomicU64,
    pub acks_sent: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub commands_submitted: AtomicU64,
    pub commands_sent: AtomicU64,
    pub results_received: AtomicU64,
    pub telemetry_decode_errors: AtomicU64,
}

/// A snapshot of `Stats` plus live gauges.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub connect_attempts: u64,
    pub connects_refused: u64,
    pub sessions_started: u64,
    pub sessions_ended: u64,
    pub sessions_open: u64,
    pub frames_received: u64,
    pub duplicate_frames: u64,
    pub acks_sent: u64,
    pub heartbeats_sent: u64,
    pub commands_submitted: u64,
    pub commands_sent: u64,
    pub results_received: u64,
    pub telemetry_decode_errors: u64,
}

/// One connected stream.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: Arc<str>,
    pub instance_id: String,
    pub incarnation: Arc<str>,
    pub leader: bool,
    pub connected_since: SystemTime,
    pub last_heartbeat: Option<SystemTime>,
    /// `Drain` was sent: no new commands go to this session.
    pub draining: bool,
    pub tx: FrameSender,
}

/// Everything about one cluster, guarded by `Cluster::inner`.
#[derive(Debug)]
pub(crate) struct ClusterInner {
    pub name: String,
    pub credentials: Credentials,
    pub revoked: bool,
    pub sessions: Vec<Session>,
    pub commands: CommandBook,
    pub dedup: Dedup,
    pub frames: FrameLog,
    pub events: VecDeque<proto::ClusterEvent>,
    pub telemetry: TelemetryCounters,
    pub dropped_by_incarnation: HashMap<Arc<str>, u64>,
    /// The most recent `Hello`, for tests and debugging.
    pub last_hello: Option<proto::Hello>,
}

impl ClusterInner {
    fn new(name: String, token: Secret) -> Self {
        Self {
            name,
            credentials: Credentials::new(token),
            revoked: false,
            sessions: Vec::new(),
            commands: CommandBook::new(MAX_COMPLETED_COMMANDS),
            dedup: Dedup::default(),
            frames: FrameLog::new(MAX_FRAME_LOG),
            events: VecDeque::new(),
            telemetry: TelemetryCounters::default(),
            dropped_by_incarnation: HashMap::new(),
            last_hello: None,
        }
    }

    /// Where commands go: the newest leader session if any, else the
    /// newest session; never one that is draining.
    fn command_target(&self) -> Option<Target> {
        let open = || self.sessions.iter().rev().filter(|s| !s.draining);
        open()
            .find(|s| s.leader)
            .or_else(|| open().next())
            .map(|s| Target {
                session_id: s.id.clone(),
                incarnation: s.incarnation.clone(),
                tx: s.tx.clone(),
            })
    }

    /// Sends `target` every command due on it: queued, unacknowledged, or
    /// accepted by an incarnation that is no longer connected.
    fn send_due_commands(&mut self, target: &Target, stats: &Stats) -> usize {
        let live: Vec<Arc<str>> = self
            .sessions
            .iter()
            .map(|s| s.incarnation.clone())
            .collect();
        let due = self
            .commands
            .due_on_session(&target.incarnation, |inc| live.iter().any(|l| &**l == inc));
        for id in &due {
            self.send_command(id, &target.tx, stats);
        }
        due.len()
    }

    /// Writes the command `id` to `tx` and marks it sent.
    fn send_command(&mut self, id: &str, tx: &FrameSender, stats: &Stats) {
        if let Some(command) = self.commands.mark_sent(id) {
            let frame = proto::BackendFrame {
                body: Some(Out::Command(command.clone())),
            };
            if tx.send(Ok(frame)).is_ok() {
                stats.commands_sent.fetch_add(1, Relaxed);
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Cluster {
    pub id: Arc<str>,
    pub inner: Mutex<ClusterInner>,
}

/// The routing fields of the session commands go to.
#[derive(Debug)]
struct Target {
    session_id: Arc<str>,
    incarnation: Arc<str>,
    tx: FrameSender,
}

/// What `start_session` hands the gRPC layer.
pub(crate) struct SessionStart {
    pub cluster: Arc<Cluster>,
    pub session_id: Arc<str>,
    pub incarnation: Arc<str>,
}

/// What one received frame asks the session loop to do.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameEffect {
    /// A reliable frame arrived: an ack is due.
    pub ack_due: bool,
    /// It was a duplicate: repeat the ack even if it did not move.
    pub duplicate: bool,
}

/// The in-memory backend shared by the servers and in-process users.
#[derive(Debug)]
pub struct DevBackendState {
    clusters: RwLock<HashMap<Arc<str>, Arc<Cluster>>>,
    bootstrap: Mutex<BootstrapTokens>,
    withhold_acks: AtomicBool,
    silent: AtomicBool,
    /// 0 = none, else `RejectCode` index + 1.
    reject_all: AtomicU8,
    /// Set by shutdown: every new `Connect` gets UNAVAILABLE.
    stopping: AtomicBool,
    pub(crate) stats: Stats,
}

impl DevBackendState {
    pub(crate) fn new(bootstrap_tokens: Vec<Secret>) -> Self {
        Self {
            clusters: RwLock::new(HashMap::new()),
            bootstrap: Mutex::new(BootstrapTokens::new(bootstrap_tokens)),
            withhold_acks: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            reject_all: AtomicU8::new(0),
            stopping: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    pub(crate) fn cluster(&self, cluster_id: &str) -> Result<Arc<Cluster>, ClusterError> {
        self.clusters
            .read()
            .get(cluster_id)
            .cloned()
            .ok_or_else(|| ClusterError::Unknown(cluster_id.to_string()))
    }

    // ------------------------------------------------------------ registration

    /// Registers a cluster without a bootstrap token (in-process use).
    pub fn register_cluster(&self, name: &str) -> Result<(String, Secret), RegisterError> {
        self.register(None, name)
    }

    /// Registration as `POST /api/v1/clusters` does it. `bootstrap` is the
    /// bearer presented; `None` skips the check (in-process callers).
    pub(crate) fn register(
        &self,
        bootstrap: Option<Option<&str>>,
        name: &str,
    ) -> Result<(String, Secret), RegisterError> {
        let mut tokens = self.bootstrap.lock();
        let index = match bootstrap {
            Some(presented) => tokens.check(presented).map_err(|refusal| match refusal {
                BootstrapRefusal::Wrong => RegisterError::WrongBootstrapToken,
                BootstrapRefusal::Used => RegisterError::BootstrapTokenUsed,
            })?,
            None => None,
        };
        state::validate_cluster_name(name).map_err(RegisterError::InvalidName)?;
        let mut clusters = self.clusters.write();
        if clusters.values().any(|c| c.inner.lock().name == name) {
            return Err(RegisterError::NameTaken(name.to_string()));
        }
        let (id, token) = (state::new_cluster_id(), state::new_token());
        let id_arc: Arc<str> = Arc::from(id.as_str());
        clusters.insert(
            id_arc.clone(),
            Arc::new(Cluster {
                id: id_arc,
                inner: Mutex::new(ClusterInner::new(name.to_string(), token.clone())),
            }),
        );
        tokens.consume(index);
        tracing::info!(cluster_id = %id, name, "cluster registered");
        Ok((id, token))
    }

    /// Adds (or replaces the token of) a pre-registered cluster; its name is its id.
    pub fn add_cluster(&self, cluster_id: &str, token: Secret) {
        let mut clusters = self.clusters.write();
        if let Some(cluster) = clusters.get(cluster_id) {
            let mut inner = cluster.inner.lock();
            inner.credentials = Credentials::new(token);
            inner.revoked = false;
            return;
        }
        let id: Arc<str> = Arc::from(cluster_id);
        clusters.insert(
            id.clone(),
            Arc::new(Cluster {
                id,
                inner: Mutex::new(ClusterInner::new(cluster_id.to_string(), token)),
            }),
        );
    }

    /// All clusters with their sessions (`GET /api/v1/clusters`).
    pub fn list_clusters(&self) -> Vec<ClusterView> {
        let clusters: Vec<Arc<Cluster>> = self.clusters.read().values().cloned().collect();
        let mut views: Vec<ClusterView> = clusters
            .iter()
            .map(|cluster| {
                let inner = cluster.inner.lock();
                ClusterView {
                    cluster_id: cluster.id.to_string(),
                    name: inner.name.clone(),
                    connected: !inner.sessions.is_empty(),
                    revoked: inner.revoked,
                    pending_commands: inner.commands.pending_len(),
                    sessions: inner
                        .sessions
                        .iter()
                        .map(|s| SessionView {
                            instance_id: s.instance_id.clone(),
                            incarnation: s.incarnation.to_string(),
                            session_id: s.id.to_string(),
                            leader: s.leader,
                            connected_since: rfc3339(s.connected_since),
                            last_heartbeat: s.last_heartbeat.map(rfc3339),
                        })
                        .collect(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    // ------------------------------------------------------------ commands

    /// Queues a command (sent at once when a session is connected) and
    /// returns a receiver for its final result. An empty `command_id` gets
    /// a UUID (read it back from the result).
    pub fn submit_command(
        &self,
        cluster_id: &str,
        command: proto::Command,
    ) -> Result<oneshot::Receiver<proto::CommandResult>, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.submit(cluster_id, command, Some(tx))?;
        Ok(rx)
    }

    /// Queues a command; returns its id.
    pub fn submit(
        &self,
        cluster_id: &str,
        command: proto::Command,
        waiter: Option<oneshot::Sender<proto::CommandResult>>,
    ) -> Result<String, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let mut inner = cluster.inner.lock();
        if inner.revoked {
            return Err(ClusterError::Revoked(cluster_id.to_string()));
        }
        let (id, fresh) = inner.commands.submit(command, waiter, SystemTime::now());
        if fresh {
            self.stats.commands_submitted.fetch_add(1, Relaxed);
            if let Some(target) = inner.command_target() {
                inner.send_command(&id, &target.tx, &self.stats);
            }
        }
        Ok(id.to_string())
    }

    /// The last `Hello` a session of this cluster sent.
    pub fn last_hello(&self, cluster_id: &str) -> Option<proto::Hello> {
        self.cluster(cluster_id)
            .ok()?
            .inner
            .lock()
            .last_hello
            .clone()
    }

    /// Forgets a command entirely (as a backend that lost its state would).
    pub fn forget_command(&self, cluster_id: &str, command_id: &str) {
        if let Ok(cluster) = self.cluster(cluster_id) {
            cluster.inner.lock().commands.forget(command_id);
        }
    }

    /// One command's state and result.
    pub fn command(
        &self,
        cluster_id: &str,
        command_id: &str,
    ) -> Result<Option<CommandView>, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        Ok(inner.commands.get(command_id).map(|record| CommandView {
            command_id: record.id.to_string(),
            action: record.action(),
            state: record.state,
            attempts: record.attempts,
            submitted_at: rfc3339(record.submitted_at),
            result: record.result.clone(),
        }))
    }

    /// The last `limit` cluster events, newest last.
    pub fn events(
        &self,
        cluster_id: &str,
        limit: usize,
    ) -> Result<Vec<proto::ClusterEvent>, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        let skip = inner.events.len().saturating_sub(limit);
        Ok(inner.events.iter().skip(skip).cloned().collect())
    }

    /// Telemetry counted from decoded OTLP.
    pub fn telemetry(&self, cluster_id: &str) -> Result<TelemetryCounters, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        let mut counters = inner.telemetry;
        counters.dropped_reported = inner.dropped_by_incarnation.values().sum();
        Ok(counters)
    }

    /// Reliable frames in arrival order and the duplicate count (debug).
    pub fn frames(&self, cluster_id: &str) -> Result<FramesView, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        Ok(FramesView {
            frames: inner.frames.iter().cloned().collect(),
            duplicates: inner.dedup.duplicates(),
        })
    }

    // ------------------------------------------------------------ control

    /// Sends `Drain` on every session; returns how many got it.
    pub fn drain(&self, cluster_id: &str, reconnect_after_ms: u32) -> Result<usize, ClusterError> {
        let frame = proto::BackendFrame {
            body: Some(Out::Drain(proto::Drain {
                reason: "requested by admin".into(),
                reconnect_after_ms,
            })),
        };
        let cluster = self.cluster(cluster_id)?;
        let mut inner = cluster.inner.lock();
        let mut told = 0;
        for session in &mut inner.sessions {
            // A draining session gets no new commands; they wait for the next one.
            session.draining = true;
            told += usize::from(session.tx.send(Ok(frame.clone())).is_ok());
        }
        Ok(told)
    }

    /// Sends `CancelCommand` for `command_id` on every session; returns how
    /// many got it. (In-process API; the admin HTTP API has no cancel.)
    pub fn cancel(&self, cluster_id: &str, command_id: &str) -> Result<usize, ClusterError> {
        let frame = proto::BackendFrame {
            body: Some(Out::Cancel(proto::CancelCommand {
                command_id: command_id.to_string(),
            })),
        };
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        Ok(inner
            .sessions
            .iter()
            .filter(|session| session.tx.send(Ok(frame.clone())).is_ok())
            .count())
    }

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
        let told = inner
            .sessions
            .iter()
            .filter(|s| s.tx.send(Ok(frame.clone())).is_ok())
            .count();
        tracing::info!(cluster_id, sessions = told, "credentials rotation started");
        Ok((token, told))
    }

    /// Revokes a cluster: its streams end with PERMISSION_DENIED and new
    /// ones are refused. Returns how many streams were ended.
    pub fn revoke(&self, cluster_id: &str) -> Result<usize, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let mut inner = cluster.inner.lock();
        inner.revoked = true;
        let status = || {
            Status::permission_denied(format!("cluster {cluster_id} was revoked by the backend"))
        };
        let ended = inner
            .sessions
            .drain(..)
            .filter(|s| s.tx.send(Err(status())).is_ok())
            .count();
        tracing::info!(cluster_id, sessions = ended, "cluster revoked");
        Ok(ended)
    }

    /// Ends every open stream with `status`; returns how many.
    pub fn end_all_streams(&self, status: &Status) -> usize {
        let clusters: Vec<Arc<Cluster>> = self.clusters.read().values().cloned().collect();
        clusters
            .iter()
            .map(|cluster| {
                let mut inner = cluster.inner.lock();
                let status = || Status::new(status.code(), status.message().to_string());
                inner
                    .sessions
                    .drain(..)
                    .filter(|s| s.tx.send(Err(status())).is_ok())
                    .count()
            })
            .sum()
    }

    /// Refuses new streams and ends the open ones with UNAVAILABLE.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Relaxed);
        self.end_all_streams(&Status::unavailable("the backend is shutting down"));
    }

    // ------------------------------------------------------------ faults and stats

    pub fn faults(&self) -> Faults {
        let reject_all = match self.reject_all.load(Relaxed) {
            1 => Some(RejectCode::Unauthenticated),
            2 => Some(RejectCode::Unavailable),
            3 => Some(RejectCode::ResourceExhausted),
            _ => None,
        };
        Faults {
            withhold_acks: self.withhold_acks.load(Relaxed),
            silent: self.silent.load(Relaxed),
            reject_all,
        }
    }

    /// Applies a partial fault update and returns the faults now in force.
    pub fn set_faults(&self, update: FaultsUpdate) -> Faults {
        if let Some(value) = update.withhold_acks {
            self.withhold_acks.store(value, Relaxed);
        }
        if let Some(value) = update.silent {
            self.silent.store(value, Relaxed);
        }
        if let Some(reject) = update.reject_all {
            let code = match reject {
                None => 0,
                Some(RejectCode::Unauthenticated) => 1,
                Some(RejectCode::Unavailable) => 2,
                Some(RejectCode::ResourceExhausted) => 3,
            };
            self.reject_all.store(code, Relaxed);
        }
        if update.end_streams == Some(true) {
            let ended = self.end_all_streams(&Status::unavailable(
                "stream ended by fault injection (end_streams)",
            ));
            tracing::info!(sessions = ended, "fault injection ended all streams");
        }
        let faults = self.faults();
        tracing::info!(?faults, "faults updated");
        faults
    }

    pub(crate) fn acks_enabled(&self) -> bool {
        !self.withhold_acks.load(Relaxed) && !self.silent.load(Relaxed)
    }

    pub(crate) fn heartbeats_enabled(&self) -> bool {
        !self.silent.load(Relaxed)
    }

    pub fn stats(&self) -> StatsView {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Relaxed);
        let (started, ended) = (get(&s.sessions_started), get(&s.sessions_ended));
        StatsView {
            connect_attempts: get(&s.connect_attempts),
            connects_refused: get(&s.connects_refused),
            sessions_started: started,
            sessions_ended: ended,
            sessions_open: started.saturating_sub(ended),
            frames_received: get(&s.frames_received),
            duplicate_frames: get(&s.duplicate_frames),
            acks_sent: get(&s.acks_sent),
            heartbeats_sent: get(&s.heartbeats_sent),
            commands_submitted: get(&s.commands_submitted),
            commands_sent: get(&s.commands_sent),
            results_received: get(&s.results_received),
            telemetry_decode_errors: get(&s.telemetry_decode_errors),
        }
    }

    // ------------------------------------------------------------ sessions (gRPC side)

    /// Checks a stream's credentials before `Hello` is read.
    pub(crate) fn authenticate(
        &self,
        cluster_id: &str,
        token: &str,
    ) -> Result<Arc<Cluster>, Status> {
        if self.stopping.load(Relaxed) {
            return Err(Status::unavailable("the backend is shutting down"));
        }
        if let Some(reject) = self.faults().reject_all {
            return Err(Status::new(
                reject.code(),
                "refused by fault injection (reject_all)",
            ));
        }
        let unauthenticated = || {
            Status::unauthenticated(format!(
                "cluster {cluster_id:?} is unknown or its token is wrong; check clusterId and clusterToken"
            ))
        };
        let cluster = self.cluster(cluster_id).map_err(|_| unauthenticated())?;
        let mut inner = cluster.inner.lock();
        if inner.revoked {
            return Err(Status::permission_denied(format!(
                "cluster {cluster_id} was revoked by the backend"
            )));
        }
        if !inner.credentials.check(token) {
            return Err(unauthenticated());
        }
        drop(inner);
        Ok(cluster)
    }

    /// Registers a session after `Hello`, queues `Welcome` and then every
    /// command due on it.
    pub(crate) fn start_session(
        &self,
        cluster: Arc<Cluster>,
        hello: &proto::Hello,
        heartbeat_interval_ms: u32,
        max_frame_bytes: u32,
        tx: FrameSender,
    ) -> Result<SessionStart, Status> {
        let incarnation: Arc<str> = Arc::from(hello.incarnation.as_str());
        let session_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string().as_str());
        let mut inner = cluster.inner.lock();
        if inner.revoked {
            return Err(Status::permission_denied(format!(
                "cluster {} was revoked by the backend",
                cluster.id
            )));
        }
        inner.last_hello = Some(hello.clone());
        let acked_seq = inner.dedup.resume(&incarnation, hello.last_acked_seq);
        if let Some(stats) = &hello.telemetry_stats {
            inner
                .dropped_by_incarnation
                .insert(incarnation.clone(), stats.items_dropped);
        }
        let welcome = proto::Welcome {
            session_id: session_id.to_string(),
            heartbeat_interval_ms,
            acked_seq,
            max_frame_bytes,
        };
        let _ = tx.send(Ok(proto::BackendFrame {
            body: Some(Out::Welcome(welcome)),
        }));
        inner.sessions.push(Session {
            id: session_id.clone(),
            instance_id: hello.instance_id.clone(),
            incarnation: incarnation.clone(),
            leader: hello.leader,
            connected_since: SystemTime::now(),
            last_heartbeat: None,
            draining: false,
            tx: tx.clone(),
        });
        // Queued and unacknowledged commands go to the new session only if
        // it is where commands go now (a standby replica does not get them).
        let resent = match inner.command_target() {
            Some(target) if target.session_id == session_id => {
                inner.send_due_commands(&target, &self.stats)
            }
            _ => 0,
        };
        drop(inner);
        self.stats.sessions_started.fetch_add(1, Relaxed);
        tracing::info!(
            cluster_id = %cluster.id, session_id = %session_id, instance_id = %hello.instance_id,
            incarnation = %incarnation, leader = hello.leader, acked_seq, resent_commands = resent,
            "session started"
        );
        Ok(SessionStart {
            cluster,
            session_id,
            incarnation,
        })
    }

    /// Removes a session (if a revoke or fault did not already).
    pub(crate) fn end_session(&self, session: &SessionStart, reason: &str) {
        let mut inner = session.cluster.inner.lock();
        let was_target = inner
            .command_target()
            .is_some_and(|t| t.session_id == session.session_id);
        inner.sessions.retain(|s| s.id != session.session_id);
        if was_target {
            // Hand what the ended session had not acknowledged to the next
            // target (e.g. a replica that is still connected).
            if let Some(target) = inner.command_target() {
                inner.send_due_commands(&target, &self.stats);
            }
        }
        drop(inner);
        self.stats.sessions_ended.fetch_add(1, Relaxed);
        tracing::info!(
            cluster_id = %session.cluster.id, session_id = %session.session_id,
            incarnation = %session.incarnation, reason, "session ended"
        );
    }

    /// Handles one frame after `Hello`. `counts` is the decoded OTLP of a
    /// telemetry frame (decoded before, outside the lock).
    pub(crate) fn on_frame(
        &self,
        session: &SessionStart,
        frame: proto::RelayerFrame,
        counts: Option<OtlpCounts>,
    ) -> FrameEffect {
        self.stats.frames_received.fetch_add(1, Relaxed);
        let Some(body) = frame.body else {
            return FrameEffect::default();
        };
        let mut inner = session.cluster.inner.lock();
        let reliable = matches!(body, In::Result(_) | In::Event(_) | In::Telemetry(_));
        if reliable && frame.seq > 0 && !inner.dedup.observe(&session.incarnation, frame.seq) {
            self.stats.duplicate_frames.fetch_add(1, Relaxed);
            return FrameEffect {
                ack_due: true,
                duplicate: true,
            };
        }
        let record = |kind, command_id| {
            if frame.seq > 0 {
                Some(FrameRecord {
                    incarnation: session.incarnation.clone(),
                    seq: frame.seq,
                    kind,
                    command_id,
                })
            } else {
                None
            }
        };
        match body {
            In::Hello(_) => {
                tracing::warn!(cluster_id = %session.cluster.id, session_id = %session.session_id, "second Hello on a session ignored");
            }
            In::Heartbeat(_) => {
                if let Some(s) = inner
                    .sessions
                    .iter_mut()
                    .find(|s| s.id == session.session_id)
                {
                    s.last_heartbeat = Some(SystemTime::now());
                }
            }
            In::Accepted(accepted) => {
                if inner
                    .commands
                    .on_accepted(&accepted.command_id, &session.incarnation)
                {
                    drop(inner);
                    tracing::debug!(cluster_id = %session.cluster.id, command_id = %accepted.command_id, "command accepted");
                }
            }
            In::Result(result) => {
                self.stats.results_received.fetch_add(1, Relaxed);
                let command_id = inner.commands.get(&result.command_id).map(|r| r.id.clone());
                let command_id =
                    command_id.unwrap_or_else(|| Arc::from(result.command_id.as_str()));
                let log = record(FrameKind::Result, Some(command_id.clone()));
                if let Some(log) = log {
                    inner.frames.push(log);
                }
                let outcome = inner.commands.on_result(result, Instant::now());
                drop(inner);
                match outcome {
                    ResultOutcome::Completed { action, status } => {
                        tracing::info!(cluster_id = %session.cluster.id, %command_id, action, status = status.as_str_name(), "command");
                    }
                    ResultOutcome::WillRetry { action } => {
                        tracing::info!(cluster_id = %session.cluster.id, %command_id, action, status = "REJECTED (retryable, will re-send)", "command");
                    }
                    ResultOutcome::AlreadyCompleted => {}
                }
            }
            In::Event(event) => {
                if let Some(log) = record(FrameKind::Event, None) {
                    inner.frames.push(log);
                }
                if inner.events.len() == MAX_EVENTS {
                    inner.events.pop_front();
                }
                inner.events.push_back(event);
            }
            In::Telemetry(batch) => {
                if let Some(log) = record(FrameKind::Telemetry, None) {
                    inner.frames.push(log);
                }
                let t = &mut inner.telemetry;
                t.batches += 1;
                t.bytes += batch.otlp.len() as u64;
                if let Some(c) = counts {
                    t.spans += c.spans;
                    t.metric_points += c.metric_points;
                    t.log_records += c.log_records;
                }
            }
        }
        FrameEffect {
            ack_due: reliable,
            duplicate: false,
        }
    }

    /// The cumulative ack for a session's incarnation.
    pub(crate) fn acked(&self, session: &SessionStart) -> u64 {
        session
            .cluster
            .inner
            .lock()
            .dedup
            .acked(&session.incarnation)
    }

    /// Re-sends retryable rejections whose wait is over (to the leader
    /// session, like new commands).
    pub(crate) fn resend_due_retries(&self, session: &SessionStart) {
        let mut inner = session.cluster.inner.lock();
        let due = inner.commands.due_retries(Instant::now());
        if let Some(target) = inner.command_target() {
            for id in due {
                inner.send_command(&id, &target.tx, &self.stats);
            }
        }
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub instance_id: String,
    pub incarnation: String,
    pub session_id: String,
    pub leader: bool,
    pub connected_since: String,
    pub last_heartbeat: Option<String>,
}

/// One command's state (`GET .../commands/{command_id}`).
#[derive(Debug, Clone)]
pub struct CommandView {
    pub command_id: String,
    pub action: &'static str,
    pub state: CommandState,
    pub attempts: u32,
    pub submitted_at: String,
    pub result: Option<proto::CommandResult>,
}

/// The `/frames` debug view.
#[derive(Debug, Clone, Serialize)]
pub struct FramesView {
    pub frames: Vec<FrameRecord>,
    pub duplicates: u64,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
