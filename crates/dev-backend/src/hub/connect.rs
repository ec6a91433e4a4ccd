//! A `Connect` stream's life in the hub: its credentials checked before
//! `Hello`, its session registered after it (`Welcome`, the resumed ack, the
//! commands due) and removed when the stream ends; and no new streams once
//! the backend stops.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use tonic::Status;

use super::cluster::Cluster;
use super::sessions::{FrameSender, Session};
use super::DevBackendState;
use consonant_proto::{self as proto, backend_frame::Body as Out};

/// What `start_session` hands the gRPC layer.
pub(crate) struct SessionStart {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) session_id: Arc<str>,
    pub(crate) incarnation: Arc<str>,
}

impl DevBackendState {
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
        inner.sessions.record_hello(hello);
        let acked_seq = inner.dedup.resume(&incarnation, hello.last_acked_seq);
        if let Some(stats) = &hello.telemetry_stats {
            inner
                .telemetry
                .report_dropped(&incarnation, stats.items_dropped);
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
        inner.sessions.add(Session {
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
        let resent = match inner.sessions.command_target() {
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
            .sessions
            .command_target()
            .is_some_and(|t| t.session_id == session.session_id);
        inner.sessions.remove(&session.session_id);
        if was_target {
            // Hand what the ended session had not acknowledged to the next
            // target (e.g. a replica that is still connected).
            if let Some(target) = inner.sessions.command_target() {
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

    /// Refuses new streams and ends the open ones with UNAVAILABLE.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Relaxed);
        self.end_all_streams(&Status::unavailable("the backend is shutting down"));
    }
}
