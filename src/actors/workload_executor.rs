//! `WorkloadExecutor`: runs Kubernetes actions for the CommandRouter and
//! answers each with `CommandFinished`.
//!
//! This release executes no Kubernetes action yet: it answers every one
//! REJECTED/UNSUPPORTED, and `Hello.capabilities` lists only what
//! [`SUPPORTED_ACTIONS`] holds, so a backend that reads capabilities never
//! sends them. The Kubernetes executor replaces this behaviour.

use std::sync::Arc;

use actix::{Actor, ActorContext, Context, Handler, Message};
use serde_json::json;

use super::command_router::CommandFinished;
use super::context::RelayContext;
use crate::commands::outcome::{rejected, CommandError};
use crate::proto::Command;
use crate::supervisor::{ChildContext, Stop};

/// Kubernetes actions this executor can run (announced in `Hello.capabilities`).
pub const SUPPORTED_ACTIONS: &[&str] = &[];

/// Run one admitted command. `action` is its name.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: Command,
    pub action: &'static str,
}

/// Cancel a running command.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Cancel {
    pub command_id: String,
}

pub struct WorkloadExecutor {
    rc: Arc<RelayContext>,
    child: ChildContext,
    answered: u64,
}

impl WorkloadExecutor {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            answered: 0,
        }
    }

    fn finish(&mut self, finished: CommandFinished) {
        self.answered += 1;
        match self.rc.directory.router() {
            Some((router, _)) => router.do_send(finished),
            None => {
                // No router to take it: the result still must not be lost.
                self.rc.metrics.commands_in_flight.dec();
                self.rc
                    .outbox
                    .push_result(crate::proto::relayer_frame::Body::Result(finished.result));
            }
        }
        self.child.set_details(
            json!({ "answered": self.answered, "supported_actions": SUPPORTED_ACTIONS }),
        );
    }
}

impl Actor for WorkloadExecutor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.child.set_state("Ready");
        self.child
            .set_details(json!({ "answered": 0, "supported_actions": SUPPORTED_ACTIONS }));
    }
}

impl Handler<Execute> for WorkloadExecutor {
    type Result = ();

    fn handle(&mut self, msg: Execute, _: &mut Context<Self>) {
        let error = CommandError::Unsupported(format!(
            "action {} is not supported by relayer {}: it runs only the actions listed in Hello.capabilities",
            msg.action,
            env!("CARGO_PKG_VERSION")
        ));
        let result = rejected(&msg.command, &error);
        self.finish(CommandFinished {
            result,
            action: msg.action,
            ran: false,
        });
    }
}

impl Handler<Cancel> for WorkloadExecutor {
    type Result = ();

    fn handle(&mut self, msg: Cancel, _: &mut Context<Self>) {
        tracing::debug!(command_id = %msg.command_id, "cancel for a command this executor is not running: ignored");
    }
}

impl Handler<Stop> for WorkloadExecutor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
