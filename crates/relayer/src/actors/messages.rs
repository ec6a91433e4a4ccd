//! The messages the actors send each other (the session's own messages are
//! in `connection::messages`). They live apart from the actors, so an actor
//! names the messages it sends, never the actor that receives them; the
//! `Directory` hands out `Recipient`s of these types.

use actix::Message;
use serde_json::Value;

use super::ledger::CommandTicket;
use crate::commands::outcome::CommandError;
use crate::commands::validate::{KubeRequest, ValidatedCommand};
use crate::credentials::Secret;
use crate::proto::Command;

// Router → executor.
/// Run one admitted command. Its `ticket` is the answer it is owed: if this
/// message is lost with a mailbox, the ticket answers for it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Execute {
    pub command: Command,
    pub action: &'static str,
    pub request: KubeRequest,
    /// The command's span (`Span::none()` when span export is off); the
    /// Kubernetes request runs inside it.
    pub span: tracing::Span,
    pub ticket: CommandTicket,
}

// Validation thread → router.
/// A manifest validated off the actors' thread: the router finishes the
/// admission decision (deadline, policy, rate, capacity) now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Validated {
    pub command: Command,
    pub action: &'static str,
    pub span: tracing::Span,
    pub validation: Result<ValidatedCommand, CommandError>,
    pub ticket: CommandTicket,
}

// ClusterWatcher → ConnectionActor.
/// This replica won or lost the leader Lease: the backend learns it from
/// `Hello.leader`, so a live stream is re-opened to announce it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LeadershipChanged {
    pub leader: bool,
}

// ConnectionActor → CredentialWriter.
/// Why a token is written: shown in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// The backend sent `RotateCredentials`.
    Rotation,
    /// The backend refused the rotated token; the previous one goes back.
    Rollback,
}

impl WriteReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rotation => "rotation",
            Self::Rollback => "rollback",
        }
    }
}

/// Write `token` into the Secret's `clusterToken`. Answers `Ok(true)` when
/// written, `Ok(false)` when write-back is off (`credentials.secret_name`
/// empty), `Err` with the reason otherwise.
#[derive(Message)]
#[rtype(result = "Result<bool, String>")]
pub struct WriteBackToken {
    pub token: Secret,
    pub reason: WriteReason,
}

impl std::fmt::Debug for WriteBackToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBackToken")
            .field("token", &"***")
            .field("reason", &self.reason)
            .finish()
    }
}

// The HTTP server → HealthActor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Alive;

#[derive(Debug, Message)]
#[rtype(result = "Value")]
pub struct GetHealth;

/// `Ok(())` when ready, else why not.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct GetReadiness;

#[derive(Debug, Message)]
#[rtype(result = "Value")]
pub struct GetActors;

#[derive(Debug, Message)]
#[rtype(result = "String")]
pub struct RenderMetrics;
