//! `CommandRouter`: takes every command the session reads, decides its fate
//! in the protocol's order (`commands::admission`) — dedup, signature,
//! validation, deadline, policy, rate, capacity — answers Ping itself, hands Kubernetes
//! actions to the WorkloadExecutor, and queues each answer
//! (`CommandAccepted`, results, refusals) in the outbox.
//!
//! Manifests (`apply`) are validated off the actors' thread, one at a time
//! (`RelayContext::validation_slots`), at most `commands.max_in_flight`
//! waiting: parsing a large manifest never stalls heartbeats or other
//! commands. The validated command comes back as `Validated` to whichever
//! router is current, and the decision goes on from validation's answer.
//!
//! It owns no state that must survive it: dedup, the gauges and each
//! command's owed answer (its `CommandTicket`) live in the `CommandLedger`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use actix::{Actor, ActorContext, Context, Handler};
use serde_json::json;

use super::context::RelayContext;
use super::ledger::{CommandTicket, Stage};
use super::messages::{Execute, Validated};
use crate::clock::now_unix_ms;
use crate::commands::admission::{arrive, decide, validates_off_thread, Arrival, Arriving, Gate};
use crate::commands::outcome::{action_name, ping_output, ping_succeeded, rejected, CommandError};
use crate::commands::signature::{command_to_run, verified_key_id};
use crate::commands::validate::{validate, ValidatedCommand};
use crate::connection::messages::{CancelCommands, IncomingCommands};
use crate::connection::outbox_handle::Answers;
use crate::observability::command_span::record_result;
use crate::proto::{relayer_frame::Body, Command, CommandAccepted};
use crate::supervisor::{ChildContext, Stop};

pub struct CommandRouter {
    rc: Arc<RelayContext>,
    child: ChildContext,
    handled: u64,
    /// Resolved `commands_total` counters: counting is then one atomic add.
    counters: HashMap<(&'static str, &'static str), Counter>,
    /// The counter used last: a flood of one action (pings) skips hashing
    /// the two names per command.
    last_counter: Option<(&'static str, &'static str, Counter)>,
    /// The last ping output written, by payload length: pings of one size
    /// share its bytes instead of writing them again.
    last_ping_output: Option<(usize, bytes::Bytes)>,
    /// The clocks, read once per message handled: the commands of one
    /// batch were read together and are admitted (and pings answered) at
    /// the same instant.
    now_unix_ms: i64,
    now: Instant,
}

