//! The relayer's Prometheus metrics (`/metrics`). Hot-path counters are
//! resolved once into plain handles so counting a frame is one atomic add.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod mailbox;
pub use mailbox::{MailboxGauge, MailboxSlot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    pub r#type: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub action: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    pub actor: String,
}

/// Outbound frame counters by class, resolved once.
#[derive(Clone, Debug)]
pub struct FrameCounters {
    pub control: Counter,
    pub result: Counter,
    pub event: Counter,
    pub telemetry: Counter,
}

/// Inbound frame counters by type, resolved once.
#[derive(Clone, Debug)]
pub struct InboundCounters {
    pub welcome: Counter,
    pub heartbeat: Counter,
    pub ack: Counter,
    pub command: Counter,
    pub cancel: Counter,
    pub drain: Counter,
    pub rotate_credentials: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub connection_state: Family<StateLabel, Gauge>,
    pub breaker_state: Family<StateLabel, Gauge>,
    pub reconnects: Counter,
    /// Moves to the next backend endpoint (`backend.grpc_endpoints`).
    pub endpoint_failovers: Counter,
    pub sessions: Counter,
    pub frames_out: FrameCounters,
    pub frames_in: InboundCounters,
    pub replay_buffer_bytes: Gauge,
    pub replay_buffer_frames: Gauge,
    pub replay_buffer_capacity: Gauge,
    pub commands: Family<CommandLabels, Counter>,
    pub commands_in_flight: Gauge,
    pub commands_validating: Gauge,
    pub dedup_entries: Gauge,
    pub dedup_bytes: Gauge,
    pub dedup_evictions: Gauge<u64, AtomicU64>,
    /// Answers to duplicates and refusals left unsent because the replay
    /// buffer had no room (the backend re-sends after a reconnect).
    pub answers_dropped: Family<KindLabel, Counter>,
    /// Control frames (`CommandAccepted`, heartbeats) not queued because the
    /// control queue was full.
    pub control_frames_dropped: Counter,
    pub control_queue_frames: Gauge,
    pub telemetry_batches_dropped: Gauge<u64, AtomicU64>,
    pub telemetry_items_dropped: Gauge<u64, AtomicU64>,
    pub actor_restarts: Family<ActorLabel, Gauge>,
    pub mailbox_depth: Family<ActorLabel, Gauge>,
    pub mailbox_capacity: Family<ActorLabel, Gauge>,
    pub credential_reloads: Counter,
    pub credentials_writebacks: Counter,
    pub credentials_writeback_failures: Counter,
    pub telemetry_accepted_items: Gauge<u64, AtomicU64>,
    pub telemetry_refused_requests: Gauge<u64, AtomicU64>,
    pub telemetry_forwarded_batches: Gauge<u64, AtomicU64>,
    pub telemetry_buffer_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("consonant_relayer");
        let connection_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "connection_state",
            "1 for the ConnectionActor's current state, 0 for the others",
            connection_state.clone(),
        );
        let breaker_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "breaker_state",
            "1 for the circuit breaker's current state (closed, open, half_open)",
            breaker_state.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Dial attempts after the first",
            reconnects.clone(),
        );
        let endpoint_failovers = Counter::default();
        registry.register(
            "endpoint_failovers",
            "Moves to the next backend endpoint after the circuit breaker opened on the current one",
            endpoint_failovers.clone(),
        );
        let sessions = Counter::default();
        registry.register(
            "sessions",
            "Sessions that reached Welcome",
            sessions.clone(),
        );

        let frames = Family::<FrameLabels, Counter>::default();
        registry.register("frames", "Frames by type and direction", frames.clone());
        let frame = |kind: &str, direction: &str| {
            frames.get_or_create_owned(&FrameLabels {
                r#type: kind.to_string(),
                direction: direction.to_string(),
            })
        };
        let frames_out = FrameCounters {
            control: frame("control", "out"),
            result: frame("result", "out"),
            event: frame("event", "out"),
            telemetry: frame("telemetry", "out"),
        };
        let frames_in = InboundCounters {
            welcome: frame("welcome", "in"),
            heartbeat: frame("heartbeat", "in"),
            ack: frame("ack", "in"),
            command: frame("command", "in"),
            cancel: frame("cancel", "in"),
            drain: frame("drain", "in"),
            rotate_credentials: frame("rotate_credentials", "in"),
        };

        let replay_buffer_bytes = Gauge::default();
        registry.register(
            "replay_buffer_bytes",
            "Bytes of reliable frames pending or unacked",
            replay_buffer_bytes.clone(),
        );
        let replay_buffer_frames = Gauge::default();
        registry.register(
            "replay_buffer_frames",
            "Reliable frames pending or unacked",
            replay_buffer_frames.clone(),
        );
        let replay_buffer_capacity = Gauge::default();
        registry.register(
            "replay_buffer_capacity_bytes",
            "connection.replay_buffer_bytes",
            replay_buffer_capacity.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands answered, by action and status",
            commands.clone(),
        );
        let commands_in_flight = Gauge::default();
        registry.register(
            "commands_in_flight",
            "Commands accepted and not finished",
            commands_in_flight.clone(),
        );
        let commands_validating = Gauge::default();
        registry.register(
            "commands_validating",
            "Apply commands waiting for or in manifest validation (off the actors' thread)",
            commands_validating.clone(),
        );
        let dedup_bytes = Gauge::default();
        registry.register(
            "dedup_bytes",
            "Bytes the finished results kept for dedup hold (bounded by commands.dedup_max_bytes)",
            dedup_bytes.clone(),
        );
        let answers_dropped = Family::<KindLabel, Counter>::default();
        registry.register(
            "answers_dropped",
            "Answers left unsent because the replay buffer had no room: kind=cached_result (a duplicate's result) or refusal; the backend re-sends after a reconnect",
            answers_dropped.clone(),
        );
        let control_frames_dropped = Counter::default();
        registry.register(
            "control_frames_dropped",
            "CommandAccepted and heartbeat frames not queued because the control queue was full",
            control_frames_dropped.clone(),
        );
        let control_queue_frames = Gauge::default();
        registry.register(
            "control_queue_frames",
            "Control frames waiting to be written",
            control_queue_frames.clone(),
        );
        let dedup_entries = Gauge::default();
        registry.register(
            "dedup_entries",
            "Command ids held for dedup",
            dedup_entries.clone(),
        );
        let dedup_evictions = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "dedup_evictions",
            "Finished results evicted early because of commands.dedup_max_entries or commands.dedup_max_bytes",
            dedup_evictions.clone(),
        );
        let telemetry_batches_dropped = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "telemetry_batches_dropped",
            "Telemetry batches dropped from the replay buffer to keep room for results",
            telemetry_batches_dropped.clone(),
        );
        let telemetry_items_dropped = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "telemetry_items_dropped",
            "Spans, data points and log records in dropped telemetry batches",
            telemetry_items_dropped.clone(),
        );
        let actor_restarts = Family::<ActorLabel, Gauge>::default();
        registry.register(
            "actor_restarts",
            "Restarts of each actor since process start",
            actor_restarts.clone(),
        );
        let mailbox_depth = Family::<ActorLabel, Gauge>::default();
        registry.register(
            "mailbox_depth",
            "Messages waiting for each actor",
            mailbox_depth.clone(),
        );
        let mailbox_capacity = Family::<ActorLabel, Gauge>::default();
        registry.register(
            "mailbox_capacity",
            "Mailbox bound of each actor",
            mailbox_capacity.clone(),
        );
        let credential_reloads = Counter::default();
        registry.register(
            "credential_reloads",
            "Times the credentials were re-read after UNAUTHENTICATED or PERMISSION_DENIED",
            credential_reloads.clone(),
        );
        let credentials_writebacks = Counter::default();
        registry.register(
            "credentials_writebacks",
            "Rotated cluster tokens written to the cluster Secret",
            credentials_writebacks.clone(),
        );
        let credentials_writeback_failures = Counter::default();
        registry.register(
            "credentials_writeback_failures",
            "Rotated cluster tokens that could not be written to the cluster Secret (kept in memory only)",
            credentials_writeback_failures.clone(),
        );

        let telemetry_accepted_items = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "telemetry_accepted_items",
            "Spans, data points and log records accepted by the OTLP receivers",
            telemetry_accepted_items.clone(),
        );
        let telemetry_refused_requests = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "telemetry_refused_requests",
            "OTLP requests answered retry-later because telemetry.buffer_bytes was full",
            telemetry_refused_requests.clone(),
        );
        let telemetry_forwarded_batches = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "telemetry_forwarded_batches",
            "Telemetry batches handed to the stream",
            telemetry_forwarded_batches.clone(),
        );
        let telemetry_buffer_bytes = Gauge::default();
        registry.register(
            "telemetry_buffer_bytes",
            "Telemetry bytes coalescing or pending/unacked (bounded by telemetry.buffer_bytes)",
            telemetry_buffer_bytes.clone(),
        );

        Self {
            registry,
            connection_state,
            breaker_state,
            reconnects,
            endpoint_failovers,
            sessions,
            frames_out,
            frames_in,
            replay_buffer_bytes,
            replay_buffer_frames,
            replay_buffer_capacity,
            commands,
            commands_in_flight,
            commands_validating,
            dedup_entries,
            dedup_bytes,
            dedup_evictions,
            answers_dropped,
            control_frames_dropped,
            control_queue_frames,
            telemetry_batches_dropped,
            telemetry_items_dropped,
            actor_restarts,
            mailbox_depth,
            mailbox_capacity,
            credential_reloads,
            credentials_writebacks,
            credentials_writeback_failures,
            telemetry_accepted_items,
            telemetry_refused_requests,
            telemetry_forwarded_batches,
            telemetry_buffer_bytes,
        }
    }

    /// Marks `current` as the one active value of a state family.
    pub fn set_state(family: &Family<StateLabel, Gauge>, all: &[&str], current: &str) {
        for state in all {
            family
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(i64::from(*state == current));
        }
    }

    /// Counts answers left unsent for want of replay-buffer room.
    pub fn count_answers_dropped(&self, kind: &str, count: u64) {
        if count > 0 {
            self.answers_dropped
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc_by(count);
        }
    }

    pub fn count_command(&self, action: &str, status: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                action: action.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_labels() {
        let metrics = Metrics::new();
        metrics.frames_out.result.inc();
        metrics.count_command("ping", "succeeded");
        Metrics::set_state(
            &metrics.connection_state,
            &["Idle", "Streaming"],
            "Streaming",
        );
        let text = metrics.render();
        assert!(
            text.contains("consonant_relayer_frames_total{type=\"result\",direction=\"out\"} 1"),
            "{text}"
        );
        assert!(text
            .contains("consonant_relayer_commands_total{action=\"ping\",status=\"succeeded\"} 1"));
        assert!(text.contains("consonant_relayer_connection_state{state=\"Streaming\"} 1"));
        assert!(text.contains("consonant_relayer_connection_state{state=\"Idle\"} 0"));
    }
}
