//! The session's vocabulary: what a running session tells the actors above
//! it. `SessionEvent` goes to the ConnectionActor; `IncomingCommands` and
//! `CancelCommands` go to the CommandRouter. They live here, at the lower of
//! sender and receiver, so the session never names an actor: it holds
//! `Recipient`s of these messages.

use std::time::Duration;

use actix::Message;

use crate::credentials::Secret;
use crate::proto::Command;

/// What a running session tells its ConnectionActor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum SessionEvent {
    Handshaking,
    Welcomed {
        session_id: String,
        acked_seq: u64,
        heartbeat_interval: Duration,
        /// `Welcome.max_frame_bytes` (0 = the protocol's 4 MiB).
        max_frame_bytes: u32,
    },
    Draining {
        reason: String,
    },
    RotateCredentials {
        token: Secret,
    },
}

/// Commands read from the stream, in arrival order. `draining`: they arrived
/// after `Drain`, so they are answered UNAVAILABLE (retryable) without running.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct IncomingCommands {
    pub commands: Vec<Command>,
    pub draining: bool,
}

/// `CancelCommand` ids read from the stream.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CancelCommands(pub Vec<String>);
