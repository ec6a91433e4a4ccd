//! The open sessions of each cluster: where commands go (the newest leader,
//! never a draining session), and what goes to all of them at once
//! (`Drain`, `CancelCommand`, the end of every stream).

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;
use tonic::Status;

use super::registry::ClusterError;
use super::{rfc3339, DevBackendState};
use consonant_proto::{self as proto, backend_frame::Body as Out};

/// The outbound half of one session's stream.
pub(crate) type FrameSender = mpsc::UnboundedSender<Result<proto::BackendFrame, Status>>;

/// One connected stream.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: Arc<str>,
    pub(crate) instance_id: String,
    pub(crate) incarnation: Arc<str>,
    pub(crate) leader: bool,
    pub(crate) connected_since: SystemTime,
    pub(crate) last_heartbeat: Option<SystemTime>,
    /// `Drain` was sent: no new commands go to this session.
    pub(crate) draining: bool,
    pub(crate) tx: FrameSender,
}

/// One session in `GET /api/v1/clusters`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub instance_id: String,
    pub incarnation: String,
    pub session_id: String,
    pub leader: bool,
    pub connected_since: String,
    pub last_heartbeat: Option<String>,
}

/// The routing fields of the session commands go to.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) session_id: Arc<str>,
    pub(crate) incarnation: Arc<str>,
    pub(crate) tx: FrameSender,
}

/// A cluster's open sessions, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Vec<Session>,
    /// The most recent `Hello`, for tests and debugging.
    last_hello: Option<proto::Hello>,
}

impl Sessions {
    pub(crate) fn add(&mut self, session: Session) {
        self.open.push(session);
    }

    pub(crate) fn remove(&mut self, session_id: &str) {
        self.open.retain(|s| &*s.id != session_id);
    }

    pub(crate) fn record_hello(&mut self, hello: &proto::Hello) {
        self.last_hello = Some(hello.clone());
    }

    pub(crate) fn heard_from(&mut self, session_id: &str) {
        if let Some(s) = self.open.iter_mut().find(|s| &*s.id == session_id) {
            s.last_heartbeat = Some(SystemTime::now());
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// True when a session of `incarnation` is open.
    pub(crate) fn is_live(&self, incarnation: &str) -> bool {
        self.open.iter().any(|s| &*s.incarnation == incarnation)
    }

    /// Where commands go: the newest leader session if any, else the
    /// newest session; never one that is draining.
    pub(crate) fn command_target(&self) -> Option<Target> {
        let open = || self.open.iter().rev().filter(|s| !s.draining);
        open()
            .find(|s| s.leader)
            .or_else(|| open().next())
            .map(|s| Target {
                session_id: s.id.clone(),
                incarnation: s.incarnation.clone(),
                tx: s.tx.clone(),
            })
    }

    /// Sends `frame` on every session; returns how many took it.
    pub(crate) fn send_to_all(&self, frame: &proto::BackendFrame) -> usize {
        self.open
            .iter()
            .filter(|s| s.tx.send(Ok(frame.clone())).is_ok())
            .count()
    }

    /// Sends `Drain` on every session and sends them no more commands;
    /// returns how many took it.
    fn drain(&mut self, drain: &proto::BackendFrame) -> usize {
        let mut told = 0;
        for session in &mut self.open {
            // A draining session gets no new commands; they wait for the next one.
            session.draining = true;
            told += usize::from(session.tx.send(Ok(drain.clone())).is_ok());
        }
        told
    }

    /// Ends every session's stream with `status` and forgets them; returns
    /// how many streams were still open.
    pub(crate) fn end_all(&mut self, status: &Status) -> usize {
        let status = || Status::new(status.code(), status.message().to_string());
        self.open
            .drain(..)
            .filter(|s| s.tx.send(Err(status())).is_ok())
            .count()
    }

    pub(crate) fn views(&self) -> Vec<SessionView> {
        self.open
            .iter()
            .map(|s| SessionView {
                instance_id: s.instance_id.clone(),
                incarnation: s.incarnation.to_string(),
                session_id: s.id.to_string(),
                leader: s.leader,
                connected_since: rfc3339(s.connected_since),
                last_heartbeat: s.last_heartbeat.map(rfc3339),
            })
            .collect()
    }
}

impl DevBackendState {
    /// The last `Hello` a session of this cluster sent.
    pub fn last_hello(&self, cluster_id: &str) -> Option<proto::Hello> {
        self.cluster(cluster_id)
            .ok()?
            .inner
            .lock()
            .sessions
            .last_hello
            .clone()
    }

    /// Sends `Drain` on every session; returns how many got it.
    pub fn drain(&self, cluster_id: &str, reconnect_after_ms: u32) -> Result<usize, ClusterError> {
        let frame = proto::BackendFrame {
            body: Some(Out::Drain(proto::Drain {
                reason: "requested by admin".into(),
                reconnect_after_ms,
            })),
        };
        let cluster = self.cluster(cluster_id)?;
        let told = cluster.inner.lock().sessions.drain(&frame);
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
        let told = cluster.inner.lock().sessions.send_to_all(&frame);
        Ok(told)
    }

    /// Ends every open stream with `status`; returns how many.
    pub fn end_all_streams(&self, status: &Status) -> usize {
        self.clusters
            .all()
            .iter()
            .map(|cluster| cluster.inner.lock().sessions.end_all(status))
            .sum()
    }
}
