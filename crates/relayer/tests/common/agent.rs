//! An AI agent's OpenTelemetry SDK (traces, metrics, logs) exporting over
//! OTLP with the SDK's own exporters, and the reference backend's counts of
//! what arrived: the data side of the telemetry tests.

use std::time::Duration;

use consonant_dev_backend::DevBackendHandle;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{
    LogExporter, MetricExporter, Protocol, RetryPolicy, SpanExporter, WithExportConfig,
    WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};

use super::{free_addr, Relayer, RelayerOptions, CLUSTER_ID};

/// Exporters retry "retry later" answers for this long before giving up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(100)
        .with_max_delay(Duration::from_secs(1))
}

pub(crate) struct Agent {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
    logs: SdkLoggerProvider,
}

impl Agent {
    /// An agent's SDK exporting to the relayer with `protocol`.
    pub(crate) fn new(protocol: Protocol, grpc: &str, http: &str) -> Agent {
        macro_rules! exporter {
            ($kind:ident, $path:literal $(, $extra:ident($arg:expr))*) => {
                if protocol == Protocol::Grpc {
                    $kind::builder()
                        .with_tonic()
                        .with_endpoint(grpc)
                        .with_timeout(EXPORT_TIMEOUT)
                        .with_retry_policy(retry_policy())
                        $(.$extra($arg))*
                        .build()
                        .unwrap()
                } else {
                    $kind::builder()
                        .with_http()
                        .with_protocol(protocol)
                        .with_endpoint(format!("{http}{}", $path))
                        .with_timeout(EXPORT_TIMEOUT)
                        .with_retry_policy(retry_policy())
                        $(.$extra($arg))*
                        .build()
                        .unwrap()
                }
            };
        }
        let spans = exporter!(SpanExporter, "/v1/traces");
        let metrics = exporter!(
            MetricExporter,
            "/v1/metrics",
            with_temporality(Temporality::Delta)
        );
        let logs = exporter!(LogExporter, "/v1/logs");
        Agent {
            traces: SdkTracerProvider::builder()
                .with_span_processor(
                    BatchSpanProcessor::builder(spans, Tokio)
                        .with_batch_config(
                            BatchConfigBuilder::default()
                                .with_max_export_batch_size(50)
                                .with_max_queue_size(100_000)
                                .build(),
                        )
                        .build(),
                )
                .build(),
            metrics: SdkMeterProvider::builder()
                .with_reader(
                    PeriodicReader::builder(metrics, Tokio)
                        .with_interval(Duration::from_secs(3600))
                        .build(),
                )
                .build(),
            logs: SdkLoggerProvider::builder()
                .with_log_processor(BatchLogProcessor::builder(logs, Tokio).build())
                .build(),
        }
    }

    pub(crate) fn spans(&self, count: usize, attribute_bytes: usize) {
        let tracer = self.traces.tracer("agent");
        for i in 0..count {
            tracer.in_span(format!("agent.step.{i}"), |cx| {
                use opentelemetry::trace::TraceContextExt;
                cx.span()
                    .set_attribute(KeyValue::new("payload", "p".repeat(attribute_bytes)));
            });
        }
    }

    /// Three counter series and two histogram series: five data points.
    pub(crate) fn metrics(&self) {
        let meter = self.metrics.meter("agent");
        let calls = meter.u64_counter("agent.tool_calls").build();
        for tool in ["search", "kubectl", "summarize"] {
            calls.add(2, &[KeyValue::new("tool", tool)]);
        }
        let latency = meter.f64_histogram("agent.latency").build();
        for model in ["small", "large"] {
            latency.record(0.25, &[KeyValue::new("model", model)]);
        }
    }

    pub(crate) fn logs(&self, count: usize) {
        let logger = self.logs.logger("agent");
        for i in 0..count {
            let mut record = logger.create_log_record();
            record.set_severity_number(Severity::Info);
            record.set_body(format!("tool call {i} finished").into());
            logger.emit(record);
        }
    }

    /// Exports everything recorded so far; waits for the exporters
    /// (including their retries).
    pub(crate) async fn flush(&self) {
        let (traces, metrics, logs) =
            (self.traces.clone(), self.metrics.clone(), self.logs.clone());
        tokio::task::spawn_blocking(move || {
            traces.force_flush().expect("spans exported");
            metrics.force_flush().expect("metrics exported");
            logs.force_flush().expect("logs exported");
        })
        .await
        .unwrap();
    }
}

/// `(spans, metric points, log records)` the backend counted.
pub(crate) fn counts(backend: &DevBackendHandle) -> (u64, u64, u64) {
    let t = backend.state().telemetry(CLUSTER_ID).unwrap();
    (t.spans, t.metric_points, t.log_records)
}

/// A relayer with its OTLP receivers on free loopback ports (`extra`: more
/// `[telemetry]` keys); returns it and the gRPC and HTTP receiver URLs.
pub(crate) fn relayer_with_telemetry(
    backend: &DevBackendHandle,
    extra: &str,
) -> (Relayer, String, String) {
    let (grpc, http) = (free_addr(), free_addr());
    let mut options = RelayerOptions::new(backend);
    options.telemetry = format!(
        "enabled = true\notlp_grpc_listen = \"{grpc}\"\notlp_http_listen = \"{http}\"\nflush_interval = \"100ms\"\n{extra}"
    );
    (
        Relayer::start(options),
        format!("http://{grpc}"),
        format!("http://{http}"),
    )
}
