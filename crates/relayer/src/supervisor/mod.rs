//! A small supervision layer on actix: child specs with factories, restart
//! types (permanent/transient/temporary), strategies (one_for_one,
//! rest_for_one), restart intensity with jittered restart delays,
//! escalation, and the status board the health endpoints read.

pub mod actor;
pub mod board;
pub mod child;
pub mod policy;

pub use actor::{Escalate, Escalation, Supervisor, SupervisorSpec};
pub use board::StatusBoard;
pub use child::{spawn_actor, ChildContext, ChildSpec, ExitReporter, Stop};
pub use policy::{Exit, Intensity, Restart, Strategy};
