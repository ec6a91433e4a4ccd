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
//! The sink (`telemetry::IngestSink`: coalescer and counters) lives in the
//! `RelayContext`, so a restart of this actor loses no accepted telemetry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use crate::supervisor::{ChildContext, Stop};
use crate::telemetry::{serve_grpc, serve_http, IngestSink};

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
            "buffer_limit": sink.buffer_limit(),
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
        let sink = self.rc.telemetry.clone();
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
