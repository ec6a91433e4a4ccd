//! The WorkloadExecutor's side of the Kubernetes API: the client, discovery
//! and resolution of a validated target to an API resource, the actions it
//! runs (taking `commands::validate::KubeRequest` as it is), and the one
//! mapping of Kubernetes errors to protocol codes. The cluster-event
//! watcher and leader election are in `watch`.

pub mod actions;
pub mod client;
pub mod errors;
pub mod resolve;
pub mod retry;
