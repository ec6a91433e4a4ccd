//! Process-wide counters (`GET /api/v1/debug/stats`, not part of the
//! contract): every `Connect` attempt, accepted or not, and what flowed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use super::DevBackendState;

/// Process-wide counters, bumped where the thing they count happens.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connects_refused: AtomicU64,
    pub(crate) sessions_started: AtomicU64,
    pub(crate) sessions_ended: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) duplicate_frames: AtomicU64,
    pub(crate) acks_sent: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) commands_submitted: AtomicU64,
    pub(crate) commands_sent: AtomicU64,
    pub(crate) results_received: AtomicU64,
    pub(crate) telemetry_decode_errors: AtomicU64,
}

/// A snapshot of `Stats` plus live gauges.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub connect_attempts: u64,
    pub connects_refused: u64,
    pub sessions_started: u64,
    pub sessions_ended: u64,
    pub sessions_open: u64,
    pub frames_received: u64,
    pub duplicate_frames: u64,
    pub acks_sent: u64,
    pub heartbeats_sent: u64,
    pub commands_submitted: u64,
    pub commands_sent: u64,
    pub results_received: u64,
    pub telemetry_decode_errors: u64,
}

impl DevBackendState {
    pub fn stats(&self) -> StatsView {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Relaxed);
        let (started, ended) = (get(&s.sessions_started), get(&s.sessions_ended));
        StatsView {
            connect_attempts: get(&s.connect_attempts),
            connects_refused: get(&s.connects_refused),
            sessions_started: started,
            sessions_ended: ended,
            sessions_open: started.saturating_sub(ended),
            frames_received: get(&s.frames_received),
            duplicate_frames: get(&s.duplicate_frames),
            acks_sent: get(&s.acks_sent),
            heartbeats_sent: get(&s.heartbeats_sent),
            commands_submitted: get(&s.commands_submitted),
            commands_sent: get(&s.commands_sent),
            results_received: get(&s.results_received),
            telemetry_decode_errors: get(&s.telemetry_decode_errors),
        }
    }
}
