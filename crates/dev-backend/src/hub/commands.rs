//! Command queueing and waiting: submission (sent at once to the session
//! commands go to, else queued), the waiters for results, re-sending what an
//! ended session left unacknowledged and retryable rejections whose wait is
//! over, and the per-command view.

mod book;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::cluster::ClusterInner;
use super::connect::SessionStart;
use super::registry::ClusterError;
use super::sessions::{FrameSender, Target};
use super::stats::Stats;
use super::{rfc3339, DevBackendState};
use consonant_proto::{self as proto, backend_frame::Body as Out};

pub use book::CommandState;
pub(crate) use book::{CommandBook, ResultOutcome};

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

impl DevBackendState {
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
        let command = self.signed_if_configured(cluster_id, command);
        let mut inner = cluster.inner.lock();
        if inner.revoked {
            return Err(ClusterError::Revoked(cluster_id.to_string()));
        }
        let (id, fresh) = inner.commands.submit(command, waiter, SystemTime::now());
        if fresh {
            self.stats.commands_submitted.fetch_add(1, Relaxed);
            if let Some(target) = inner.sessions.command_target() {
                inner.send_command(&id, &target.tx, &self.stats);
            }
        }
        Ok(id.to_string())
    }

    /// With `--signing-key`, an unsigned command as its signer would send
    /// it for `cluster_id` (an id and a deadline filled in first: both are
    /// inside the signature). Signed ones, and all without a key, as given.
    fn signed_if_configured(
        &self,
        cluster_id: &str,
        mut command: proto::Command,
    ) -> proto::Command {
        let Some(signer) = &self.signer else {
            return command;
        };
        if command.signed.is_some() {
            return command;
        }
        if command.command_id.is_empty() {
            command.command_id = uuid::Uuid::new_v4().to_string();
        }
        if command.deadline_unix_ms == 0 {
            let deadline = SystemTime::now() + crate::SIGNED_COMMAND_TTL;
            command.deadline_unix_ms = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64);
        }
        signer.sign(&command, cluster_id)
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

    /// Re-sends retryable rejections whose wait is over (to the leader
    /// session, like new commands).
    pub(crate) fn resend_due_retries(&self, session: &SessionStart) {
        let mut inner = session.cluster.inner.lock();
        let due = inner.commands.due_retries(Instant::now());
        if let Some(target) = inner.sessions.command_target() {
            for id in due {
                inner.send_command(&id, &target.tx, &self.stats);
            }
        }
    }
}

impl ClusterInner {
    /// Sends `target` every command due on it: queued, unacknowledged, or
    /// accepted by an incarnation that is no longer connected.
    pub(crate) fn send_due_commands(&mut self, target: &Target, stats: &Stats) -> usize {
        let sessions = &self.sessions;
        let due = self
            .commands
            .due_on_session(&target.incarnation, |inc| sessions.is_live(inc));
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
