//! Consonant Relayer: a cluster-resident agent that keeps one outbound gRPC
//! stream to a Consonant backend, runs the backend's commands against the
//! Kubernetes API and forwards agent telemetry. `actors.md` at the repository
//! root maps the supervision tree onto these modules.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod actors;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod egress;
pub mod error_chain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod keytool;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod observability;
pub mod register;
pub mod relayer;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod watch;

/// The wire protocol (`consonant-proto`), re-exported so `crate::proto` names it.
pub use consonant_proto as proto;
