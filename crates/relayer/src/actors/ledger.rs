//! The command ledger: what is known about every command between its
//! arrival and its one result — the dedup cache, the in-flight and
//! validating gauges, and the [`CommandTicket`] each admitted command
//! carries. It lives in the `RelayContext`, outside every actor, so that no
//! restart can lose a result or leak capacity.
//!
//! **Invariant: every command that passed dedup as new gets exactly one
//! answer.** The ticket is that answer, owed: it travels with the command
//! (to the validation thread, in `Execute` through the executor's mailbox,
//! into the task that runs it) and is consumed by [`CommandTicket::settle`]
//! or [`CommandTicket::refuse`]. If it is dropped unconsumed — a mailbox
//! that died with its actor, a validation whose router was gone, a task that
//! panicked — its `Drop` answers for it: REJECTED/UNAVAILABLE (retryable)
//! if the command never started, FAILED/INTERNAL if it was running. Either
//! way the gauges come down and the dedup entry leaves "in flight".
//!
//! It also holds the cluster lock's replay guard: a verified signed command
//! is recorded there when it starts running, until its deadline.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::commands::dedup::{DedupCache, Seen};
use crate::commands::outcome::{ended, rejected, status_name, CommandError};
use crate::commands::signature::{verified_key_id, ReplayGuard};
use crate::connection::outbox_handle::OutboxHandle;
use crate::metrics::Metrics;
use crate::observability::command_span::record_result;
use crate::proto::{command_result::Status, relayer_frame::Body, Command, CommandResult};

/// Dedup, gauges and answers for every command of this process.
pub struct CommandLedger {
    dedup: Mutex<DedupCache>,
    replay: Mutex<ReplayGuard>,
    outbox: OutboxHandle,
    metrics: Arc<Metrics>,
}

/// What dedup holds, for `/debug/actors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupStats {
    pub entries: usize,
    pub bytes: usize,
    pub evicted: u64,
}

impl CommandLedger {
    pub fn new(
        dedup: DedupCache,
        replay: ReplayGuard,
        outbox: OutboxHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dedup: Mutex::new(dedup),
            replay: Mutex::new(replay),
            outbox,
            metrics,
        }
    }

    /// Dedup's verdict on `command_id` at `now`; a new id is marked in flight.
    pub fn check_and_begin(&self, command_id: &str, now: Instant) -> Seen {
        self.dedup.lock().check_and_begin(command_id, now)
    }

    pub fn is_in_flight(&self, command_id: &str) -> bool {
        self.dedup.lock().is_in_flight(command_id)
    }

    /// The replay guard's verdict on a verified signed command.
    pub fn check_replay(&self, command_id: &str, now_unix_ms: i64) -> Result<(), CommandError> {
        self.replay.lock().check(command_id, now_unix_ms)
    }

    /// A command starts running: a verified signed one is remembered until
    /// its deadline.
    pub fn record_run(&self, command: &Command) {
        if verified_key_id(command).is_some() {
            self.replay
                .lock()
                .record(&command.command_id, command.deadline_unix_ms);
        }
    }

    /// A command refused before it got a ticket: a retry may run it.
    pub fn forget(&self, command_id: &str) {
        self.dedup.lock().forget(command_id);
    }

    /// A command that ran where it was admitted (ping): cache its result
    /// as finished at `now`.
    pub fn cache(&self, result: &CommandResult, now: Instant) {
        self.dedup.lock().finish(result, now);
    }

    /// The ticket of a command just admitted to `stage`.
    pub fn ticket(
        self: &Arc<Self>,
        command: &Command,
        action: &'static str,
        stage: Stage,
        span: tracing::Span,
    ) -> CommandTicket {
        self.gauge(stage).inc();
        CommandTicket {
            ledger: self.clone(),
            command: Command {
                command_id: command.command_id.clone(),
                trace: command.trace.clone(),
                // The signer's key id (for the audit line) and the deadline
                // (for the replay guard) of a signed command.
                signed: command.signed.clone(),
                deadline_unix_ms: command.deadline_unix_ms,
                ..Default::default()
            },
            action,
            stage,
            span,
            settled: false,
        }
    }

    pub fn stats(&self) -> DedupStats {
        let dedup = self.dedup.lock();
        DedupStats {
            entries: dedup.len(),
            bytes: dedup.bytes(),
            evicted: dedup.evicted(),
        }
    }

    /// Copies the dedup figures into `/metrics`.
    pub fn publish(&self) {
        let stats = self.stats();
        self.metrics.dedup_entries.set(stats.entries as i64);
        self.metrics.dedup_bytes.set(stats.bytes as i64);
        self.metrics.dedup_evictions.set(stats.evicted);
    }

    fn gauge(&self, stage: Stage) -> &prometheus_client::metrics::gauge::Gauge {
        match stage {
            Stage::Validating => &self.metrics.commands_validating,
            Stage::Admitted | Stage::Running => &self.metrics.commands_in_flight,
        }
    }
}

