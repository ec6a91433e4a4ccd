//! `IngestSink`: where the OTLP receivers put accepted export requests. It
//! coalesces pieces per signal into `TelemetryBatch` frames
//! (`telemetry.max_batch_bytes`, `flush_interval`, never more than a frame)
//! and pushes them into the outbox; everything buffered — in the coalescer
//! and pending or unacked in the outbox — stays under
//! `telemetry.buffer_bytes`, past which requests are refused ("retry
//! later"). It holds only what it needs (the outbox handle, the frame limit,
//! the telemetry config), so it outlives any TelemetryIngest actor and
//! loses no accepted telemetry on a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::coalesce::{Coalescer, Now};
use super::sink::{Refusal, Signal, TelemetrySink};
use super::split::Piece;
use crate::config::TelemetryConfig;
use crate::connection::frame_limit::FrameLimit;
use crate::connection::outbox_handle::OutboxHandle;
use crate::proto::{relayer_frame::Body, TelemetryBatch};

/// Room kept in a frame for everything but the OTLP bytes.
const FRAME_OVERHEAD: usize = 1024;
/// What clients are told to wait when the buffer is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counters shown in `/debug/actors` and `/metrics`.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub accepted_requests: AtomicU64,
    pub accepted_items: AtomicU64,
    pub refused_requests: AtomicU64,
    pub forwarded_batches: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub dropped_items: AtomicU64,
}

/// The receivers' sink: coalesces into batches and hands them to the outbox.
pub struct IngestSink {
    outbox: OutboxHandle,
    frame_limit: FrameLimit,
    max_batch_bytes: usize,
    coalescer: Mutex<Coalescer>,
    budget: usize,
    pub counters: IngestCounters,
    drop_log: LogThrottle,
}

/// At most one log line per interval for a repeating condition.
#[derive(Debug)]
struct LogThrottle {
    last: Mutex<Option<std::time::Instant>>,
    every: Duration,
}

