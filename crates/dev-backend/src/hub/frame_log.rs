//! The debug log of reliable frames per cluster, in arrival order without
//! duplicates (`GET /api/v1/clusters/{id}/frames`, not part of the contract).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;

use super::registry::ClusterError;
use super::DevBackendState;

/// What a reliable frame carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Result,
    Event,
    Telemetry,
}

/// One reliable frame as received (debug endpoint `/frames`).
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    #[serde(serialize_with = "arc_str")]
    pub incarnation: Arc<str>,
    pub seq: u64,
    pub kind: FrameKind,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_arc_str"
    )]
    pub command_id: Option<Arc<str>>,
    /// Results: the status name (`SUCCEEDED`, `REJECTED`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// Results: a REJECTED the backend will send again (not final).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

fn arc_str<S: serde::Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

fn opt_arc_str<S: serde::Serializer>(
    value: &Option<Arc<str>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_str(value),
        None => serializer.serialize_none(),
    }
}

/// The `/frames` debug view.
#[derive(Debug, Clone, Serialize)]
pub struct FramesView {
    pub frames: Vec<FrameRecord>,
    pub duplicates: u64,
}

/// The last `capacity` reliable frames in arrival order (duplicates excluded).
#[derive(Debug)]
pub(crate) struct FrameLog {
    frames: VecDeque<FrameRecord>,
    capacity: usize,
}

impl FrameLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, record: FrameRecord) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(record);
    }
}

impl DevBackendState {
    /// Reliable frames in arrival order and the duplicate count (debug).
    pub fn frames(&self, cluster_id: &str) -> Result<FramesView, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let inner = cluster.inner.lock();
        Ok(FramesView {
            frames: inner.frames.frames.iter().cloned().collect(),
            duplicates: inner.dedup.duplicates(),
        })
    }
}
