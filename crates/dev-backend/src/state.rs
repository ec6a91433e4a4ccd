//! The reference backend's bookkeeping as plain structs without I/O: frame
//! dedup and cumulative acks per incarnation (`SeqTracker`, `Dedup`), the
//! debug log of reliable frames (`FrameLog`), the command queue with
//! at-least-once re-send (`CommandBook`), telemetry counters, and the
//! registration rules (`BootstrapTokens`, `Credentials`, cluster names).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use tokio::sync::oneshot;

use consonant_proto::{self as proto, command::Action, command_result::Status as ResultStatus};
use consonant_secret::Secret;

/// How long a command answered REJECTED + retryable waits before it is sent
/// again on the same session (it is also re-sent on the next session).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- dedup

/// Reliable frames of one incarnation seen so far: everything `<= contiguous`
/// plus the out-of-order seqs above it.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqTracker {
    contiguous: u64,
    ahead: BTreeSet<u64>,
}

impl SeqTracker {
    /// Records `seq`; false when it was seen before (a duplicate).
    pub(crate) fn observe(&mut self, seq: u64) -> bool {
        if seq <= self.contiguous {
            return false;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.ahead.first() == Some(&(self.contiguous + 1)) {
                self.ahead.pop_first();
                self.contiguous += 1;
            }
            true
        } else {
            self.ahead.insert(seq)
        }
    }

    /// Raises the floor to `acked` (frames a previous backend already held).
    pub(crate) fn advance_to(&mut self, acked: u64) {
        if acked > self.contiguous {
            self.contiguous = acked;
            self.ahead.retain(|seq| *seq > acked);
            while self.ahead.first() == Some(&(self.contiguous + 1)) {
                self.ahead.pop_first();
                self.contiguous += 1;
            }
        }
    }

    /// The highest seq with every seq below it received: the cumulative ack.
    pub(crate) fn contiguous(&self) -> u64 {
        self.contiguous
    }
}

/// Dedup of reliable frames on `(incarnation, seq)`.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    by_incarnation: HashMap<Arc<str>, SeqTracker>,
    duplicates: u64,
}

impl Dedup {
    /// Called on `Hello`: returns `Welcome.acked_seq` for that incarnation.
    /// `last_acked_seq` from the relayer raises the floor, so a backend that
    /// lost its memory does not wait forever for frames it acked before.
    pub(crate) fn resume(&mut self, incarnation: &Arc<str>, last_acked_seq: u64) -> u64 {
        let tracker = self.by_incarnation.entry(incarnation.clone()).or_default();
        tracker.advance_to(last_acked_seq);
        tracker.contiguous()
    }

    /// Records a reliable frame; false (and counted) when it is a duplicate.
    pub(crate) fn observe(&mut self, incarnation: &Arc<str>, seq: u64) -> bool {
        let fresh = match self.by_incarnation.get_mut(incarnation) {
            Some(tracker) => tracker.observe(seq),
            None => {
                let mut tracker = SeqTracker::default();
                tracker.observe(seq);
                self.by_incarnation.insert(incarnation.clone(), tracker);
                true
            }
        };
        if !fresh {
            self.duplicates += 1;
        }
        fresh
    }

    /// The cumulative ack for `incarnation` (0 when nothing was received).
    pub(crate) fn acked(&self, incarnation: &str) -> u64 {
        self.by_incarnation
            .get(incarnation)
            .map_or(0, SeqTracker::contiguous)
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

// ---------------------------------------------------------------- frame log

/// What a reliable frame carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Result,
    Event,
    Telemetry,
}

/// One reliable frame as received (debug endpoint `/frames`).
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    #[serde(serialize_with = "arc_str")]
    pub incarnation: Arc<str>,
    pub seq: u64,
    pub kind: FrameKind,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_arc_str"
    )]
    pub command_id: Option<Arc<str>>,
}

fn arc_str<S: serde::Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

fn opt_arc_str<S: serde::Serializer>(
    value: &Option<Arc<str>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_str(value),
        None => serializer.serialize_none(),
    }
}

