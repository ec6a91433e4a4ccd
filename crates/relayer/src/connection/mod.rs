//! The one outbound stream: the dialer, the session loop and its vocabulary
//! (`messages`), the outbox (priority queues, sequencing, replay buffer), the
//! frame limit, and the pure reconnect policy (`reconnect`: backoff,
//! circuit breaker, what a session's end means) with the states it moves
//! through. Nothing here names an actor.

pub mod breaker;
pub mod channel;
pub mod frame_limit;
pub mod messages;
pub mod outbox;
pub mod outbox_handle;
pub mod reconnect;
pub mod session;
pub mod state;
