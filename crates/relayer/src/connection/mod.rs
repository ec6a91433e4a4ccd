//! The one outbound stream: backoff, circuit breaker, the outbox (priority
//! queues, sequencing, replay buffer), TLS/channel setup and the session loop.

pub mod breaker;
pub mod channel;
pub mod frame_limit;
pub mod messages;
pub mod outbox;
pub mod outbox_handle;
pub mod reconnect;
pub mod session;
pub mod state;
