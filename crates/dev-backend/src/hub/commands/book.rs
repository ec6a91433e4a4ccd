//! The command book of one cluster, as plain data without I/O: the queue in
//! submission order, at-least-once re-send of what was not acknowledged, the
//! wait after a retryable rejection, results and their waiters, and the
//! bound on completed commands kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::oneshot;

use consonant_proto::{self as proto, command::Action, command_result::Status as ResultStatus};

/// How long a command answered REJECTED + retryable waits before it is sent
/// again on the same session (it is also re-sent on the next session).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandState {
    /// Waiting for a session (or for a retry after a retryable REJECTED).
    Queued,
    /// Written to a session, no `CommandAccepted` yet.
    Sent,
    /// `CommandAccepted` received, no result yet.
    Accepted,
    /// A final `CommandResult` received.
    Completed,
}

/// One command and what the relayer said about it.
#[derive(Debug)]
pub(crate) struct CommandRecord {
    pub(crate) id: Arc<str>,
    command: proto::Command,
    pub(crate) state: CommandState,
    pub(crate) submitted_at: SystemTime,
    /// How many times it was written to a session.
    pub(crate) attempts: u32,
    /// The incarnation that accepted it.
    accepted_by: Option<Arc<str>>,
    /// The final result, or the last retryable rejection while `Queued`.
    pub(crate) result: Option<proto::CommandResult>,
    retry_at: Option<Instant>,
    order: u64,
    waiters: Vec<oneshot::Sender<proto::CommandResult>>,
}

impl CommandRecord {
    /// The action's name; a signed command's is read from inside it.
    pub(crate) fn action(&self) -> &'static str {
        if let (None, Some(signed)) = (&self.command.action, &self.command.signed) {
            use prost::Message as _;
            return proto::Command::decode(signed.command.as_ref())
                .map_or("signed", |inner| action_name(inner.action.as_ref()));
        }
        action_name(self.command.action.as_ref())
    }
}

/// The proto3 JSON name of a command's action.
fn action_name(action: Option<&Action>) -> &'static str {
    match action {
        Some(Action::Ping(_)) => "ping",
        Some(Action::Apply(_)) => "apply",
        Some(Action::Delete(_)) => "delete",
        Some(Action::Get(_)) => "get",
        Some(Action::List(_)) => "list",
        Some(Action::Scale(_)) => "scale",
        Some(Action::Restart(_)) => "restart",
        Some(Action::Logs(_)) => "logs",
        Some(Action::ClusterInfo(_)) => "cluster_info",
        None => "none",
    }
}

/// What a `CommandResult` did to the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResultOutcome {
    /// The command is finished; waiters were answered.
    Completed {
        action: &'static str,
        status: ResultStatus,
    },
    /// REJECTED + retryable: queued again for a later attempt.
    WillRetry { action: &'static str },
    /// The command was finished already (a re-sent result).
    AlreadyCompleted,
}

/// Commands of one cluster: queue, re-send of unacknowledged ones, results.
#[derive(Debug)]
pub(crate) struct CommandBook {
    records: HashMap<Arc<str>, CommandRecord>,
    /// Not completed, in submission order.
    pending: BTreeMap<u64, Arc<str>>,
    /// Completed, oldest first, for eviction beyond `max_completed`.
    completed: VecDeque<Arc<str>>,
    max_completed: usize,
    next_order: u64,
    retrying: usize,
}

impl CommandBook {
    pub(crate) fn new(max_completed: usize) -> Self {
        Self {
            records: HashMap::new(),
            pending: BTreeMap::new(),
            completed: VecDeque::new(),
            max_completed,
            next_order: 0,
            retrying: 0,
        }
    }

    /// Adds a command (an empty `command_id` gets a UUID). Returns its id and
    /// whether it is new; re-submitting a known id only adds the waiter (a
    /// finished command answers it at once).
    pub(crate) fn submit(
        &mut self,
        mut command: proto::Command,
        waiter: Option<oneshot::Sender<proto::CommandResult>>,
        now: SystemTime,
    ) -> (Arc<str>, bool) {
        if command.command_id.is_empty() {
            command.command_id = uuid::Uuid::new_v4().to_string();
        }
        if let Some(record) = self.records.get_mut(command.command_id.as_str()) {
            if let Some(waiter) = waiter {
                match (&record.state, &record.result) {
                    (CommandState::Completed, Some(result)) => {
                        let _ = waiter.send(result.clone());
                    }
                    _ => record.waiters.push(waiter),
                }
            }
            return (record.id.clone(), false);
        }
        let id: Arc<str> = Arc::from(command.command_id.as_str());
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(order, id.clone());
        self.records.insert(
            id.clone(),
            CommandRecord {
                id: id.clone(),
                command,
                state: CommandState::Queued,
                submitted_at: now,
                attempts: 0,
                accepted_by: None,
                result: None,
                retry_at: None,
                order,
                waiters: waiter.into_iter().collect(),
            },
        );
        (id, true)
    }