/// The last `capacity` reliable frames in arrival order (duplicates excluded).
#[derive(Debug)]
pub(crate) struct FrameLog {
    frames: VecDeque<FrameRecord>,
    capacity: usize,
}

impl FrameLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, record: FrameRecord) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(record);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &FrameRecord> {
        self.frames.iter()
    }
}

// ---------------------------------------------------------------- commands

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
    pub id: Arc<str>,
    pub command: proto::Command,
    pub state: CommandState,
    pub submitted_at: SystemTime,
    /// How many times it was written to a session.
    pub attempts: u32,
    /// The incarnation that accepted it.
    pub accepted_by: Option<Arc<str>>,
    /// The final result, or the last retryable rejection while `Queued`.
    pub result: Option<proto::CommandResult>,
    retry_at: Option<Instant>,
    order: u64,
    waiters: Vec<oneshot::Sender<proto::CommandResult>>,
}

impl CommandRecord {
    pub(crate) fn action(&self) -> &'static str {
        action_name(self.command.action.as_ref())
    }
}

/// The proto3 JSON name of a command's action.
pub(crate) fn action_name(action: Option<&Action>) -> &'static str {
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

// ---------------------------------------------------------------- telemetry

/// Telemetry counted from decoded OTLP (`GET .../telemetry`, keys exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TelemetryCounters {
    pub batches: u64,
    pub spans: u64,
    pub metric_points: u64,
    pub log_records: u64,
    pub bytes: u64,
    /// Sum over incarnations of `Hello.telemetry_stats.items_dropped`.
    pub dropped_reported: u64,
}

// ---------------------------------------------------------------- registration

/// Checks a cluster name against DNS-1123 (subdomain: lowercase letters,
/// digits, '-' and '.', labels starting and ending alphanumeric, <= 253).
pub(crate) fn validate_cluster_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "cluster name {name:?} is not a DNS-1123 name: {why}"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("use only lowercase letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("it must start and end with a letter or digit");
        }
    }
    Ok(())
}

/// A fresh cluster id, `cls_` and 20 random lowercase alphanumerics.
pub(crate) fn new_cluster_id() -> String {
    format!(
        "cls_{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 20)
            .to_ascii_lowercase()
    )
}

/// A fresh cluster token: 48 random alphanumerics.
pub(crate) fn new_token() -> Secret {
    Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 48))
}

/// Compares tokens without stopping at the first differing byte.
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a bootstrap token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootstrapRefusal {
    /// Missing or not one of the configured tokens (401).
    Wrong,
    /// A configured token that registered a cluster already (403).
    Used,
}

/// The registration bootstrap tokens: single-use when configured; with
/// none configured any non-empty bearer is accepted.
#[derive(Debug, Default)]
pub(crate) struct BootstrapTokens {
    tokens: Vec<(Secret, bool)>,
}

