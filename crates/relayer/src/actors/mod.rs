//! The relayer's actors and the tree that supervises them. `actors.md` at
//! the repository root draws the tree and lists every message and policy.

pub mod cluster_watcher;
pub mod command_router;
pub mod connection_actor;
pub mod context;
pub mod credential_writer;
pub mod directory;
pub mod health_actor;
pub mod ledger;
pub mod messages;
pub mod telemetry_ingest;
pub mod tree;
pub mod workload_executor;

pub use context::{Identity, LinkStatus, RelayContext};
pub use directory::Directory;
