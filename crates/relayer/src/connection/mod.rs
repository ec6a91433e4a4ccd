//! The one outbound stream: backoff, circuit breaker, the outbox (priority
//! queues, sequencing, replay buffer), TLS/channel setup and the session loop.

pub mod backoff;
pub mod breaker;
pub mod channel;
pub mod outbox;
pub mod outbox_handle;
pub mod session;
