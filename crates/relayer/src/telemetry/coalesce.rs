//! Coalescing accepted export requests into [`TelemetryBatch`]es: one
//! pending batch per signal, cut when the next request would push it past
//! `max_batch_bytes` or when it is older than `flush_interval`. Pure; the
//! caller passes the time in.
//!
//! Serialized OTLP export requests of one signal concatenate into a valid
//! merged request: the only top-level field (`resource_spans`,
//! `resource_metrics`, `resource_logs`) is repeated, and protobuf appends
//! repeated fields that occur more than once. So a batch's `otlp` is the
//! byte concatenation of its requests, with no re-encoding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::sink::Signal;
use crate::proto::{telemetry_batch, TelemetryBatch};

/// A request at least this large is a batch of its own (after the pending
/// batch of its signal, so order is kept) instead of being copied into the
/// pending one: at this size the copy costs more than the frame it saves.
/// Below it, coalescing wins: with 49 KB requests (100 spans each) sending
/// each alone cost 8 % more CPU per span than copying them into 1 MiB
/// batches (more frames, acks and writer wake-ups; `benches/telemetry.rs`,
/// one IO worker), while coalescing them costs ≈ 11 MiB more RSS under full
/// load (batch buffers in flight; still bounded by `telemetry.buffer_bytes`).
pub const ALONE_BYTES: usize = 256 * 1024;

/// A point in time as the coalescer needs it: monotonic for ages, wall
/// clock for `received_at_unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time (tokio's, so tests can pause it).
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

impl Now {
    /// The current time from both clocks.
    pub fn current() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Now {
            instant: Instant::now(),
            unix_ms,
        }
    }
}

/// One signal's batch under construction.
#[derive(Debug)]
struct Pending {
    otlp: BytesMut,
    items: u64,
    first_at: Instant,
    received_at_unix_ms: i64,
}

impl Pending {
    /// Sized for a full batch at once: growing by doubling would copy the
    /// batch's bytes again on every reallocation. Only the pages written
    /// are resident, so a small batch costs no more memory.
    fn new(now: Now, capacity: usize) -> Self {
        Pending {
            otlp: BytesMut::with_capacity(capacity),
            items: 0,
            first_at: now.instant,
            received_at_unix_ms: now.unix_ms,
        }
    }

    fn into_batch(self, signal: Signal) -> TelemetryBatch {
        batch(
            signal,
            self.otlp.freeze(),
            self.items,
            self.received_at_unix_ms,
        )
    }
}

fn batch(signal: Signal, otlp: Bytes, items: u64, received_at_unix_ms: i64) -> TelemetryBatch {
    TelemetryBatch {
        signal: telemetry_batch::Signal::from(signal) as i32,
        otlp,
        // The wire field is 32 bits; a batch within max_batch_bytes cannot
        // hold 4 billion items, so saturating never loses a real count.
        item_count: u32::try_from(items).unwrap_or(u32::MAX),
        received_at_unix_ms,
    }
}

/// Keeps one pending batch per signal; see the module docs.
#[derive(Debug)]
pub struct Coalescer {
    max_batch_bytes: usize,
    flush_interval: Duration,
    pending: [Option<Pending>; 3],
}

impl Coalescer {
    /// A coalescer cutting batches at `max_batch_bytes` (at least 1) or
    /// after `flush_interval`.
    pub fn new(max_batch_bytes: usize, flush_interval: Duration) -> Self {
        Coalescer {
            max_batch_bytes: max_batch_bytes.max(1),
            flush_interval,
            pending: [None, None, None],
        }
    }

    /// Changes where batches are cut from now on (the frame limit can drop
    /// when a backend announces a smaller one); pending batches stay.
    pub fn set_max_batch_bytes(&mut self, max_batch_bytes: usize) {
        self.max_batch_bytes = max_batch_bytes.max(1);
    }

