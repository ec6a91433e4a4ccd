//! Child specifications and how a child actor is started under supervision:
//! a factory makes a fresh actor for every (re)start, the actor runs as its
//! own task with a bounded mailbox, and the task's end — normal stop, reported
//! failure, or panic — is what the supervisor watches.

use std::rc::Rc;
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use parking_lot::Mutex;

use super::board::StatusBoard;
use super::policy::{Exit, Restart};
use crate::metrics::MailboxGauge;

/// Asks a supervised actor to stop (graceful: it finishes what it must first).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Lets a child tell its supervisor that it stopped because of a failure
/// rather than normally (a panic needs no report: it is seen directly).
#[derive(Debug, Clone, Default)]
pub struct ExitReporter(Arc<Mutex<Option<String>>>);

impl ExitReporter {
    pub fn fail(&self, reason: impl Into<String>) {
        *self.0.lock() = Some(reason.into());
    }

    fn take(&self) -> Option<String> {
        self.0.lock().take()
    }
}

/// What a factory gets each time its child starts.
#[derive(Debug, Clone)]
pub struct ChildContext {
    pub name: String,
    pub board: StatusBoard,
    pub exit: ExitReporter,
}

impl ChildContext {
    /// Reports this child's state on the board.
    pub fn set_state(&self, state: &str) {
        self.board.set_state(&self.name, state);
    }

    pub fn set_details(&self, details: serde_json::Value) {
        self.board.set_details(&self.name, details);
    }

    pub fn set_error(&self, error: Option<String>) {
        self.board.set_error(&self.name, error);
    }
}

/// A running child as its supervisor holds it.
pub struct RunningChild {
    pub(super) join: Option<actix_rt::task::JoinHandle<()>>,
    pub(super) abort: tokio::task::AbortHandle,
    pub(super) stop: Box<dyn Fn()>,
    pub(super) exit: ExitReporter,
}

impl RunningChild {
    /// How the child's task ended.
    pub(super) fn classify(
        outcome: Result<(), actix_rt::task::JoinError>,
        exit: &ExitReporter,
    ) -> Exit {
        match outcome {
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Exit::Failed(format!("panicked: {text}"))
            }
            Err(_) => Exit::Normal,
            Ok(()) => match exit.take() {
                Some(reason) => Exit::Failed(reason),
                None => Exit::Normal,
            },
        }
    }
}

type Factory = Rc<dyn Fn(ChildContext) -> RunningChild>;

/// One child of a supervisor: its name, restart type and factory.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    pub(super) factory: Factory,
}

impl ChildSpec {
    /// A child actor made fresh by `make` on every start. `mailbox` bounds
    /// its mailbox; the gauge it is given counts what waits in it. `publish`
    /// hands each new address to whoever routes to this actor.
    pub fn actor<A, F, P>(name: &str, restart: Restart, mailbox: usize, make: F, publish: P) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Stop>,
        F: Fn(ChildContext, MailboxGauge) -> A + 'static,
        P: Fn(Addr<A>, MailboxGauge) + 'static,
    {
        let factory = move |child: ChildContext| {
            let gauge = MailboxGauge::new(mailbox);
            child.board.actor_started(&child.name, gauge.clone());
            let exit = child.exit.clone();
            let actor = make(child, gauge.clone());
            let (addr, running) = spawn_actor(actor, mailbox, exit);
            publish(addr, gauge);
            running
        };
        Self {
            name: name.to_string(),
            restart,
            factory: Rc::new(factory),
        }
    }
}

/// Runs `actor` as its own task with a bounded mailbox.
pub fn spawn_actor<A>(actor: A, mailbox: usize, exit: ExitReporter) -> (Addr<A>, RunningChild)
where
    A: Actor<Context = Context<A>> + Handler<Stop>,
{
    let mut ctx: Context<A> = Context::new();
    ctx.set_mailbox_capacity(mailbox);
    let addr = ctx.address();
    let join = actix_rt::spawn(ctx.into_future(actor));
    let stop_addr = addr.clone();
    let running = RunningChild {
        abort: join.abort_handle(),
        join: Some(join),
        stop: Box::new(move || stop_addr.do_send(Stop)),
        exit,
    };
    (addr, running)
}
