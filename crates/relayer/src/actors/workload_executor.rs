//! `WorkloadExecutor`: runs admitted Kubernetes actions concurrently (up to
//! `commands.max_in_flight`, which the router enforces), each bounded by its
//! deadline (TIMED_OUT; the Kubernetes request is dropped, which aborts it)
//! and cancellable (CANCELLED). Each command ends by settling its
//! `CommandTicket` (`actors::ledger`): the result goes to the outbox and
//! dedup directly, through no other actor.
//!
//! The Kubernetes client and the running commands' cancel tokens live in the
//! `RelayContext`, and each command runs as its own tokio task holding its
//! ticket, so a restart of this actor (or of the router) neither loses a
//! result nor leaves a command unanswered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use super::ledger::Stage;
use super::messages::Execute;
use crate::clock::now_unix_ms;
use crate::commands::outcome::{ended, status_name, succeeded, CommandError};
use crate::config::ALL_ACTIONS;
use crate::kube::actions::Executor;
use crate::proto::command_result::Status;
use crate::supervisor::{ChildContext, Stop};
use tracing::Instrument;

/// Kubernetes actions this executor runs (announced in `Hello.capabilities`
/// when `kubernetes.enabled`).
/// Every action but `ping` (which the router answers itself).
pub const SUPPORTED_ACTIONS: &[&str] = ALL_ACTIONS.split_at(1).1;

/// Room kept in a frame for everything but `output_json`.
const FRAME_OVERHEAD: usize = 4 * 1024;
/// How long to wait before retrying a failed client setup.
const CLIENT_RETRY: Duration = Duration::from_secs(5);

pub struct WorkloadExecutor {
    rc: Arc<RelayContext>,
    child: ChildContext,
    started: u64,
}

impl WorkloadExecutor {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            started: 0,
        }
    }

    fn publish(&self) {
        let ready = self.rc.kube.read().is_some();
        self.child.set_state(if ready {
            "Ready"
        } else {
            "ConnectingToKubernetes"
        });
        self.child.set_details(json!({
            "kubernetes_ready": ready,
            "running": self.rc.running.lock().len(),
            "started": self.started,
            "supported_actions": SUPPORTED_ACTIONS,
        }));
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if !self.rc.config.kubernetes.enabled || self.rc.kube.read().is_some() {
            self.publish();
            return;
        }
        let rc = self.rc.clone();
        let fut = async move { crate::kube::client::connect(&rc.config.kubernetes).await };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(fut).map(|result, act, ctx| {
            match result {
                Ok(client) => {
                    tracing::info!("Kubernetes client ready");
                    let cluster_scoped_allowed = act.rc.config.commands.allowed_namespaces.iter().any(|n| n == "*");
                    *act.rc.kube.write() = Some(Arc::new(Executor::new(client, cluster_scoped_allowed)));
                    act.child.set_error(None);
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot build the Kubernetes client; retrying");
                    act.child.set_error(Some(err.to_string()));
                    *act.rc.kube_error.write() = Some(err.to_string());
                    ctx.run_later(CLIENT_RETRY, |act, ctx| act.connect(ctx));
                }
            }
            act.publish();
        }));
    }
}

impl Actor for WorkloadExecutor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        self.connect(ctx);
    }
}

impl Handler<Execute> for WorkloadExecutor {
    type Result = ();

    fn handle(&mut self, msg: Execute, _: &mut Context<Self>) {
        let Execute {
            command,
            action,
            request,
            span,
            mut ticket,
        } = msg;
        fail::fail_point!("executor-execute");
        let Some(kube) = self.rc.kube.read().clone() else {
            let why = self
                .rc
                .kube_error
                .read()
                .clone()
                .unwrap_or_else(|| "still connecting".into());
            ticket.refuse(&CommandError::busy(format!(
                "the Kubernetes client is not ready ({why}); retry shortly"
            )));
            return;
        };
        self.started += 1;
        ticket.advance(Stage::Running);
        let cancel = CancellationToken::new();
        self.rc
            .running
            .lock()
            .insert(command.command_id.clone(), cancel.clone());
        let timeout = if command.deadline_unix_ms > 0 {
            Duration::from_millis(
                command
                    .deadline_unix_ms
                    .saturating_sub(now_unix_ms())
                    .max(0) as u64,
            )
        } else {
            self.rc.config.commands.default_timeout
        };
        let max_output = self.rc.max_frame_bytes().saturating_sub(FRAME_OVERHEAD);
        let rc = self.rc.clone();
        let task_span = span.clone();
        let task = async move {
            // Tests hold commands running here while actors restart.
            #[cfg(feature = "failpoints")]
            if let Some(delay_ms) = fail::eval("executor-run-delay", |arg| {
                arg.and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0)
            }) {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            let started_ms = now_unix_ms();
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = cancel.cancelled() => Err((Status::Cancelled, CommandError::Cancelled("cancelled by the backend before it finished".into()))),
                _ = tokio::time::sleep(timeout) => Err((Status::TimedOut, CommandError::DeadlineExceeded(format!(
                    "did not finish within {timeout:?} (the command's deadline or commands.default_timeout); the Kubernetes request was aborted"
                )))),
                output = kube.run(&request, &command.command_id) => output.map_err(|error| match error {
                    // A policy refusal is a refusal, wherever it is decided:
                    // REJECTED, and not cached (the router forgets it).
                    CommandError::PolicyForbidden(_) => (Status::Rejected, error),
                    error => (Status::Failed, error),
                }),
            };
            let result = match outcome {
                Ok(output) => {
                    let result = succeeded(&command, &output, started_ms);
                    if result.output_json.len() > max_output {
                        let error = CommandError::InvalidArgument(format!(
                            "the output is {} bytes, more than fits in one frame ({max_output}); narrow the request (list limit, logs tail_lines or limit_bytes)",
                            result.output_json.len()
                        ));
                        ended(&command, Status::Failed, &error, started_ms)
                    } else {
                        result
                    }
                }
                Err((status, error)) => ended(&command, status, &error, started_ms),
            };
            rc.running.lock().remove(&command.command_id);
            tracing::info!(
                target: "audit",
                command_id = %command.command_id,
                action,
                key_id = crate::commands::signature::verified_key_id(&command),
                target = %request.target_summary(),
                outcome = status_name(result.status),
                duration_ms = started.elapsed().as_millis() as u64,
                "command"
            );
            ticket.settle(result);
        };
        tokio::spawn(task.instrument(task_span));
        self.publish();
    }
}

impl Handler<Stop> for WorkloadExecutor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
