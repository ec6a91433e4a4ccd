//! Cluster credentials: the redacting [`Secret`] type, and the store that
//! reads `clusterId`/`clusterToken` from their mounted files.

pub mod secret;

pub use secret::Secret;
