//! Cluster credentials: the redacting [`Secret`] type, and the
//! [`CredentialStore`] that reads `clusterId`/`clusterToken` from their
//! mounted files, follows Secret updates and holds a rotated token;
//! [`writeback`] puts a rotated token into the cluster Secret, and
//! [`namespace`] finds where that Secret lives.

pub mod namespace;
pub mod rotated;
pub mod store;
pub mod writeback;

pub use consonant_secret::Secret;
pub use store::{CredentialStore, Credentials, CredentialsError, WatchHandle};
