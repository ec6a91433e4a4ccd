//! The relayer's own telemetry: one `tracing` span per command, continuing
//! the backend's `Command.trace` and handed back in `CommandResult.trace`,
//! exported with OpenTelemetry OTLP when `tracing.otlp_endpoint` is set.
//!
//! Off by default. While off no command span exists, and results carry the
//! incoming trace context unchanged, so the backend's trace still continues
//! across the relayer; while on, results carry the relayer's command span
//! (a child of the incoming context), which is exported.

pub mod command_span;
pub mod export;
pub mod propagation;

pub use command_span::{CommandTracing, COMMAND_SPAN_TARGET};
pub use export::{SpanExport, SpanExportError};
