//! Fault injection for tests (`/api/v1/debug/faults`, not part of the
//! contract): withheld acks, a silent backend, refused streams, and ending
//! every open stream once.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use super::DevBackendState;

/// Fault injection for tests (not part of the contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Faults {
    /// Receive and dedup frames but send no `Ack`.
    pub withhold_acks: bool,
    /// Send no heartbeats and no acks, keep reading.
    pub silent: bool,
    /// Refuse every new `Connect` with this status.
    pub reject_all: Option<RejectCode>,
}

/// Statuses `Faults::reject_all` can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectCode {
    Unauthenticated,
    Unavailable,
    ResourceExhausted,
}

impl RejectCode {
    pub(crate) fn code(self) -> Code {
        match self {
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Unavailable => Code::Unavailable,
            Self::ResourceExhausted => Code::ResourceExhausted,
        }
    }
}

/// A partial update of `Faults`: absent fields keep their value;
/// `reject_all: null` clears it; `end_streams: true` ends all open streams
/// with UNAVAILABLE once.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsUpdate {
    #[serde(default)]
    pub withhold_acks: Option<bool>,
    #[serde(default)]
    pub silent: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    pub reject_all: Option<Option<RejectCode>>,
    #[serde(default)]
    pub end_streams: Option<bool>,
}

/// Tells an explicit `null` (`Some(None)`: clear) from an absent field
/// (`None`: keep), which plain `Option<Option<_>>` cannot.
fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<RejectCode>>, D::Error> {
    Option::<RejectCode>::deserialize(d).map(Some)
}

/// The faults in force, as atomics: the session loops read them on every
/// ack and heartbeat without taking a lock.
#[derive(Debug, Default)]
pub(crate) struct FaultSwitches {
    withhold_acks: AtomicBool,
    silent: AtomicBool,
    /// 0 = none, else `RejectCode` index + 1.
    reject_all: AtomicU8,
}

impl FaultSwitches {
    fn get(&self) -> Faults {
        let reject_all = match self.reject_all.load(Relaxed) {
            1 => Some(RejectCode::Unauthenticated),
            2 => Some(RejectCode::Unavailable),
            3 => Some(RejectCode::ResourceExhausted),
            _ => None,
        };
        Faults {
            withhold_acks: self.withhold_acks.load(Relaxed),
            silent: self.silent.load(Relaxed),
            reject_all,
        }
    }

    /// Applies the switches of `update` (`end_streams` is an action, not a switch).
    fn set(&self, update: &FaultsUpdate) {
        if let Some(value) = update.withhold_acks {
            self.withhold_acks.store(value, Relaxed);
        }
        if let Some(value) = update.silent {
            self.silent.store(value, Relaxed);
        }
        if let Some(reject) = update.reject_all {
            let code = match reject {
                None => 0,
                Some(RejectCode::Unauthenticated) => 1,
                Some(RejectCode::Unavailable) => 2,
                Some(RejectCode::ResourceExhausted) => 3,
            };
            self.reject_all.store(code, Relaxed);
        }
    }
}

impl DevBackendState {
    pub fn faults(&self) -> Faults {
        self.faults.get()
    }

    /// Applies a partial fault update and returns the faults now in force.
    pub fn set_faults(&self, update: FaultsUpdate) -> Faults {
        self.faults.set(&update);
        if update.end_streams == Some(true) {
            let ended = self.end_all_streams(&Status::unavailable(
                "stream ended by fault injection (end_streams)",
            ));
            tracing::info!(sessions = ended, "fault injection ended all streams");
        }
        let faults = self.faults();
        tracing::info!(?faults, "faults updated");
        faults
    }

    pub(crate) fn acks_enabled(&self) -> bool {
        let faults = &self.faults;
        !faults.withhold_acks.load(Relaxed) && !faults.silent.load(Relaxed)
    }

    pub(crate) fn heartbeats_enabled(&self) -> bool {
        !self.faults.silent.load(Relaxed)
    }
}
