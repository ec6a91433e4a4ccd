//! `CommandRouter`: takes every command the session reads, decides its fate
//! in the protocol's order — dedup, validation, deadline, capacity — answers
//! Ping itself, hands Kubernetes actions to the WorkloadExecutor, and puts
//! each answer (`CommandAccepted`, `CommandResult`) into the outbox. Every
//! command gets exactly one result per execution.
//!
//! It owns no state that must survive it: the dedup cache and the in-flight
//! gauge live in the `RelayContext`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use actix::{Actor, ActorContext, Context, Handler};
use serde_json::json;

use super::context::RelayContext;
use super::messages::{Cancel, CommandFinished, Execute};
use crate::clock::now_unix_ms;
use crate::commands::admission::{admit, Admission, Gate};
use crate::commands::dedup::Seen;
use crate::commands::outcome::{action_name, rejected, status_name, succeeded, CommandError};
use crate::commands::validate::ValidatedCommand;
use crate::connection::messages::{CancelCommands, IncomingCommands};
use crate::observability::command_span::record_result;
use crate::proto::{command_result::Status, relayer_frame::Body, Command, CommandAccepted};
use crate::supervisor::{ChildContext, Stop};

pub struct CommandRouter {
    rc: Arc<RelayContext>,
    child: ChildContext,
    handled: u64,
    /// Resolved `commands_total` counters: counting is then one atomic add.
    counters: HashMap<(&'static str, &'static str), Counter>,
}

impl CommandRouter {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            handled: 0,
            counters: HashMap::new(),
        }
    }

    fn count(&mut self, action: &'static str, status: &'static str) {
        let metrics = &self.rc.metrics;
        self.counters
            .entry((action, status))
            .or_insert_with(|| {
                metrics
                    .commands
                    .get_or_create_owned(&crate::metrics::CommandLabels {
                        action: action.to_string(),
                        status: status.to_string(),
                    })
            })
            .inc();
    }

    fn publish(&self) {
        let dedup = self.rc.dedup.lock();
        self.rc.metrics.dedup_entries.set(dedup.len() as i64);
        self.rc.metrics.dedup_evictions.set(dedup.evicted());
        self.child.set_details(json!({
            "in_flight": self.rc.metrics.commands_in_flight.get(),
            "max_in_flight": self.rc.config.commands.max_in_flight,
            "dedup_entries": dedup.len(),
            "dedup_evicted": dedup.evicted(),
            "handled": self.handled,
        }));
    }

    /// Carries out the admission decision for one command. Answers go to
    /// `out`, written to the outbox once per batch.
    fn route(&mut self, mut command: Command, draining: bool, out: &mut Answers) {
        let action = action_name(&command).unwrap_or("none");
        let rc = self.rc.clone();
        let gate = Gate {
            policy: &rc.policy,
            limits: &rc.limits,
            draining,
            kubernetes_enabled: rc.config.kubernetes.enabled,
            in_flight: rc.metrics.commands_in_flight.get(),
            max_in_flight: rc.config.commands.max_in_flight,
            replay_has_room: rc.outbox.has_room_for_result(),
            now_unix_ms: now_unix_ms(),
        };
        let decision = admit(
            &command,
            &gate,
            |id| rc.dedup.lock().check_and_begin(id, Instant::now()),
            || rc.rate.try_acquire(),
        );
        let validated = match decision {
            Admission::Unidentified(error) => {
                // Answered with an empty id: an unusable one never goes on.
                command.command_id.clear();
                out.reject(&rc, &command, action, &error);
                return;
            }
            Admission::DuplicateInFlight => {
                tracing::debug!(command_id = %command.command_id, "duplicate of an in-flight command: accepted again");
                out.accepted.push(accepted(&command));
                return;
            }
            Admission::DuplicateFinished(result) => {
                tracing::debug!(command_id = %command.command_id, "duplicate of a finished command: cached result sent again");
                out.results.push(Body::Result(result));
                return;
            }
            Admission::Refused(error) => {
                // The span's context goes into the answer (see `observability`).
                let span = rc.command_tracing.start(&mut command, action);
                rc.dedup.lock().forget(&command.command_id);
                out.reject(&rc, &command, action, &error);
                if let Some(Body::Result(result)) = out.results.last() {
                    record_result(&span, result);
                }
                return;
            }
            Admission::Admitted(validated) => validated,
        };
        // From here the command gets one span, and its answers carry the
        // span's trace context (see `observability`).
        let span = rc.command_tracing.start(&mut command, action);
        match validated {
            ValidatedCommand::Ping { payload_len } => {
                let started = now_unix_ms();
                let result = succeeded(&command, &json!({ "payload_len": payload_len }), started);
                record_result(&span, &result);
                self.rc.dedup.lock().finish(result.clone(), Instant::now());
                self.count(action, "succeeded");
                tracing::info!(target: "audit", command_id = %command.command_id, action, target = "", outcome = "succeeded", duration_ms = 0u64, "command");
                out.accepted.push(accepted(&command));
                out.results.push(Body::Result(result));
            }
            ValidatedCommand::Kube(request) => match self.rc.directory.executor() {
                Some(executor) => {
                    self.rc.metrics.commands_in_flight.inc();
                    out.accepted.push(accepted(&command));
                    // The executor's mailbox is bounded by max_in_flight, which admit() enforces.
                    executor.execute.do_send(Execute {
                        command,
                        action,
                        request,
                        span,
                    });
                }
                None => {
                    self.rc.dedup.lock().forget(&command.command_id);
                    out.reject(
                        &self.rc,
                        &command,
                        action,
                        &CommandError::busy("the workload executor is restarting; retry shortly"),
                    );
                    if let Some(Body::Result(result)) = out.results.last() {
                        record_result(&span, result);
                    }
                }
            },
        }
    }
}