    /// Marks a command as written to a session and returns it to send.
    pub(crate) fn mark_sent(&mut self, id: &str) -> Option<&proto::Command> {
        let record = self.records.get_mut(id)?;
        if record.state == CommandState::Completed {
            return None;
        }
        if record.retry_at.take().is_some() {
            self.retrying -= 1;
        }
        record.state = CommandState::Sent;
        record.attempts += 1;
        Some(&record.command)
    }

    /// Ids to send when a session of `incarnation` starts, in submission
    /// order: every command without `CommandAccepted`, plus accepted ones
    /// whose accepting incarnation is no longer connected (`is_live`).
    pub(crate) fn due_on_session(
        &self,
        incarnation: &str,
        is_live: impl Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        self.pending
            .values()
            .filter(|id| {
                let record = &self.records[&***id];
                match (&record.state, &record.accepted_by) {
                    (CommandState::Accepted, Some(by)) => &**by != incarnation && !is_live(by),
                    (CommandState::Completed, _) => false,
                    _ => true,
                }
            })
            .cloned()
            .collect()
    }

    /// Ids of retryable rejections whose wait is over.
    pub(crate) fn due_retries(&self, now: Instant) -> Vec<Arc<str>> {
        if self.retrying == 0 {
            return Vec::new();
        }
        self.pending
            .values()
            .filter(|id| self.records[&***id].retry_at.is_some_and(|at| at <= now))
            .cloned()
            .collect()
    }

    /// Records `CommandAccepted`; false for an unknown or finished command.
    pub(crate) fn on_accepted(&mut self, id: &str, incarnation: &Arc<str>) -> bool {
        match self.records.get_mut(id) {
            Some(record) if record.state != CommandState::Completed => {
                if record.retry_at.take().is_some() {
                    self.retrying -= 1;
                }
                record.state = CommandState::Accepted;
                record.accepted_by = Some(incarnation.clone());
                true
            }
            _ => false,
        }
    }

    /// Records a `CommandResult`. A result for a command this book never
    /// saw is kept as a completed record of action "none".
    pub(crate) fn on_result(
        &mut self,
        result: proto::CommandResult,
        now: Instant,
    ) -> ResultOutcome {
        let status = ResultStatus::try_from(result.status).unwrap_or(ResultStatus::Unspecified);
        let retryable =
            status == ResultStatus::Rejected && result.error.as_ref().is_some_and(|e| e.retryable);
        let Some(record) = self.records.get_mut(result.command_id.as_str()) else {
            let id: Arc<str> = Arc::from(result.command_id.as_str());
            let order = self.next_order;
            self.next_order += 1;
            self.records.insert(
                id.clone(),
                CommandRecord {
                    id: id.clone(),
                    command: proto::Command {
                        command_id: result.command_id.clone(),
                        ..Default::default()
                    },
                    state: CommandState::Completed,
                    submitted_at: SystemTime::now(),
                    attempts: 0,
                    accepted_by: None,
                    result: Some(result),
                    retry_at: None,
                    order,
                    waiters: Vec::new(),
                },
            );
            self.push_completed(id);
            return ResultOutcome::Completed {
                action: "none",
                status,
            };
        };
        let action = record.action();
        if record.state == CommandState::Completed {
            return ResultOutcome::AlreadyCompleted;
        }
        if retryable {
            if record.retry_at.is_none() {
                self.retrying += 1;
            }
            record.state = CommandState::Queued;
            record.retry_at = Some(now + RETRY_AFTER);
            record.result = Some(result);
            return ResultOutcome::WillRetry { action };
        }
        if record.retry_at.take().is_some() {
            self.retrying -= 1;
        }
        record.state = CommandState::Completed;
        for waiter in record.waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        record.result = Some(result);
        let (order, id) = (record.order, record.id.clone());
        self.pending.remove(&order);
        self.push_completed(id);
        ResultOutcome::Completed { action, status }
    }

    fn push_completed(&mut self, id: Arc<str>) {
        self.completed.push_back(id);
        while self.completed.len() > self.max_completed {
            if let Some(old) = self.completed.pop_front() {
                self.records.remove(&old);
            }
        }
    }