    /// Appends one serialized export request of `signal` with `items` items,
    /// arrived at `now`. Returns the batches that became full, oldest first:
    /// the pending batch when `otlp` would not fit beside it, and `otlp`
    /// itself, uncopied, when it is at least [`ALONE_BYTES`] or
    /// `max_batch_bytes` (then the pending batch goes first, whatever its
    /// size). An empty request with no items is ignored.
    pub fn push(
        &mut self,
        signal: Signal,
        otlp: Bytes,
        items: u64,
        now: Now,
    ) -> Vec<TelemetryBatch> {
        let mut full = Vec::new();
        if otlp.is_empty() && items == 0 {
            return full;
        }
        let slot = &mut self.pending[signal.index()];
        let alone = otlp.len() >= self.max_batch_bytes.min(ALONE_BYTES);
        if let Some(pending) = slot {
            if alone || pending.otlp.len() + otlp.len() > self.max_batch_bytes {
                full.extend(slot.take().map(|p| p.into_batch(signal)));
            }
        }
        if alone {
            // Fills a batch on its own: no copy, no pending state.
            full.push(batch(signal, otlp, items, now.unix_ms));
            return full;
        }
        let capacity = self.max_batch_bytes;
        let pending = slot.get_or_insert_with(|| Pending::new(now, capacity));
        pending.otlp.extend_from_slice(&otlp);
        pending.items += items;
        if pending.otlp.len() >= self.max_batch_bytes {
            full.extend(slot.take().map(|p| p.into_batch(signal)));
        }
        full
    }

    /// Takes the pending batches whose first request arrived at least
    /// `flush_interval` before `now`.
    pub fn flush_due(&mut self, now: Now) -> Vec<TelemetryBatch> {
        let mut due = Vec::new();
        for signal in Signal::ALL {
            let slot = &mut self.pending[signal.index()];
            let expired = slot.as_ref().is_some_and(|p| {
                now.instant.saturating_duration_since(p.first_at) >= self.flush_interval
            });
            if expired {
                due.extend(slot.take().map(|p| p.into_batch(signal)));
            }
        }
        due
    }

    /// Takes every pending batch (shutdown, or the stream asks for all).
    pub fn flush_all(&mut self) -> Vec<TelemetryBatch> {
        Signal::ALL
            .into_iter()
            .filter_map(|s| self.pending[s.index()].take().map(|p| p.into_batch(s)))
            .collect()
    }