impl CommandRouter {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            handled: 0,
            counters: HashMap::new(),
            last_counter: None,
            last_ping_output: None,
            now_unix_ms: now_unix_ms(),
            now: Instant::now(),
        }
    }

    /// Reads the clocks for the message about to be handled.
    fn tick(&mut self) {
        self.now_unix_ms = now_unix_ms();
        self.now = Instant::now();
    }

    fn count(&mut self, action: &'static str, status: &'static str) {
        if let Some((a, s, counter)) = &self.last_counter {
            if std::ptr::eq(*a, action) && std::ptr::eq(*s, status) {
                counter.inc();
                return;
            }
        }
        let metrics = &self.rc.metrics;
        let counter = self
            .counters
            .entry((action, status))
            .or_insert_with(|| {
                metrics
                    .commands
                    .get_or_create_owned(&crate::metrics::CommandLabels {
                        action: action.to_string(),
                        status: status.to_string(),
                    })
            })
            .clone();
        counter.inc();
        self.last_counter = Some((action, status, counter));
    }

    fn ping_output(&mut self, payload_len: usize) -> bytes::Bytes {
        match &self.last_ping_output {
            Some((len, output)) if *len == payload_len => output.clone(),
            _ => {
                let output = ping_output(payload_len);
                self.last_ping_output = Some((payload_len, output.clone()));
                output
            }
        }
    }

    fn publish(&self) {
        self.rc.ledger.publish();
        let dedup = self.rc.ledger.stats();
        self.child.set_details(json!({
            "in_flight": self.rc.metrics.commands_in_flight.get(),
            "validating": self.rc.metrics.commands_validating.get(),
            "max_in_flight": self.rc.config.commands.max_in_flight,
            "dedup_entries": dedup.entries,
            "dedup_bytes": dedup.bytes,
            "dedup_evicted": dedup.evicted,
            "handled": self.handled,
        }));
    }

    /// The relayer's state as the second half of admission reads it.
    fn gate<'a>(&self, rc: &'a RelayContext) -> Gate<'a> {
        Gate {
            policy: &rc.policy,
            limits: &rc.limits,
            kubernetes_enabled: rc.config.kubernetes.enabled,
            in_flight: rc.metrics.commands_in_flight.get(),
            max_in_flight: rc.config.commands.max_in_flight,
            replay_has_room: rc.outbox.has_room_for_result(),
            now_unix_ms: self.now_unix_ms,
        }
    }

    /// The first half of admission for one command just read.
    fn route(&mut self, mut command: Command, draining: bool, out: &mut Answers) {
        // A signed command's action is inside it: "signed" until unwrapped.
        let action = action_name(&command).unwrap_or(match command.signed {
            Some(_) => "signed",
            None => "none",
        });
        let rc = self.rc.clone();
        // Signatures are bound to the cluster id this session announced.
        let cluster_id = match command.signed {
            Some(_) => rc.link.read().cluster_id.clone().unwrap_or_default(),
            None => String::new(),
        };
        let arriving = Arriving {
            draining,
            lock: &rc.lock,
            cluster_id: &cluster_id,
            now_unix_ms: self.now_unix_ms,
        };
        let opened = match arrive(
            &command,
            &arriving,
            |id| rc.ledger.check_and_begin(id, self.now),
            |id| rc.ledger.check_replay(id, arriving.now_unix_ms),
        ) {
            Arrival::Unidentified(error) => {
                // Answered with an empty id: an unusable one never goes on.
                command.command_id.clear();
                self.refuse(&command, action, None, &error, out);
                return;
            }
            Arrival::DuplicateInFlight => {
                tracing::debug!(command_id = %command.command_id, "duplicate of an in-flight command: accepted again");
                out.accepted.push(accepted(&command));
                return;
            }
            Arrival::DuplicateFinished(result) => {
                tracing::debug!(command_id = %command.command_id, "duplicate of a finished command: cached result sent again");
                let busy = rejected(&command, &CommandError::busy(
                    "the replay buffer has no room to send this command's cached result again; retry once the backend acknowledges what it holds",
                ));
                out.cached.push((Body::Result(result), Body::Result(busy)));
                return;
            }
            Arrival::Refused(error) => {
                // The span's context goes into the answer (see `observability`).
                let span = rc.command_tracing.start(&mut command, action);
                rc.ledger.forget(&command.command_id);
                self.refuse(&command, action, None, &error, out);
                record_last(&span, out);
                return;
            }
            Arrival::Fresh(opened) => opened,
        };
        // From here on the command is the one that runs: a signed command's
        // inner one, marked with the key that verified it.
        let mut command = command_to_run(command, opened);
        let action = action_name(&command).unwrap_or("none");
        // From here the command gets one span, and its answers carry the
        // span's trace context (see `observability`).
        let span = rc.command_tracing.start(&mut command, action);
        if !validates_off_thread(&command) {
            let validation = validate(&command, &rc.limits);
            self.decide(command, action, span, validation, None, out);
            return;
        }
        let waiting = rc.metrics.commands_validating.get();
        if waiting >= i64::from(rc.config.commands.max_in_flight) {
            rc.ledger.forget(&command.command_id);
            let error = CommandError::busy(format!(
                "{waiting} manifests are already waiting for validation (commands.max_in_flight); retry shortly"
            ));
            self.refuse(&command, action, verified_key_id(&command), &error, out);
            record_last(&span, out);
            return;
        }
        let ticket = rc
            .ledger
            .ticket(&command, action, Stage::Validating, span.clone());
        tokio::spawn(validate_off_thread(rc, command, action, span, ticket));
    }

    /// The second half of admission, once validation has answered, and the
    /// command's dispatch. `ticket` is there when validation ran elsewhere.
    fn decide(
        &mut self,
        command: Command,
        action: &'static str,
        span: tracing::Span,
        validation: Result<ValidatedCommand, crate::commands::outcome::CommandError>,
        ticket: Option<CommandTicket>,
        out: &mut Answers,
    ) {
        let rc = self.rc.clone();
        let gate = self.gate(&rc);
        let validated = match decide(&command, validation, &gate, || rc.rate.try_acquire()) {
            Ok(validated) => validated,
            Err(error) => {
                match ticket {
                    Some(ticket) => ticket.refuse(&error),
                    None => {
                        rc.ledger.forget(&command.command_id);
                        self.refuse(&command, action, verified_key_id(&command), &error, out);
                        record_last(&span, out);
                    }
                }
                return;
            }
        };
        match validated {
            ValidatedCommand::Ping { payload_len } => {
                rc.ledger.record_run(&command);
                tracing::info!(target: "audit", command_id = %command.command_id, action, key_id = verified_key_id(&command), target = "", outcome = "succeeded", duration_ms = 0u64, "command");
                out.accepted.push(accepted(&command));
                // A ping runs the moment it is admitted.
                let output = self.ping_output(payload_len);
                let result = ping_succeeded(command, output, gate.now_unix_ms);
                record_result(&span, &result);
                rc.ledger.cache(&result, self.now);
                self.count(action, "succeeded");
                out.results.push(Body::Result(result));
            }
            ValidatedCommand::Kube(request) => {
                let ticket = match ticket {
                    Some(mut ticket) => {
                        ticket.advance(Stage::Admitted);
                        ticket
                    }
                    None => rc
                        .ledger
                        .ticket(&command, action, Stage::Admitted, span.clone()),
                };
                let Some(executor) = rc.directory.executor() else {
                    ticket.refuse(&CommandError::busy(
                        "the workload executor is restarting; retry shortly",
                    ));
                    return;
                };
                out.accepted.push(accepted(&command));
                // The executor's mailbox is bounded by max_in_flight, which
                // decide() enforces. A message that cannot be delivered (or is
                // lost with a mailbox) hands its ticket back, or drops it, and
                // the ticket answers for the command either way.
                let execute = Execute {
                    command,
                    action,
                    request,
                    span,
                    ticket,
                };
                if let Err(error) = executor.execute.try_send(execute) {
                    let (actix::prelude::SendError::Full(lost)
                    | actix::prelude::SendError::Closed(lost)) = error;
                    lost.ticket.refuse(&CommandError::busy(
                        "the workload executor is restarting; retry shortly",
                    ));
                }
            }
        }
    }

    /// A REJECTED answer decided here, before any ticket. `key_id` is the
    /// key that verified the command, once the lock let it through (never a
    /// key id the backend merely claimed).
    fn refuse(
        &mut self,
        command: &Command,
        action: &'static str,
        key_id: Option<&str>,
        error: &CommandError,
        out: &mut Answers,
    ) {
        tracing::info!(target: "audit", command_id = %command.command_id, action, key_id, outcome = "rejected", code = ?error.code(), "command");
        tracing::debug!(command_id = %command.command_id, action, code = ?error.code(), %error, "command rejected");
        self.count(action, "rejected");
        out.refusals.push(Body::Result(rejected(command, error)));
    }
}

