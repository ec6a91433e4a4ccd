//! The interface the OTLP receivers push into: one [`TelemetrySink::offer`]
//! per decoded, validated and re-serialized export request.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

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
/// or HTTP 429 + `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// How long the client should wait before re-sending.
    pub retry_after: Duration,
    /// Human-readable cause, sent back to the client.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (retry after {} ms)",
            self.reason,
            self.retry_after.as_millis()
        )
    }
}

/// Where the receivers put accepted telemetry.
pub trait TelemetrySink: Send + Sync + 'static {
    /// Offer one decoded-and-validated export request, already serialized as protobuf,
    /// with its item count. Ok = accepted (it will be forwarded); Err = refuse with retry-later.
    fn offer(&self, signal: Signal, otlp: Bytes, items: u64) -> Result<(), Refusal>;
}

/// A sink for tests: records every offer, or refuses them all when told to.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    pub(crate) struct RecordingSink {
        pub(crate) offers: Mutex<Vec<(Signal, Bytes, u64)>>,
        refuse: AtomicBool,
    }

    impl RecordingSink {
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
        fn offer(&self, signal: Signal, otlp: Bytes, items: u64) -> Result<(), Refusal> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Refusal {
                    retry_after: Duration::from_millis(1500),
                    reason: "telemetry buffer full".into(),
                });
            }
            self.offers.lock().push((signal, otlp, items));
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
            retry_after: Duration::from_millis(250),
            reason: "buffer full".into(),
        };
        assert_eq!(r.to_string(), "buffer full (retry after 250 ms)");
    }
}
