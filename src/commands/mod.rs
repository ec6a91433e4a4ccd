//! Command handling logic without I/O: dedup, validation and the result
//! builders the CommandRouter and WorkloadExecutor share.

pub mod dedup;
pub mod outcome;