/// Records the last refusal queued in `out` on the command's span.
fn record_last(span: &tracing::Span, out: &Answers) {
    if let Some(Body::Result(result)) = out.refusals.last() {
        record_result(span, result);
    }
}

/// Validates one manifest on the blocking pool, one at a time, and hands the
/// answer to whichever router is current. If none takes it (restarting),
/// the dropped ticket answers for the command.
async fn validate_off_thread(
    rc: Arc<RelayContext>,
    command: Command,
    action: &'static str,
    span: tracing::Span,
    ticket: CommandTicket,
) {
    // The semaphore is never closed.
    let Ok(_slot) = rc.validation_slots.clone().acquire_owned().await else {
        return;
    };
    let limits = rc.limits;
    // Cheap: the manifest is shared `Bytes`.
    let to_check = command.clone();
    let validation = match tokio::task::spawn_blocking(move || validate(&to_check, &limits)).await {
        Ok(validation) => validation,
        Err(_) => Err(CommandError::Internal(
            "validating the manifest failed unexpectedly; the relayer logged it".into(),
        )),
    };
    drop(_slot);
    let Some(router) = rc.directory.router() else {
        return;
    };
    let _ = router
        .validated
        .send(Validated {
            command,
            action,
            span,
            validation,
            ticket,
        })
        .await;
}

