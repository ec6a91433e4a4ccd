//! Everything that talks to the Kubernetes API: the client, discovery,
//! the actions the WorkloadExecutor runs, the error mapping, and (with
//! leader election) the cluster-event watcher.

pub mod actions;
pub mod client;
pub mod errors;
pub mod resolve;
