//! The shared in-memory backend, [`DevBackendState`]: both servers
//! (`grpc.rs`, `admin.rs`) and in-process users (tests, benches, `demo`) go
//! through it. Its data is split by job, one submodule each, and every
//! submodule keeps its job's data next to the `DevBackendState` methods that
//! use it. Per-cluster data sits behind one short mutex (`cluster`).

mod cluster;
mod commands;
mod connect;
mod credentials;
mod dedup;
mod events;
mod faults;
mod frame_log;
mod inbound;
mod journal;
mod registration;
mod registry;
mod sessions;
mod stats;
mod telemetry;

use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use parking_lot::Mutex;

use consonant_secret::Secret;
use faults::FaultSwitches;
use registration::BootstrapTokens;
use registry::Registry;
use stats::Stats;

pub use commands::{CommandState, CommandView};
pub use faults::{Faults, FaultsUpdate, RejectCode};
pub use frame_log::{FrameKind, FrameRecord, FramesView};
pub use registration::RegisterError;
pub use registry::{ClusterError, ClusterView};
pub use sessions::SessionView;
pub use stats::StatsView;
pub use telemetry::TelemetryCounters;

pub(crate) use connect::SessionStart;
pub(crate) use inbound::FrameEffect;
pub(crate) use sessions::FrameSender;

/// The in-memory backend shared by the servers and in-process users.
#[derive(Debug)]
pub struct DevBackendState {
    clusters: Registry,
    bootstrap: Mutex<BootstrapTokens>,
    faults: FaultSwitches,
    /// Set by shutdown: every new `Connect` gets UNAVAILABLE.
    stopping: AtomicBool,
    pub(crate) stats: Stats,
    /// Signs commands submitted unsigned (`--signing-key`).
    signer: Option<std::sync::Arc<consonant_proto::signing::Signer>>,
    /// Where kept reliable frames are journaled before their ack (in
    /// process only, `DevBackendOptions::frame_journal`).
    journal: Option<journal::FrameJournal>,
}

impl DevBackendState {
    pub(crate) fn new(
        bootstrap_tokens: Vec<Secret>,
        signer: Option<std::sync::Arc<consonant_proto::signing::Signer>>,
        journal: Option<&std::path::Path>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            signer,
            journal: journal.map(journal::FrameJournal::open).transpose()?,
            clusters: Registry::default(),
            bootstrap: Mutex::new(BootstrapTokens::new(bootstrap_tokens)),
            faults: FaultSwitches::default(),
            stopping: AtomicBool::new(false),
            stats: Stats::default(),
        })
    }
}

/// Timestamps in the admin API's views.
fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
