//! `Directory`: the current inbox of each actor, replaced on every restart.
//! It hands out `Recipient`s of the message types in `actors::messages` and
//! `connection::messages`, never an actor's concrete `Addr`, so the shared
//! context names no actor and no actor names another: only the tree
//! (`actors::tree`) knows which actor stands behind which inbox.

use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Recipient};
use parking_lot::RwLock;

use super::messages::{
    Alive, Execute, GetActors, GetHealth, GetReadiness, LeadershipChanged, RenderMetrics,
    Validated, WriteBackToken,
};
use crate::connection::messages::{CancelCommands, IncomingCommands};
use crate::metrics::MailboxGauge;

/// Where commands go: the CommandRouter's messages, and the gauge that
/// counts the session's deliveries to it.
#[derive(Clone)]
pub struct RouterInbox {
    pub commands: Recipient<IncomingCommands>,
    pub cancels: Recipient<CancelCommands>,
    pub validated: Recipient<Validated>,
    pub gauge: MailboxGauge,
}

impl RouterInbox {
    pub fn of<A>(addr: Addr<A>, gauge: MailboxGauge) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<IncomingCommands>
            + Handler<CancelCommands>
            + Handler<Validated>,
    {
        Self {
            commands: addr.clone().recipient(),
            cancels: addr.clone().recipient(),
            validated: addr.recipient(),
            gauge,
        }
    }
}

/// Where admitted Kubernetes commands go: the WorkloadExecutor's messages.
#[derive(Clone)]
pub struct ExecutorInbox {
    pub execute: Recipient<Execute>,
}

impl ExecutorInbox {
    pub fn of<A>(addr: Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Execute>,
    {
        Self {
            execute: addr.recipient(),
        }
    }
}

/// What the HTTP endpoints ask: the HealthActor's messages.
#[derive(Clone)]
pub struct HealthInbox {
    pub alive: Recipient<Alive>,
    pub health: Recipient<GetHealth>,
    pub readiness: Recipient<GetReadiness>,
    pub actors: Recipient<GetActors>,
    pub metrics: Recipient<RenderMetrics>,
}

impl HealthInbox {
    pub fn of<A>(addr: Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<Alive>
            + Handler<GetHealth>
            + Handler<GetReadiness>
            + Handler<GetActors>
            + Handler<RenderMetrics>,
    {
        Self {
            alive: addr.clone().recipient(),
            health: addr.clone().recipient(),
            readiness: addr.clone().recipient(),
            actors: addr.clone().recipient(),
            metrics: addr.recipient(),
        }
    }
}

/// The current inbox of each actor; `None` until it first starts.
#[derive(Default, Clone)]
pub struct Directory {
    router: Arc<RwLock<Option<RouterInbox>>>,
    executor: Arc<RwLock<Option<ExecutorInbox>>>,
    connection: Arc<RwLock<Option<Recipient<LeadershipChanged>>>>,
    health: Arc<RwLock<Option<HealthInbox>>>,
    credential_writer: Arc<RwLock<Option<Recipient<WriteBackToken>>>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("router", &self.router.read().is_some())
            .field("executor", &self.executor.read().is_some())
            .field("connection", &self.connection.read().is_some())
            .field("health", &self.health.read().is_some())
            .field(
                "credential_writer",
                &self.credential_writer.read().is_some(),
            )
            .finish()
    }
}

impl Directory {
    pub fn router(&self) -> Option<RouterInbox> {
        self.router.read().clone()
    }
    pub fn set_router(&self, inbox: RouterInbox) {
        *self.router.write() = Some(inbox);
    }
    pub fn executor(&self) -> Option<ExecutorInbox> {
        self.executor.read().clone()
    }
    pub fn set_executor(&self, inbox: ExecutorInbox) {
        *self.executor.write() = Some(inbox);
    }
    /// The ConnectionActor, for leadership changes.
    pub fn connection(&self) -> Option<Recipient<LeadershipChanged>> {
        self.connection.read().clone()
    }
    pub fn set_connection(&self, inbox: Recipient<LeadershipChanged>) {
        *self.connection.write() = Some(inbox);
    }
    pub fn health(&self) -> Option<HealthInbox> {
        self.health.read().clone()
    }
    pub fn set_health(&self, inbox: HealthInbox) {
        *self.health.write() = Some(inbox);
    }
    pub fn credential_writer(&self) -> Option<Recipient<WriteBackToken>> {
        self.credential_writer.read().clone()
    }
    pub fn set_credential_writer(&self, inbox: Recipient<WriteBackToken>) {
        *self.credential_writer.write() = Some(inbox);
    }
}