    /// Bytes held in pending batches.
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().flatten().map(|p| p.otlp.len()).sum()
    }

    /// When the oldest pending batch becomes due, if any: the time to arm a
    /// flush timer for.
    pub fn next_flush_at(&self) -> Option<Instant> {
        self.pending
            .iter()
            .flatten()
            .map(|p| p.first_at + self.flush_interval)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::count::tests::traces;
    use crate::telemetry::count::ItemCount;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn at(start: Instant, ms: u64) -> Now {
        Now {
            instant: start + Duration::from_millis(ms),
            unix_ms: 1_000_000 + ms as i64,
        }
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    /// (signal, len, items, received_at offset) of each batch.
    fn shape(batches: &[TelemetryBatch]) -> Vec<(i32, usize, u32, i64)> {
        batches
            .iter()
            .map(|b| {
                (
                    b.signal,
                    b.otlp.len(),
                    b.item_count,
                    b.received_at_unix_ms - 1_000_000,
                )
            })
            .collect()
    }

    const T: i32 = telemetry_batch::Signal::Traces as i32;
    const M: i32 = telemetry_batch::Signal::Metrics as i32;
    const L: i32 = telemetry_batch::Signal::Logs as i32;

    #[test]
    fn concatenated_requests_decode_as_one_merged_request() {
        let a = traces(2, &[1, 2]);
        let b = traces(1, &[4]);
        let mut joined = a.encode_to_vec();
        joined.extend(b.encode_to_vec());
        let merged = ExportTraceServiceRequest::decode(joined.as_slice()).unwrap();
        assert_eq!(merged.resource_spans.len(), 3);
        assert_eq!(merged.item_count(), a.item_count() + b.item_count());
        assert_eq!(merged.resource_spans[2], b.resource_spans[0]);
    }

    #[test]
    fn batch_otlp_is_the_concatenation_of_its_requests() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(1 << 20, Duration::from_secs(1));
        let a = traces(1, &[2]);
        let b = traces(1, &[3]);
        assert!(c
            .push(Signal::Traces, a.encode_to_vec().into(), 2, at(t0, 0))
            .is_empty());
        assert!(c
            .push(Signal::Traces, b.encode_to_vec().into(), 3, at(t0, 5))
            .is_empty());
        let out = c.flush_all();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].item_count, 5);
        assert_eq!(out[0].received_at_unix_ms, 1_000_000);
        let merged = ExportTraceServiceRequest::decode(out[0].otlp.clone()).unwrap();
        assert_eq!(merged.item_count(), 5);
    }

    #[test]
    fn cuts_before_exceeding_max_batch_bytes() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100, Duration::from_secs(1));
        assert!(c.push(Signal::Traces, bytes(60), 1, at(t0, 0)).is_empty());
        assert!(c.push(Signal::Traces, bytes(40), 2, at(t0, 1)).len() == 1);
        assert_eq!(c.pending_bytes(), 0);
        assert!(c.push(Signal::Traces, bytes(60), 3, at(t0, 2)).is_empty());
        let out = c.push(Signal::Traces, bytes(41), 4, at(t0, 3));
        assert_eq!(shape(&out), vec![(T, 60, 3, 2)]);
        assert_eq!(c.pending_bytes(), 41);
        assert_eq!(shape(&c.flush_all()), vec![(T, 41, 4, 3)]);
    }

    #[test]
    fn oversized_request_is_its_own_batch_after_the_pending_one() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100, Duration::from_secs(1));
        c.push(Signal::Logs, bytes(10), 1, at(t0, 0));
        let out = c.push(Signal::Logs, bytes(250), 7, at(t0, 4));
        assert_eq!(shape(&out), vec![(L, 10, 1, 0), (L, 250, 7, 4)]);
        assert_eq!(c.pending_bytes(), 0);
        // Alone, with nothing pending.
        let out = c.push(Signal::Logs, bytes(100), 2, at(t0, 5));
        assert_eq!(shape(&out), vec![(L, 100, 2, 5)]);
    }

    #[test]
    fn large_requests_go_alone_and_uncopied_behind_the_pending_batch() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(1 << 20, Duration::from_secs(1));
        assert!(c.push(Signal::Traces, bytes(100), 1, at(t0, 0)).is_empty());
        let large = bytes(ALONE_BYTES);
        let out = c.push(Signal::Traces, large.clone(), 9, at(t0, 2));
        assert_eq!(
            shape(&out),
            vec![(T, 100, 1, 0), (T, ALONE_BYTES, 9, 2)],
            "the pending batch first, then the large request"
        );
        assert_eq!(out[1].otlp.as_ptr(), large.as_ptr(), "not copied");
        assert_eq!(c.pending_bytes(), 0);
        // Just below the threshold it is coalesced.
        assert!(c
            .push(Signal::Traces, bytes(ALONE_BYTES - 1), 3, at(t0, 3))
            .is_empty());
        assert_eq!(c.pending_bytes(), ALONE_BYTES - 1);
    }

    #[test]
    fn signals_are_batched_apart() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100, Duration::from_secs(1));
        c.push(Signal::Traces, bytes(50), 1, at(t0, 0));
        c.push(Signal::Metrics, bytes(50), 2, at(t0, 1));
        c.push(Signal::Logs, bytes(50), 3, at(t0, 2));
        assert_eq!(c.pending_bytes(), 150);
        assert_eq!(
            shape(&c.flush_all()),
            vec![(T, 50, 1, 0), (M, 50, 2, 1), (L, 50, 3, 2)]
        );
        assert!(c.flush_all().is_empty());
    }

    #[test]
    fn flush_due_takes_only_batches_older_than_the_interval() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(1000, Duration::from_millis(100));
        c.push(Signal::Traces, bytes(10), 1, at(t0, 0));
        c.push(Signal::Traces, bytes(10), 1, at(t0, 90));
        c.push(Signal::Metrics, bytes(10), 1, at(t0, 50));
        assert_eq!(c.next_flush_at(), Some(t0 + Duration::from_millis(100)));
        assert!(c.flush_due(at(t0, 99)).is_empty());
        assert_eq!(shape(&c.flush_due(at(t0, 100))), vec![(T, 20, 2, 0)]);
        assert_eq!(c.next_flush_at(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(shape(&c.flush_due(at(t0, 400))), vec![(M, 10, 1, 50)]);
        assert_eq!(c.next_flush_at(), None);
    }

    #[test]
    fn empty_requests_are_ignored() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100, Duration::from_secs(1));
        assert!(c
            .push(Signal::Traces, Bytes::new(), 0, at(t0, 0))
            .is_empty());
        assert!(c.flush_all().is_empty());
    }
}