fn accepted(command: &Command) -> Body {
    Body::Accepted(CommandAccepted {
        command_id: command.command_id.clone(),
    })
}

impl Actor for CommandRouter {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.child.set_state("Routing");
        self.publish();
    }
}

impl Handler<IncomingCommands> for CommandRouter {
    type Result = ();

    fn handle(&mut self, msg: IncomingCommands, _: &mut Context<Self>) {
        fail::fail_point!("router-incoming");
        self.tick();
        let mut answers = Answers::with_capacity(msg.commands.len());
        for command in msg.commands {
            self.handled += 1;
            self.route(command, msg.draining, &mut answers);
        }
        if !answers.is_empty() {
            self.rc.outbox.push_answers(answers);
        }
        self.publish();
    }
}

impl Handler<Validated> for CommandRouter {
    type Result = ();

    fn handle(&mut self, msg: Validated, _: &mut Context<Self>) {
        fail::fail_point!("router-validated");
        self.tick();
        let mut answers = Answers::default();
        self.decide(
            msg.command,
            msg.action,
            msg.span,
            msg.validation,
            Some(msg.ticket),
            &mut answers,
        );
        if !answers.is_empty() {
            self.rc.outbox.push_answers(answers);
        }
        self.publish();
    }
}

impl Handler<CancelCommands> for CommandRouter {
    type Result = ();

    /// Cancels running commands through their tokens in the `RelayContext`:
    /// no message per cancel, so however many the backend sends, nothing
    /// queues. A command not running (unknown, finished, or still on its
    /// way to the executor) is ignored.
    fn handle(&mut self, msg: CancelCommands, _: &mut Context<Self>) {
        let running = self.rc.running.lock();
        for command_id in msg.0 {
            match running.get(&command_id) {
                Some(token) => token.cancel(),
                None => {
                    tracing::debug!(%command_id, "cancel for a command that is not running: ignored")
                }
            }
        }
    }
}

impl Handler<Stop> for CommandRouter {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::actors::context::testing;
    use crate::actors::workload_executor::WorkloadExecutor;
    use crate::config::RelayerConfig;
    use crate::metrics::MailboxGauge;
    use crate::proto::{
        command::Action, command_result::Status, error::Code, GetClusterInfo, Ping,
    };
    use crate::supervisor::{spawn_actor, ExitReporter, StatusBoard};

    fn child(name: &str) -> ChildContext {
        ChildContext {
            name: name.into(),
            board: StatusBoard::new(),
            exit: ExitReporter::default(),
        }
    }

    fn command(id: &str, action: Action) -> Command {
        Command {
            command_id: id.into(),
            action: Some(action),
            ..Default::default()
        }
    }

    /// Drains what the router wrote, as `(kind, command_id, status)`.
    fn written(rc: &RelayContext, epoch: u64) -> Vec<(&'static str, String, i32)> {
        let mut frames = VecDeque::new();
        rc.outbox.take_ready(epoch, &mut frames, 1000);
        frames
            .into_iter()
            .map(|(frame, _)| match frame.body.unwrap() {
                Body::Accepted(a) => ("accepted", a.command_id, 0),
                Body::Result(r) => ("result", r.command_id, r.status),
                _ => ("other", String::new(), 0),
            })
            .collect()
    }

    async fn start(
        config: RelayerConfig,
    ) -> (
        Arc<RelayContext>,
        actix::Addr<CommandRouter>,
        u64,
        tempfile::TempDir,
    ) {
        let (rc, dir) = testing::context(config);
        let (executor, _) = spawn_actor(
            WorkloadExecutor::new(rc.clone(), child("WorkloadExecutor")),
            16,
            ExitReporter::default(),
        );
        rc.directory
            .set_executor(crate::actors::directory::ExecutorInbox::of(executor));
        let (router, _) = spawn_actor(
            CommandRouter::new(rc.clone(), child("CommandRouter")),
            16,
            ExitReporter::default(),
        );
        rc.directory
            .set_router(crate::actors::directory::RouterInbox::of(
                router.clone(),
                MailboxGauge::new(16),
            ));
        let epoch = rc.outbox.begin_session();
        rc.outbox.on_welcome(epoch, 0);
        (rc, router, epoch, dir)
    }