impl BootstrapTokens {
    pub(crate) fn new(tokens: impl IntoIterator<Item = Secret>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|t| (t, false))
                .collect(),
        }
    }

    /// Checks a presented token; `Ok(Some(i))` names the token to `consume`
    /// once the registration succeeds.
    pub(crate) fn check(&self, presented: Option<&str>) -> Result<Option<usize>, BootstrapRefusal> {
        let presented = presented
            .filter(|t| !t.is_empty())
            .ok_or(BootstrapRefusal::Wrong)?;
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let index = self
            .tokens
            .iter()
            .position(|(token, _)| tokens_equal(token.expose(), presented))
            .ok_or(BootstrapRefusal::Wrong)?;
        if self.tokens[index].1 {
            return Err(BootstrapRefusal::Used);
        }
        Ok(Some(index))
    }

    pub(crate) fn consume(&mut self, index: Option<usize>) {
        if let Some(entry) = index.and_then(|i| self.tokens.get_mut(i)) {
            entry.1 = true;
        }
    }
}

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
    pub(crate) fn rotate(&mut self) -> Secret {
        let token = new_token();
        self.rotated_to = Some(token.clone());
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_seqs(seqs: &[u64], expected_fresh: &[bool], expected_contiguous: u64) {
        let mut tracker = SeqTracker::default();
        let fresh: Vec<bool> = seqs.iter().map(|s| tracker.observe(*s)).collect();
        assert_eq!(fresh, expected_fresh, "seqs {seqs:?}");
        assert_eq!(tracker.contiguous(), expected_contiguous, "seqs {seqs:?}");
    }

    #[test]
    fn contiguous_ack_with_gaps_and_duplicates() {
        check_seqs(&[1, 2, 3], &[true, true, true], 3);
        check_seqs(&[1, 3, 4], &[true, true, true], 1);
        check_seqs(&[1, 3, 4, 2], &[true, true, true, true], 4);
        check_seqs(&[2, 2, 1, 1], &[true, false, true, false], 2);
        check_seqs(&[5], &[true], 0);
        check_seqs(&[1, 2, 2, 1, 3], &[true, true, false, false, true], 3);
    }

    #[test]
    fn advance_to_drains_frames_above_the_floor() {
        let mut tracker = SeqTracker::default();
        tracker.observe(6);
        tracker.observe(8);
        tracker.advance_to(5);
        assert_eq!(tracker.contiguous(), 6);
        tracker.advance_to(3);
        assert_eq!(tracker.contiguous(), 6);
        assert!(!tracker.observe(4));
        assert!(tracker.observe(7));
        assert_eq!(tracker.contiguous(), 8);
    }

    #[test]
    fn dedup_is_per_incarnation_and_counts_duplicates() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("inc-a"), Arc::from("inc-b"));
        let mut dedup = Dedup::default();
        assert_eq!(dedup.resume(&a, 0), 0);
        assert!(dedup.observe(&a, 1));
        assert!(dedup.observe(&b, 1));
        assert!(!dedup.observe(&a, 1));
        assert!(dedup.observe(&a, 2));
        assert_eq!(dedup.duplicates(), 1);
        assert_eq!(dedup.acked("inc-a"), 2);
        assert_eq!(dedup.acked("inc-b"), 1);
        assert_eq!(dedup.acked("inc-c"), 0);
        // A relayer whose frames up to 10 were acked by an earlier backend.
        let c: Arc<str> = Arc::from("inc-c");
        assert_eq!(dedup.resume(&c, 10), 10);
        assert!(!dedup.observe(&c, 9));
        assert!(dedup.observe(&c, 11));
    }

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

    #[test]
    fn cluster_names_follow_dns_1123() {
        for good in ["production-us-east-1", "a", "prod.eu-1", "0abc"] {
            assert!(validate_cluster_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "-a", "a-", "a_b", "a..b", &"x".repeat(64)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bootstrap_tokens_are_single_use() {
        let mut tokens = BootstrapTokens::new([Secret::new("boot-1"), Secret::new("boot-2")]);
        assert_eq!(tokens.check(None), Err(BootstrapRefusal::Wrong));
        assert_eq!(tokens.check(Some("nope")), Err(BootstrapRefusal::Wrong));
        let index = tokens.check(Some("boot-2")).unwrap();
        tokens.consume(index);
        assert_eq!(tokens.check(Some("boot-2")), Err(BootstrapRefusal::Used));
        assert!(tokens.check(Some("boot-1")).is_ok());
        let open = BootstrapTokens::new([]);
        assert_eq!(open.check(Some("anything")), Ok(None));
        assert_eq!(open.check(Some("")), Err(BootstrapRefusal::Wrong));
    }

    #[test]
    fn rotation_keeps_the_old_token_until_the_new_one_is_used() {
        let mut creds = Credentials::new(Secret::new("old"));
        let new = creds.rotate();
        assert!(creds.check("old"));
        assert!(creds.check(new.expose()));
        assert!(!creds.check("old"));
        assert!(creds.check(new.expose()));
        assert!(new_cluster_id().starts_with("cls_") && new_token().expose().len() >= 32);
    }
}
