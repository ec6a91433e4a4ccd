//! One span per command: named `command <action>`, child of the command's
//! incoming trace context, carrying the command id, action and outcome.
//! The span's own context replaces `Command.trace` before the command is
//! answered, so every `CommandResult` built from the command carries it.

use opentelemetry::trace::Status as OtelStatus;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation;
use crate::commands::outcome::status_name;
use crate::proto::command_result::Status;
use crate::proto::{Command, CommandResult};

/// The `tracing` target of command spans (what the export layer keeps).
pub const COMMAND_SPAN_TARGET: &str = "consonant_relayer::command";

/// Whether command spans are made; decided once at startup.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandTracing {
    enabled: bool,
}

impl CommandTracing {
    /// `enabled` when span export is on: without an exporter a span would
    /// only cost time and name a span id nobody can look up.
    pub fn new(enabled: bool) -> Self {
        CommandTracing { enabled }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Starts the span for `command` and points `command.trace` at it.
    /// Returns [`Span::none`] (and leaves the trace as it came) when off.
    pub fn start(&self, command: &mut Command, action: &str) -> Span {
        if !self.enabled {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: COMMAND_SPAN_TARGET,
            "command",
            otel.name = format!("command {action}"),
            otel.kind = "server",
            command_id = %command.command_id,
            action,
            outcome = Empty,
            code = Empty,
        );
        // Only fails when no OpenTelemetry layer is installed; the span is
        // then a plain tracing span and the incoming trace is kept.
        if span
            .set_parent(propagation::extract(command.trace.as_ref()))
            .is_ok()
        {
            if let Some(own) = propagation::inject(&span.context()) {
                command.trace = Some(own);
            }
        }
        span
    }
}

/// Records how the command ended on its span: the result's status, and for
/// anything but success the error code and message as the span's status.
pub fn record_result(span: &Span, result: &CommandResult) {
    if span.is_none() {
        return;
    }
    span.record("outcome", status_name(result.status));
    match &result.error {
        Some(error) if result.status != Status::Succeeded as i32 => {
            let code = error_code_name(error.code);
            span.record("code", code);
            span.set_status(OtelStatus::error(format!("{code}: {}", error.message)));
        }
        _ => span.set_status(OtelStatus::Ok),
    }
}

fn error_code_name(code: i32) -> &'static str {
    crate::proto::error::Code::try_from(code)
        .map(|code| code.as_str_name())
        .unwrap_or("CODE_UNSPECIFIED")
}
