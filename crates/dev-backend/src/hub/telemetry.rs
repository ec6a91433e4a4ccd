//! Telemetry per cluster: items counted from the decoded OTLP of each batch,
//! and the drops each relayer incarnation reported in `Hello`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::registry::ClusterError;
use super::DevBackendState;
use crate::otlp::OtlpCounts;

/// Telemetry counted from decoded OTLP (`GET .../telemetry`, keys exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TelemetryCounters {
    pub batches: u64,
    pub spans: u64,
    pub metric_points: u64,
    pub log_records: u64,
    pub bytes: u64,
    /// Sum over incarnations of `Hello.telemetry_stats.items_dropped`.
    pub dropped_reported: u64,
}

/// One cluster's telemetry so far.
#[derive(Debug, Default)]
pub(crate) struct TelemetryTally {
    counted: TelemetryCounters,
    /// `Hello` carries the drops since that incarnation started, so the
    /// latest report replaces the one before instead of adding to it.
    dropped_by_incarnation: HashMap<Arc<str>, u64>,
}

impl TelemetryTally {
    /// Counts one batch; `counts` is `None` when its OTLP did not decode.
    pub(crate) fn record_batch(&mut self, otlp_bytes: usize, counts: Option<OtlpCounts>) {
        let t = &mut self.counted;
        t.batches += 1;
        t.bytes += otlp_bytes as u64;
        if let Some(c) = counts {
            t.spans += c.spans;
            t.metric_points += c.metric_points;
            t.log_records += c.log_records;
        }
    }

    pub(crate) fn report_dropped(&mut self, incarnation: &Arc<str>, items_dropped: u64) {
        self.dropped_by_incarnation
            .insert(incarnation.clone(), items_dropped);
    }

    fn snapshot(&self) -> TelemetryCounters {
        TelemetryCounters {
            dropped_reported: self.dropped_by_incarnation.values().sum(),
            ..self.counted
        }
    }
}

impl DevBackendState {
    /// Telemetry counted from decoded OTLP.
    pub fn telemetry(&self, cluster_id: &str) -> Result<TelemetryCounters, ClusterError> {
        let cluster = self.cluster(cluster_id)?;
        let counters = cluster.inner.lock().telemetry.snapshot();
        Ok(counters)
    }
}
