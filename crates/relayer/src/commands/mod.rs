//! Command handling logic without I/O: admission (the protocol's check
//! order), the cluster lock (signed commands), dedup, validation and the result builders the CommandRouter and
//! WorkloadExecutor share, the command policy and the command rate limit.

pub mod admission;
pub mod dedup;
pub mod outcome;
pub mod policy;
pub mod rate;
pub mod signature;
pub mod validate;