    #[actix_rt::test]
    async fn duplicate_of_an_in_flight_command_is_accepted_again_and_runs_once() {
        let (rc, router, epoch, _dir) = start(RelayerConfig::default()).await;
        let info = command("c1", Action::ClusterInfo(GetClusterInfo {}));
        router
            .send(IncomingCommands {
                commands: vec![info.clone(), info],
                draining: false,
            })
            .await
            .unwrap();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let frames = written(&rc, epoch);
        let accepted = frames.iter().filter(|f| f.0 == "accepted").count();
        let results: Vec<_> = frames.iter().filter(|f| f.0 == "result").collect();
        assert_eq!(accepted, 2, "{frames:?}");
        assert_eq!(results.len(), 1, "one execution, one result: {frames:?}");
        assert_eq!(rc.metrics.commands_in_flight.get(), 0);
    }

    #[actix_rt::test]
    async fn finished_ping_is_answered_from_cache() {
        let (rc, router, epoch, _dir) = start(RelayerConfig::default()).await;
        let ping = |len: usize| {
            command(
                "p1",
                Action::Ping(Ping {
                    payload: vec![0; len].into(),
                }),
            )
        };
        router
            .send(IncomingCommands {
                commands: vec![ping(3)],
                draining: false,
            })
            .await
            .unwrap();
        router
            .send(IncomingCommands {
                commands: vec![ping(9)],
                draining: false,
            })
            .await
            .unwrap();
        let mut frames = VecDeque::new();
        rc.outbox.take_ready(epoch, &mut frames, 100);
        let outputs: Vec<_> = frames
            .into_iter()
            .filter_map(|(f, _)| match f.body {
                Some(Body::Result(r)) => Some(String::from_utf8(r.output_json.to_vec()).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            outputs,
            vec![r#"{"payload_len":3}"#, r#"{"payload_len":3}"#]
        );
    }

    #[actix_rt::test]
    async fn commands_beyond_max_in_flight_are_refused_retryably() {
        let mut config = RelayerConfig::default();
        config.commands.max_in_flight = 1;
        let (rc, router, epoch, _dir) = start(config).await;
        let commands = (0..3)
            .map(|i| command(&format!("k{i}"), Action::ClusterInfo(GetClusterInfo {})))
            .collect();
        router
            .send(IncomingCommands {
                commands,
                draining: false,
            })
            .await
            .unwrap();
        let mut frames = VecDeque::new();
        rc.outbox.take_ready(epoch, &mut frames, 100);
        let refused: Vec<_> = frames
            .into_iter()
            .filter_map(|(f, _)| match f.body {
                Some(Body::Result(r))
                    if r.error.as_ref().is_some_and(|e| {
                        e.code == Code::Unavailable as i32 && e.message.contains("max_in_flight")
                    }) =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect();
        let ids: Vec<_> = refused.iter().map(|r| r.command_id.as_str()).collect();
        assert_eq!(ids, vec!["k1", "k2"], "k1 and k2 over the limit");
        assert!(refused.iter().all(|r| r.error.as_ref().unwrap().retryable));
        assert!(refused[0]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("max_in_flight"));
    }

    #[actix_rt::test]
    async fn empty_id_and_draining_are_rejected_and_not_cached() {
        let (rc, router, epoch, _dir) = start(RelayerConfig::default()).await;
        let ping = |id: &str| command(id, Action::Ping(Ping::default()));
        router
            .send(IncomingCommands {
                commands: vec![ping("")],
                draining: false,
            })
            .await
            .unwrap();
        router
            .send(IncomingCommands {
                commands: vec![ping("d1")],
                draining: true,
            })
            .await
            .unwrap();
        router
            .send(IncomingCommands {
                commands: vec![ping("d1")],
                draining: false,
            })
            .await
            .unwrap();
        let frames = written(&rc, epoch);
        let statuses: Vec<_> = frames
            .iter()
            .filter(|f| f.0 == "result")
            .map(|f| (f.1.as_str(), f.2))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("", Status::Rejected as i32),
                ("d1", Status::Rejected as i32),
                ("d1", Status::Succeeded as i32)
            ]
        );
    }
}