/// Where a ticketed command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its manifest is being validated off the actors' thread.
    Validating,
    /// Passed every check; on its way to the executor.
    Admitted,
    /// The executor started it: it may have taken effect.
    Running,
}

/// The one answer an admitted command is owed (see the module docs).
#[must_use = "a dropped ticket answers REJECTED or FAILED for its command"]
pub struct CommandTicket {
    ledger: Arc<CommandLedger>,
    /// The command's id and trace context: what every answer carries.
    command: Command,
    action: &'static str,
    stage: Stage,
    /// The command's span: its outcome is recorded there.
    span: tracing::Span,
    settled: bool,
}

impl std::fmt::Debug for CommandTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandTicket")
            .field("command_id", &self.command.command_id)
            .field("action", &self.action)
            .field("stage", &self.stage)
            .finish()
    }
}

impl CommandTicket {
    pub fn command_id(&self) -> &str {
        &self.command.command_id
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Moves the command on (validated → admitted, admitted → running).
    pub fn advance(&mut self, to: Stage) {
        if to == Stage::Running {
            self.ledger.record_run(&self.command);
        }
        self.ledger.gauge(self.stage).dec();
        self.ledger.gauge(to).inc();
        self.stage = to;
    }

    /// The command ended with `result`. It is cached for dedup if it ran
    /// (reached [`Stage::Running`]) and was not refused there; its result is
    /// always queued.
    pub fn settle(mut self, result: CommandResult) {
        self.close(result);
    }

    /// The command is refused before it ran: REJECTED with `error`, not
    /// cached, queued within the refusal bound.
    pub fn refuse(mut self, error: &CommandError) {
        let result = rejected(&self.command, error);
        tracing::info!(target: "audit", command_id = %self.command.command_id, action = self.action, key_id = verified_key_id(&self.command), outcome = "rejected", code = ?error.code(), "command");
        tracing::debug!(command_id = %self.command.command_id, action = self.action, code = ?error.code(), %error, "command rejected");
        self.close(result);
    }

    fn close(&mut self, result: CommandResult) {
        self.settled = true;
        let ran = self.stage == Stage::Running && result.status != Status::Rejected as i32;
        {
            let mut dedup = self.ledger.dedup.lock();
            if ran {
                dedup.finish(&result, Instant::now());
            } else {
                dedup.forget(&self.command.command_id);
            }
        }
        record_result(&self.span, &result);
        self.ledger.gauge(self.stage).dec();
        self.ledger
            .metrics
            .count_command(self.action, status_name(result.status));
        if self.stage == Stage::Running {
            self.ledger.outbox.push_result(Body::Result(result));
        } else {
            self.ledger.outbox.push_refusal(Body::Result(result));
        }
        self.ledger.publish();
    }
}

impl Drop for CommandTicket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        match self.stage {
            Stage::Validating | Stage::Admitted => {
                tracing::warn!(command_id = %self.command.command_id, action = self.action, "a command was lost before it ran (an actor restarted); answering REJECTED/UNAVAILABLE so the backend retries it");
                let error = CommandError::busy(
                    "the relayer restarted an internal component before this command ran; retry it",
                );
                let result = rejected(&self.command, &error);
                self.close(result);
            }
            Stage::Running => {
                tracing::error!(command_id = %self.command.command_id, action = self.action, "a running command was lost (its task ended without a result); answering FAILED");
                let error = CommandError::Internal(
                    "the relayer lost this command while it ran (an internal task ended); it may have taken effect, and re-sending it under a new command_id is safe".into(),
                );
                let started = crate::clock::now_unix_ms();
                let result = ended(&self.command, Status::Failed, &error, started);
                self.close(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::commands::outcome::succeeded;

    fn ledger() -> (Arc<CommandLedger>, OutboxHandle, Arc<Metrics>, u64) {
        let metrics = Arc::new(Metrics::new());
        let outbox = OutboxHandle::new(1 << 20, metrics.clone());
        let epoch = outbox.begin_session();
        outbox.on_welcome(epoch, 0);
        let dedup = DedupCache::new(Duration::from_secs(600), 100, 1 << 20);
        (
            Arc::new(CommandLedger::new(
                dedup,
                ReplayGuard::new(100),
                outbox.clone(),
                metrics.clone(),
            )),
            outbox,
            metrics,
            epoch,
        )
    }

    fn command(id: &str) -> Command {
        Command {
            command_id: id.into(),
            ..Default::default()
        }
    }

    /// The results queued, as (command_id, status, error code).
    fn results(outbox: &OutboxHandle, epoch: u64) -> Vec<(String, i32, i32)> {
        let mut frames = VecDeque::new();
        outbox.take_ready(epoch, &mut frames, 100);
        frames
            .into_iter()
            .filter_map(|(frame, _)| match frame.body {
                Some(Body::Result(r)) => {
                    Some((r.command_id, r.status, r.error.map_or(0, |e| e.code)))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_ticket_answers_exactly_once_and_the_gauges_return_to_zero() {
        use crate::proto::error::Code;
        let (ledger, outbox, metrics, epoch) = ledger();
        // (id, what happens to the ticket, status, code, cached)
        type Fate = fn(CommandTicket);
        let table: &[(&str, Stage, Fate, Status, i32, bool)] = &[
            (
                "settled",
                Stage::Running,
                |t| {
                    let result = succeeded(&command("settled"), &serde_json::json!({}), 0);
                    t.settle(result)
                },
                Status::Succeeded,
                0,
                true,
            ),
            (
                "refused",
                Stage::Admitted,
                |t| t.refuse(&CommandError::busy("busy")),
                Status::Rejected,
                Code::Unavailable as i32,
                false,
            ),
            (
                "dropped-validating",
                Stage::Validating,
                drop,
                Status::Rejected,
                Code::Unavailable as i32,
                false,
            ),
            (
                "dropped-admitted",
                Stage::Admitted,
                drop,
                Status::Rejected,
                Code::Unavailable as i32,
                false,
            ),
            (
                "dropped-running",
                Stage::Running,
                drop,
                Status::Failed,
                Code::Internal as i32,
                true,
            ),
        ];
        for &(id, stage, fate, status, code, cached) in table {
            assert_eq!(ledger.check_and_begin(id, Instant::now()), Seen::New);
            let mut ticket = ledger.ticket(
                &command(id),
                "get",
                Stage::Validating,
                tracing::Span::none(),
            );
            if stage != Stage::Validating {
                ticket.advance(Stage::Admitted);
            }
            if stage == Stage::Running {
                ticket.advance(Stage::Running);
            }
            fate(ticket);
            assert_eq!(
                results(&outbox, epoch),
                vec![(id.to_string(), status as i32, code)],
                "{id}: exactly one answer"
            );
            assert_eq!(metrics.commands_in_flight.get(), 0, "{id}");
            assert_eq!(metrics.commands_validating.get(), 0, "{id}");
            let seen = ledger.check_and_begin(id, Instant::now());
            assert_eq!(matches!(seen, Seen::Finished(_)), cached, "{id}: cached");
            assert!(
                !matches!(seen, Seen::InFlight),
                "{id}: never stuck in flight"
            );
        }
    }
}