/// Answers collected over one batch.
#[derive(Default)]
struct Answers {
    accepted: Vec<Body>,
    results: Vec<Body>,
}

impl Answers {
    fn reject(&mut self, rc: &RelayContext, command: &Command, action: &str, error: &CommandError) {
        tracing::info!(target: "audit", command_id = %command.command_id, action, outcome = "rejected", code = ?error.code(), "command");
        tracing::debug!(command_id = %command.command_id, action, code = ?error.code(), %error, "command rejected");
        rc.metrics.count_command(action, "rejected");
        self.results.push(Body::Result(rejected(command, error)));
    }
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
        let mut answers = Answers::default();
        for command in msg.commands {
            self.handled += 1;
            self.route(command, msg.draining, &mut answers);
        }
        self.rc
            .outbox
            .push_results(answers.accepted, answers.results);
        self.publish();
    }
}

impl Handler<CancelCommands> for CommandRouter {
    type Result = ();

    fn handle(&mut self, msg: CancelCommands, _: &mut Context<Self>) {
        for command_id in msg.0 {
            match self.rc.dedup.lock().peek(&command_id) {
                Seen::InFlight => match self.rc.directory.executor() {
                    Some(executor) => executor.cancel.do_send(Cancel { command_id }),
                    None => {
                        tracing::debug!(%command_id, "cancel for a command whose executor is restarting")
                    }
                },
                _ => {
                    tracing::debug!(%command_id, "cancel for an unknown or finished command: ignored")
                }
            }
        }
    }
}

impl Handler<CommandFinished> for CommandRouter {
    type Result = ();

    fn handle(&mut self, msg: CommandFinished, _: &mut Context<Self>) {
        self.rc.metrics.commands_in_flight.dec();
        let status = status_name(msg.result.status);
        self.count(msg.action, status);
        {
            let mut dedup = self.rc.dedup.lock();
            if msg.ran && msg.result.status != Status::Rejected as i32 {
                dedup.finish(msg.result.clone(), Instant::now());
            } else {
                dedup.forget(&msg.result.command_id);
            }
        }
        self.rc.outbox.push_result(Body::Result(msg.result));
        self.publish();
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
    use crate::proto::{command::Action, error::Code, GetClusterInfo, Ping};
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