    /// Drops every trace of `id`, as a backend that lost its state would
    /// (tests use it to re-send a command id the relayer already ran).
    pub(crate) fn forget(&mut self, id: &str) {
        if let Some(record) = self.records.remove(id) {
            self.pending.retain(|_, pending| &**pending != id);
            self.completed.retain(|done| &**done != id);
            drop(record);
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&CommandRecord> {
        self.records.get(id)
    }

    /// Commands not completed yet.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(id: &str) -> proto::Command {
        proto::Command {
            command_id: id.to_string(),
            action: Some(Action::Ping(proto::Ping::default())),
            ..Default::default()
        }
    }

    fn result(id: &str, status: ResultStatus, retryable: bool) -> proto::CommandResult {
        proto::CommandResult {
            command_id: id.to_string(),
            status: status as i32,
            error: (status != ResultStatus::Succeeded).then(|| proto::Error {
                code: proto::error::Code::Unavailable as i32,
                message: "busy".into(),
                retryable,
            }),
            ..Default::default()
        }
    }

    fn ids(list: Vec<Arc<str>>) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn unacknowledged_commands_are_resent_on_the_next_session() {
        let now = SystemTime::now();
        let mut book = CommandBook::new(100);
        let inc: Arc<str> = Arc::from("inc-1");
        for id in ["a", "b", "c"] {
            book.submit(ping(id), None, now);
        }
        assert_eq!(
            ids(book.due_on_session("inc-1", |_| false)),
            ["a", "b", "c"]
        );
        for id in ["a", "b", "c"] {
            book.mark_sent(id);
        }
        assert!(book.on_accepted("a", &inc));
        book.on_result(result("b", ResultStatus::Succeeded, false), Instant::now());
        // Session lost: c (sent, never accepted) goes again; a was accepted
        // by inc-1, which is still connected elsewhere or the same process.
        assert_eq!(ids(book.due_on_session("inc-1", |_| false)), ["c"]);
        // A new incarnation while inc-1 is gone: a is re-sent too.
        assert_eq!(ids(book.due_on_session("inc-2", |_| false)), ["a", "c"]);
        assert_eq!(ids(book.due_on_session("inc-2", |i| i == "inc-1")), ["c"]);
        assert_eq!(book.get("c").unwrap().attempts, 1);
        assert_eq!(book.pending_len(), 2);
    }

    #[test]
    fn results_answer_waiters_once_and_retryable_rejections_retry() {
        let now = SystemTime::now();
        let mut book = CommandBook::new(100);
        let (tx, mut rx) = oneshot::channel();
        let (id, fresh) = book.submit(ping(""), Some(tx), now);
        assert!(fresh && id.len() == 36, "generated uuid {id}");
        book.mark_sent(&id);
        let t0 = Instant::now();
        let outcome = book.on_result(result(&id, ResultStatus::Rejected, true), t0);
        assert_eq!(outcome, ResultOutcome::WillRetry { action: "ping" });
        assert!(rx.try_recv().is_err());
        assert!(book.due_retries(t0).is_empty());
        assert_eq!(ids(book.due_retries(t0 + RETRY_AFTER)), [id.to_string()]);
        book.mark_sent(&id);
        assert!(book.due_retries(t0 + RETRY_AFTER).is_empty());
        let outcome = book.on_result(result(&id, ResultStatus::Succeeded, false), t0);
        assert_eq!(
            outcome,
            ResultOutcome::Completed {
                action: "ping",
                status: ResultStatus::Succeeded
            }
        );
        assert_eq!(
            rx.try_recv().unwrap().status,
            ResultStatus::Succeeded as i32
        );
        assert_eq!(
            book.on_result(result(&id, ResultStatus::Succeeded, false), t0),
            ResultOutcome::AlreadyCompleted
        );
        // A waiter for a finished command is answered at once.
        let (tx, mut rx) = oneshot::channel();
        assert!(!book.submit(ping(&id), Some(tx), now).1);
        assert!(rx.try_recv().is_ok());
        // Non-retryable rejection is final.
        book.submit(ping("x"), None, now);
        let outcome = book.on_result(result("x", ResultStatus::Rejected, false), t0);
        assert!(matches!(
            outcome,
            ResultOutcome::Completed {
                status: ResultStatus::Rejected,
                ..
            }
        ));
    }

    #[test]
    fn completed_commands_are_evicted_oldest_first() {
        let mut book = CommandBook::new(2);
        for id in ["a", "b", "c"] {
            book.submit(ping(id), None, SystemTime::now());
            book.on_result(result(id, ResultStatus::Succeeded, false), Instant::now());
        }
        assert!(book.get("a").is_none());
        assert!(book.get("b").is_some() && book.get("c").is_some());
    }
}
