//! `HealthActor`: answers the HTTP endpoints from the status board, the
//! link status and the metrics — `/health`, `/readyz`, `/metrics`,
//! `/debug/actors` — and proves the actor system is alive for `/livez` by
//! answering at all. None of its answers depend on the backend being up.

use std::sync::Arc;

use actix::{Actor, ActorContext, Context, Handler, MessageResult};
use serde_json::{json, Value};

use super::context::RelayContext;
use super::messages::{Alive, GetActors, GetHealth, GetReadiness, RenderMetrics};
use crate::metrics::ActorLabel;
use crate::supervisor::{ChildContext, Stop};

/// The actors whose running makes the relayer ready.
pub const CORE_ACTORS: [&str; 4] = [
    "HealthActor",
    "WorkloadExecutor",
    "CommandRouter",
    "ConnectionActor",
];

pub struct HealthActor {
    rc: Arc<RelayContext>,
    child: ChildContext,
    answered: u64,
}

impl HealthActor {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        Self {
            rc,
            child,
            answered: 0,
        }
    }

    fn health(&self) -> Value {
        let link = self.rc.link.read().clone();
        let status = if link.connected {
            "healthy"
        } else if link.failing_hard {
            "unhealthy"
        } else {
            "degraded"
        };
        let mut warnings = Vec::new();
        if let Some(warning) = &self.rc.insecure_warning {
            warnings.push(warning.clone());
        }
        json!({
            "status": status,
            "grpc": {
                "connected": link.connected,
                "clusterId": link.cluster_id,
                "state": link.state,
                "lastError": link.last_error,
                "endpoint": link.endpoint,
                "proxy": link.proxy,
                "tls": link.tls,
                "tlsVerify": self.rc.config.backend.tls_verify,
                "breaker": link.breaker,
                "sessionId": link.session_id,
            },
            "version": self.rc.identity.version,
            "instanceId": self.rc.identity.instance_id,
            "incarnation": self.rc.identity.incarnation,
            "warnings": warnings,
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.rc.credentials.current().is_none() {
            return Err(
                "cluster credentials are not loaded yet (see /health grpc.lastError)".into(),
            );
        }
        let actors = self.rc.board.actors();
        for name in CORE_ACTORS {
            if !actors.iter().any(|a| a.name == name && a.running) {
                return Err(format!("{name} is not running"));
            }
        }
        Ok(())
    }

    fn actors(&self) -> Value {
        let actors: Vec<Value> = self
            .rc
            .board
            .actors()
            .into_iter()
            .filter(|a| a.running)
            .map(|a| {
                json!({
                    "name": a.name,
                    "state": a.state,
                    "restarts": a.restarts,
                    "mailbox": a.mailbox,
                    "last_error": a.last_error,
                    "started_at": a.started_at,
                    "details": a.details,
                })
            })
            .collect();
        json!({
            "actors": actors,
            "supervisor": {
                "supervisors": self.rc.board.supervisors(),
                "incarnation": self.rc.identity.incarnation,
            },
        })
    }

    fn metrics(&self) -> String {
        let metrics = &self.rc.metrics;
        for actor in self.rc.board.actors() {
            let label = ActorLabel {
                actor: actor.name.clone(),
            };
            metrics
                .actor_restarts
                .get_or_create(&label)
                .set(actor.restarts as i64);
            metrics
                .mailbox_depth
                .get_or_create(&label)
                .set(actor.mailbox.len as i64);
            metrics
                .mailbox_capacity
                .get_or_create(&label)
                .set(actor.mailbox.capacity as i64);
        }
        let outbox = self.rc.outbox.stats();
        let (mut dropped_batches, mut dropped_items) = (
            outbox.telemetry_batches_dropped,
            outbox.telemetry_items_dropped,
        );
        {
            use std::sync::atomic::Ordering::Relaxed;
            let c = &self.rc.telemetry.counters;
            dropped_batches += c.dropped_batches.load(Relaxed);
            dropped_items += c.dropped_items.load(Relaxed);
            metrics
                .telemetry_accepted_items
                .set(c.accepted_items.load(Relaxed));
            metrics
                .telemetry_refused_requests
                .set(c.refused_requests.load(Relaxed));
            metrics
                .telemetry_forwarded_batches
                .set(c.forwarded_batches.load(Relaxed));
            metrics
                .telemetry_buffer_bytes
                .set(self.rc.telemetry.buffered_bytes() as i64);
        }
        metrics.telemetry_batches_dropped.set(dropped_batches);
        metrics.telemetry_items_dropped.set(dropped_items);
        metrics.render()
    }
}

impl Actor for HealthActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.child.set_state("Serving");
    }
}

impl Handler<Alive> for HealthActor {
    type Result = ();
    fn handle(&mut self, _: Alive, _: &mut Context<Self>) {
        self.answered += 1;
    }
}

impl Handler<GetHealth> for HealthActor {
    type Result = MessageResult<GetHealth>;
    fn handle(&mut self, _: GetHealth, _: &mut Context<Self>) -> Self::Result {
        fail::fail_point!("health-request", |_| MessageResult(Value::Null));
        self.answered += 1;
        MessageResult(self.health())
    }
}

impl Handler<GetReadiness> for HealthActor {
    type Result = Result<(), String>;
    fn handle(&mut self, _: GetReadiness, _: &mut Context<Self>) -> Result<(), String> {
        self.answered += 1;
        self.readiness()
    }
}

impl Handler<GetActors> for HealthActor {
    type Result = MessageResult<GetActors>;
    fn handle(&mut self, _: GetActors, _: &mut Context<Self>) -> Self::Result {
        self.answered += 1;
        MessageResult(self.actors())
    }
}

impl Handler<RenderMetrics> for HealthActor {
    type Result = String;
    fn handle(&mut self, _: RenderMetrics, _: &mut Context<Self>) -> String {
        self.answered += 1;
        self.metrics()
    }
}

impl Handler<Stop> for HealthActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