impl LogThrottle {
    fn allow(&self) -> bool {
        let mut last = self.last.lock();
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl IngestSink {
    pub fn new(config: &TelemetryConfig, outbox: OutboxHandle, frame_limit: FrameLimit) -> Self {
        let frame_budget = frame_limit.get().saturating_sub(FRAME_OVERHEAD);
        let max_batch_bytes = config.max_batch_bytes as usize;
        Self {
            coalescer: Mutex::new(Coalescer::new(
                max_batch_bytes.min(frame_budget),
                config.flush_interval,
            )),
            budget: config.buffer_bytes as usize,
            max_batch_bytes,
            counters: IngestCounters::default(),
            drop_log: LogThrottle {
                last: Mutex::new(None),
                every: Duration::from_secs(10),
            },
            outbox,
            frame_limit,
        }
    }

    /// OTLP bytes one frame can carry now (the backend may lower the frame
    /// limit in `Welcome`).
    fn frame_budget(&self) -> usize {
        self.frame_limit.get().saturating_sub(FRAME_OVERHEAD)
    }

    /// `telemetry.max_batch_bytes`, or less when a frame is smaller.
    fn batch_limit(&self) -> usize {
        self.max_batch_bytes.min(self.frame_budget())
    }

    fn forward(&self, batches: Vec<TelemetryBatch>) {
        for batch in batches {
            let items = u64::from(batch.item_count);
            match self.outbox.push_telemetry(Body::Telemetry(batch), items) {
                Ok(()) => {
                    self.counters
                        .forwarded_batches
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(full) => {
                    // Only when results filled the replay buffer: counted, logged, never silent.
                    let batches = self
                        .counters
                        .dropped_batches
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    let dropped = self
                        .counters
                        .dropped_items
                        .fetch_add(items, Ordering::Relaxed)
                        + items;
                    if self.drop_log.allow() {
                        tracing::warn!(error = %full, batches, items = dropped, "telemetry dropped since start: the replay buffer is full of results");
                    }
                }
            }
        }
    }

    /// Sends batches older than `flush_interval`.
    pub fn flush_due(&self) {
        let due = self.coalescer.lock().flush_due(Now::current());
        self.forward(due);
    }

    pub fn flush_all(&self) {
        let all = self.coalescer.lock().flush_all();
        self.forward(all);
    }

    /// `telemetry.buffer_bytes`.
    pub fn buffer_limit(&self) -> usize {
        self.budget
    }

    pub fn buffered_bytes(&self) -> usize {
        self.coalescer.lock().pending_bytes() + self.outbox.stats().telemetry_bytes
    }
}

impl TelemetrySink for IngestSink {
    fn max_piece_bytes(&self) -> usize {
        self.frame_budget()
    }

    fn offer(&self, signal: Signal, pieces: Vec<Piece>) -> Result<(), Refusal> {
        let size: usize = pieces.iter().map(|p| p.otlp.len()).sum();
        let items: u64 = pieces.iter().map(|p| p.items).sum();
        let batch_limit = self.batch_limit();
        if size > self.budget {
            // Retrying cannot help: even an empty buffer cannot hold it.
            self.counters
                .refused_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal {
                retry_after: None,
                reason: format!(
                    "the request's {size} bytes of telemetry are more than the relayer's whole buffer ({} bytes, telemetry.buffer_bytes), so it can never be taken: raise telemetry.buffer_bytes or send smaller batches",
                    self.budget
                ),
            });
        }
        let full = {
            let mut coalescer = self.coalescer.lock();
            let used = coalescer.pending_bytes() + self.outbox.stats().telemetry_bytes;
            if used + size > self.budget {
                self.counters
                    .refused_requests
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    retry_after: Some(RETRY_AFTER),
                    reason: format!(
                        "the relayer's telemetry buffer is full ({used} of {} bytes, telemetry.buffer_bytes): the backend is slow or unreachable",
                        self.budget
                    ),
                });
            }
            coalescer.set_max_batch_bytes(batch_limit);
            let now = Now::current();
            let mut full = Vec::new();
            for piece in pieces {
                full.extend(coalescer.push(signal, piece.otlp, piece.items, now));
            }
            full
        };
        self.counters
            .accepted_requests
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .accepted_items
            .fetch_add(items, Ordering::Relaxed);
        self.forward(full);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::metrics::Metrics;

    fn sink(buffer_bytes: u64) -> IngestSink {
        let config = TelemetryConfig {
            buffer_bytes,
            max_batch_bytes: 4096,
            ..TelemetryConfig::default()
        };
        let outbox = OutboxHandle::new(1 << 20, Arc::new(Metrics::new()));
        IngestSink::new(&config, outbox, FrameLimit::new(64 * 1024))
    }

    fn pieces(bytes: usize) -> Vec<Piece> {
        vec![Piece {
            otlp: Bytes::from(vec![0u8; bytes]),
            items: 1,
        }]
    }

    /// Full: "retry later". Larger than the whole buffer: refused for good,
    /// since no retry could ever succeed (a client told to retry would
    /// retry forever).
    #[test]
    fn a_request_larger_than_the_whole_buffer_is_refused_for_good() {
        let sink = sink(10_000);
        assert_eq!(sink.offer(Signal::Traces, pieces(6_000)), Ok(()));
        let full = sink.offer(Signal::Traces, pieces(6_000)).unwrap_err();
        assert_eq!(full.retry_after, Some(RETRY_AFTER));
        let never = sink.offer(Signal::Traces, pieces(10_001)).unwrap_err();
        assert_eq!(never.retry_after, None);
        assert!(never.reason.contains("10001 bytes"), "{}", never.reason);
        assert!(
            never.reason.contains("telemetry.buffer_bytes"),
            "{}",
            never.reason
        );
        assert_eq!(sink.counters.refused_requests.load(Ordering::Relaxed), 2);
    }
}
