//! One cluster's state: a field per job (credentials, sessions, commands,
//! dedup, frame log, events, telemetry), all behind one short mutex so that
//! a frame's effects on several of them are applied together.

use std::sync::Arc;

use parking_lot::Mutex;

use super::commands::CommandBook;
use super::credentials::Credentials;
use super::dedup::Dedup;
use super::events::EventLog;
use super::frame_log::FrameLog;
use super::sessions::Sessions;
use super::telemetry::TelemetryTally;
use consonant_secret::Secret;

/// Completed commands kept per cluster (older ones are forgotten).
const MAX_COMPLETED_COMMANDS: usize = 100_000;
/// Reliable frames kept per cluster for the `/frames` debug endpoint.
const MAX_FRAME_LOG: usize = 200_000;
/// Cluster events kept per cluster.
const MAX_EVENTS: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) id: Arc<str>,
    pub(crate) inner: Mutex<ClusterInner>,
}

impl Cluster {
    pub(crate) fn new(id: Arc<str>, name: String, token: Secret) -> Self {
        Self {
            id,
            inner: Mutex::new(ClusterInner::new(name, token)),
        }
    }
}

/// Everything about one cluster, guarded by `Cluster::inner`.
#[derive(Debug)]
pub(crate) struct ClusterInner {
    pub(crate) name: String,
    pub(crate) credentials: Credentials,
    pub(crate) revoked: bool,
    pub(crate) sessions: Sessions,
    pub(crate) commands: CommandBook,
    pub(crate) dedup: Dedup,
    pub(crate) frames: FrameLog,
    pub(crate) events: EventLog,
    pub(crate) telemetry: TelemetryTally,
}

impl ClusterInner {
    fn new(name: String, token: Secret) -> Self {
        Self {
            name,
            credentials: Credentials::new(token),
            revoked: false,
            sessions: Sessions::default(),
            commands: CommandBook::new(MAX_COMPLETED_COMMANDS),
            dedup: Dedup::default(),
            frames: FrameLog::new(MAX_FRAME_LOG),
            events: EventLog::new(MAX_EVENTS),
            telemetry: TelemetryTally::default(),
        }
    }
}
