//! `TelemetryIngest`: the OTLP receivers (gRPC on
//! `telemetry.otlp_grpc_listen`, HTTP on `telemetry.otlp_http_listen`) and
//! the path from them into the outbox. Accepted export requests are
//! coalesced per signal (`telemetry.max_batch_bytes`, `flush_interval`) into
//! `TelemetryBatch` frames; everything buffered — in the coalescer and
//! pending or unacked in the outbox — stays under `telemetry.buffer_bytes`.
//! Past that the receivers answer "retry later" (gRPC RESOURCE_EXHAUSTED
//! with RetryInfo, HTTP 429 with Retry-After), so collectors keep the data
//! instead of the relayer dropping it.
//!
//! The sink (coalescer and counters) lives in the `RelayContext`, so a
//! restart of this actor loses no accepted telemetry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use crate::proto::{relayer_frame::Body, TelemetryBatch};
use crate::supervisor::{ChildContext, Stop};
use crate::telemetry::coalesce::{Coalescer, Now};
use crate::telemetry::sink::{Refusal, Signal, TelemetrySink};
use crate::telemetry::split::Piece;
use crate::telemetry::{serve_grpc, serve_http};

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
    rc: Arc<RelayContext>,
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
    pub fn new(rc: Arc<RelayContext>) -> Self {
        let cfg = &rc.config;
        let frame_budget = rc.max_frame_bytes().saturating_sub(FRAME_OVERHEAD);
        let batch = (cfg.telemetry.max_batch_bytes as usize).min(frame_budget);
        Self {
            coalescer: Mutex::new(Coalescer::new(batch, cfg.telemetry.flush_interval)),
            budget: cfg.telemetry.buffer_bytes as usize,
            counters: IngestCounters::default(),
            drop_log: LogThrottle {
                last: Mutex::new(None),
                every: Duration::from_secs(10),
            },
            rc,
        }
    }

    /// OTLP bytes one frame can carry now (the backend may lower the frame
    /// limit in `Welcome`).
    fn frame_budget(&self) -> usize {
        self.rc.max_frame_bytes().saturating_sub(FRAME_OVERHEAD)
    }

    /// `telemetry.max_batch_bytes`, or less when a frame is smaller.
    fn batch_limit(&self) -> usize {
        (self.rc.config.telemetry.max_batch_bytes as usize).min(self.frame_budget())
    }

    fn forward(&self, batches: Vec<TelemetryBatch>) {
        for batch in batches {
            let items = u64::from(batch.item_count);
            match self.rc.outbox.push_telemetry(Body::Telemetry(batch), items) {
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

    pub fn buffered_bytes(&self) -> usize {
        self.coalescer.lock().pending_bytes() + self.rc.outbox.stats().telemetry_bytes
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
        let full = {
            let mut coalescer = self.coalescer.lock();
            let used = coalescer.pending_bytes() + self.rc.outbox.stats().telemetry_bytes;
            if used + size > self.budget {
                self.counters
                    .refused_requests
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    retry_after: RETRY_AFTER,
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

pub struct TelemetryIngest {
    rc: Arc<RelayContext>,
    child: ChildContext,
    sink: Option<Arc<IngestSink>>,
    stop: CancellationToken,
    listening: Vec<String>,
}

impl TelemetryIngest {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            sink: None,
            stop: CancellationToken::new(),
            listening: Vec::new(),
        }
    }

    fn publish(&self) {
        let Some(sink) = &self.sink else {
            self.child.set_state("Disabled");
            return;
        };
        let c = &sink.counters;
        self.child.set_state(if self.listening.len() == 2 {
            "Receiving"
        } else {
            "Starting"
        });
        self.child.set_details(json!({
            "listening": self.listening,
            "buffer_bytes": sink.buffered_bytes(),
            "buffer_limit": sink.budget,
            "accepted_requests": c.accepted_requests.load(Ordering::Relaxed),
            "accepted_items": c.accepted_items.load(Ordering::Relaxed),
            "refused_requests": c.refused_requests.load(Ordering::Relaxed),
            "forwarded_batches": c.forwarded_batches.load(Ordering::Relaxed),
            "dropped_batches": c.dropped_batches.load(Ordering::Relaxed),
            "dropped_items": c.dropped_items.load(Ordering::Relaxed),
        }));
    }
}

impl Actor for TelemetryIngest {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.rc.config.telemetry.enabled {
            self.publish();
            return;
        }
        let sink = self
            .rc
            .telemetry
            .get_or_init(|| Arc::new(IngestSink::new(self.rc.clone())))
            .clone();
        self.sink = Some(sink.clone());
        let cfg = &self.rc.config.telemetry;
        let addrs = (cfg.otlp_grpc_listen.parse(), cfg.otlp_http_listen.parse());
        let (Ok(grpc), Ok(http)) = addrs else {
            self.child.exit.fail("telemetry listen addresses do not parse (config validation should have caught this)");
            ctx.stop();
            return;
        };
        let stop = self.stop.clone();
        let max_request = cfg.max_request_bytes as usize;
        let start = async move {
            let g = serve_grpc(
                grpc,
                sink.clone(),
                max_request,
                stop.clone().cancelled_owned(),
            )
            .await?;
            let h = serve_http(http, sink, max_request, stop.cancelled_owned()).await?;
            Ok::<_, crate::telemetry::ServeError>((g.local_addr, h.local_addr))
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(start).map(|bound, act, ctx| match bound {
                Ok((grpc, http)) => {
                    tracing::info!(%grpc, %http, "OTLP receivers listening");
                    act.listening = vec![format!("grpc {grpc}"), format!("http {http}")];
                    act.publish();
                }
                Err(err) => {
                    tracing::error!(error = %err, "OTLP receivers could not start");
                    act.child.exit.fail(err.to_string());
                    ctx.stop();
                }
            }),
        );
        let tick = (cfg.flush_interval / 2).max(Duration::from_millis(20));
        ctx.run_interval(tick, |act, _| {
            if let Some(sink) = &act.sink {
                sink.flush_due();
            }
            act.publish();
        });
    }
}

impl Handler<Stop> for TelemetryIngest {
    type Result = ();

    /// Stops the receivers and hands every coalesced batch to the outbox.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stop.cancel();
        if let Some(sink) = &self.sink {
            sink.flush_all();
        }
        ctx.stop();
    }
}

impl Drop for TelemetryIngest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
