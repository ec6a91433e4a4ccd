//! The OpenTelemetry SDK's own OTLP exporters — what an AI agent uses —
//! against the relayer's receivers: over gRPC, HTTP/protobuf and HTTP/JSON,
//! spans, metric data points and log records reach the reference backend
//! with exact counts; and when the relayer's buffer is full the exporters'
//! own retries (RESOURCE_EXHAUSTED + RetryInfo, 429 + Retry-After) deliver
//! everything once the backend acknowledges again, with no duplicates.

mod common;

use std::time::Duration;

use common::*;
use consonant_dev_backend::{DevBackendHandle, FaultsUpdate};
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

/// Exporters retry "retry later" answers for this long before giving up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(100)
        .with_max_delay(Duration::from_secs(1))
}

struct Agent {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
    logs: SdkLoggerProvider,
}

impl Agent {
    /// An agent's SDK exporting to the relayer with `protocol`.
    fn new(protocol: Protocol, grpc: &str, http: &str) -> Agent {
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

    fn spans(&self, count: usize, attribute_bytes: usize) {
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
    fn metrics(&self) {
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

    fn logs(&self, count: usize) {
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
    async fn flush(&self) {
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

fn relayer_with_telemetry(backend: &DevBackendHandle, extra: &str) -> (Relayer, String, String) {
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

fn counts(backend: &DevBackendHandle) -> (u64, u64, u64) {
    let t = backend.state().telemetry(CLUSTER_ID).unwrap();
    (t.spans, t.metric_points, t.log_records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_deliver_spans_metrics_and_logs_with_exact_counts() {
    for protocol in [Protocol::Grpc, Protocol::HttpBinary, Protocol::HttpJson] {
        let backend = backend().await;
        let (relayer, grpc, http) = relayer_with_telemetry(&backend, "");
        relayer.wait_connected().await;
        let agent = Agent::new(protocol, &grpc, &http);
        agent.spans(120, 20);
        agent.metrics();
        agent.logs(7);
        agent.flush().await;
        let arrived = eventually(Duration::from_secs(15), || counts(&backend) == (120, 5, 7)).await;
        assert!(
            arrived,
            "{protocol:?}: backend counted {:?}\n{}",
            counts(&backend),
            relayer.output()
        );
        // Nothing more trickles in later (no duplicates from replays).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts(&backend), (120, 5, 7), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_retry_a_full_buffer_and_every_span_arrives_once() {
    for protocol in [Protocol::Grpc, Protocol::HttpBinary] {
        let backend = backend().await;
        let (relayer, grpc, http) = relayer_with_telemetry(
            &backend,
            "buffer_bytes = \"32KiB\"\nmax_batch_bytes = \"8KiB\"",
        );
        relayer.wait_connected().await;
        backend.state().set_faults(FaultsUpdate {
            withhold_acks: Some(true),
            ..Default::default()
        });
        let agent = Agent::new(protocol, &grpc, &http);
        agent.spans(400, 200);
        let flushed = tokio::spawn(async move {
            agent.flush().await;
            agent
        });
        let refused = eventually(Duration::from_secs(20), || {
            futures::executor::block_on(
                relayer.metric("consonant_relayer_telemetry_refused_requests", ""),
            ) > 0.0
        })
        .await;
        assert!(
            refused,
            "{protocol:?}: the buffer filled and exports were refused\n{}",
            relayer.output()
        );
        backend.state().set_faults(FaultsUpdate {
            withhold_acks: Some(false),
            end_streams: Some(true),
            ..Default::default()
        });
        let _agent = flushed.await.unwrap();
        let all = eventually(Duration::from_secs(20), || counts(&backend).0 == 400).await;
        assert!(
            all,
            "{protocol:?}: backend counted {:?}\n{}",
            counts(&backend),
            relayer.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts(&backend).0, 400, "{protocol:?}: no duplicates");
    }
}
