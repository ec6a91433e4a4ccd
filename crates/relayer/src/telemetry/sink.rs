//! The interface the OTLP receivers push into: one [`TelemetrySink::offer`]
//! per decoded and validated export request, as serialized pieces no larger
//! than [`TelemetrySink::max_piece_bytes`].

use std::fmt;
use std::time::Duration;

use super::split::Piece;
use crate::proto::telemetry_batch;

/// Which OTLP signal an export request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `ExportTraceServiceRequest`; items are spans.
    Traces,
    /// `ExportMetricsServiceRequest`; items are metric data points.
    Metrics,
    /// `ExportLogsServiceRequest`; items are log records.
    Logs,
}

impl Signal {
    /// Every signal, in a fixed order (the index used by [`Signal::index`]).
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// Lower-case name as used in OTLP/HTTP paths (`/v1/<name>`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// Position in [`Signal::ALL`].
    pub fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Signal> for telemetry_batch::Signal {
    fn from(signal: Signal) -> Self {
        match signal {
            Signal::Traces => telemetry_batch::Signal::Traces,
            Signal::Metrics => telemetry_batch::Signal::Metrics,
            Signal::Logs => telemetry_batch::Signal::Logs,
        }
    }
}

/// Why a sink did not take an export request, and when the client should
/// try again. Receivers turn it into gRPC `RESOURCE_EXHAUSTED` + `RetryInfo`
/// or HTTP 429 + `Retry-After`; a request that can never be taken (larger
/// than the whole buffer) has no `retry_after` and becomes
/// `RESOURCE_EXHAUSTED` without `RetryInfo` (which OTLP clients do not
/// retry) or HTTP 413.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// How long the client should wait before re-sending; `None`: never.
    pub retry_after: Option<Duration>,
    /// Human-readable cause, sent back to the client.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(delay) => write!(f, "{} (retry after {} ms)", self.reason, delay.as_millis()),
            None => write!(f, "{} (not retryable)", self.reason),
        }
    }
}

/// Where the receivers put accepted telemetry.
pub trait TelemetrySink: Send + Sync + 'static {
    /// The largest serialized piece the sink forwards whole: what fits in one
    /// frame. Receivers split larger requests first (see `split`).
    fn max_piece_bytes(&self) -> usize;

    /// Offer one export request's pieces: all are accepted (and will be
    /// forwarded) or none is (the client is told to retry later), so a retry
    /// never duplicates part of a request.
    fn offer(&self, signal: Signal, pieces: Vec<Piece>) -> Result<(), Refusal>;
}

/// A sink for tests: records every offer, or refuses them all when told to.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    pub(crate) struct RecordingSink {
        pub(crate) offers: Mutex<Vec<(Signal, Bytes, u64)>>,
        refuse: AtomicBool,
        max_piece: std::sync::atomic::AtomicUsize,
    }

    impl RecordingSink {
        pub(crate) fn set_max_piece_bytes(&self, max: usize) {
            self.max_piece.store(max, Ordering::SeqCst);
        }

        pub(crate) fn set_refuse(&self, refuse: bool) {
            self.refuse.store(refuse, Ordering::SeqCst);
        }

        pub(crate) fn counts(&self) -> Vec<(Signal, u64)> {
            self.offers
                .lock()
                .iter()
                .map(|(s, _, n)| (*s, *n))
                .collect()
        }
    }

    impl TelemetrySink for RecordingSink {
        fn max_piece_bytes(&self) -> usize {
            match self.max_piece.load(Ordering::SeqCst) {
                0 => usize::MAX,
                max => max,
            }
        }

        fn offer(&self, signal: Signal, pieces: Vec<Piece>) -> Result<(), Refusal> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Refusal {
                    retry_after: Some(Duration::from_millis(1500)),
                    reason: "telemetry buffer full".into(),
                });
            }
            let mut offers = self.offers.lock();
            for piece in pieces {
                offers.push((signal, piece.otlp, piece.items));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_maps_to_proto_and_indexes_all() {
        for (i, s) in Signal::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        assert_eq!(
            telemetry_batch::Signal::from(Signal::Traces),
            telemetry_batch::Signal::Traces
        );
        assert_eq!(
            telemetry_batch::Signal::from(Signal::Metrics),
            telemetry_batch::Signal::Metrics
        );
        assert_eq!(
            telemetry_batch::Signal::from(Signal::Logs),
            telemetry_batch::Signal::Logs
        );
        assert_eq!(Signal::Logs.to_string(), "logs");
    }

    #[test]
    fn refusal_display_names_reason_and_delay() {
        let r = Refusal {
            retry_after: Some(Duration::from_millis(250)),
            reason: "buffer full".into(),
        };
        assert_eq!(r.to_string(), "buffer full (retry after 250 ms)");
    }
}
