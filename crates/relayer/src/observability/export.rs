//! Exporting the relayer's spans over OTLP (gRPC or HTTP/protobuf) to
//! `tracing.otlp_endpoint`, through the OpenTelemetry SDK's batch span
//! processor.
//!
//! The SDK's batch processor exports from its own OS thread, while the
//! tonic and reqwest exporters need a Tokio reactor; the actix arbiters'
//! runtimes are not reachable from that thread. So the exporter owns a
//! one-worker Tokio runtime, and every export is polled inside it
//! ([`OnRuntime`]). Exporting is best effort: when the collector is down
//! the processor's bounded queue drops the oldest spans, never blocking a
//! command.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{RelayerConfig, TracingConfig};
use crate::tls::trusted_roots;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans queued for export; beyond this the newest are dropped.
const MAX_QUEUED_SPANS: usize = 4096;

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SpanExportError {
    #[error("could not start the span export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("tracing.otlp_endpoint = {endpoint:?}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// The running span export: the tracer provider and the runtime its
/// exporter runs on. [`SpanExport::shutdown`] flushes what is queued.
pub struct SpanExport {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: String,
}

impl fmt::Debug for SpanExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanExport")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl SpanExport {
    /// Starts exporting when `tracing.otlp_endpoint` is set; `Ok(None)` when
    /// it is empty (export off). Must not be called from inside a Tokio
    /// runtime (it owns one).
    pub fn start(config: &RelayerConfig) -> Result<Option<SpanExport>, SpanExportError> {
        let tracing = &config.tracing;
        if tracing.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-span-export")
            .enable_all()
            .build()
            .map_err(SpanExportError::Runtime)?;
        let exporter = {
            let _inside = runtime.enter();
            build_exporter(tracing)?
        };
        let exporter = OnRuntime {
            inner: exporter,
            runtime: runtime.handle().clone(),
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(MAX_QUEUED_SPANS)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                tracing.sample_ratio,
            ))))
            .with_resource(resource(config))
            .build();
        Ok(Some(SpanExport {
            provider,
            runtime: Some(runtime),
            endpoint: tracing.otlp_endpoint.clone(),
        }))
    }

    /// The `tracing` layer that turns the relayer's spans (target
    /// `consonant_relayer`, level INFO and up) into exported OTLP spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("consonant-relayer"))
            .with_threads(false)
            .with_location(false)
            .with_filter(Targets::new().with_target("consonant_relayer", Level::INFO))
    }

    /// Where spans go, for the startup log line.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is queued (bounded by the export timeout) and stops.
    pub fn shutdown(mut self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, endpoint = %self.endpoint, "span export did not flush cleanly at shutdown");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn build_exporter(
    tracing: &TracingConfig,
) -> Result<opentelemetry_otlp::SpanExporter, SpanExportError> {
    let endpoint = tracing.otlp_endpoint.as_str();
    let invalid = |reason: String| SpanExportError::Exporter {
        endpoint: endpoint.to_string(),
        reason,
    };
    let https = endpoint.starts_with("https://");
    let built = if tracing.otlp_protocol == "http/protobuf" {
        let mut client = reqwest::Client::builder();
        if https {
            let roots = trusted_roots("tracing.ca_file", &tracing.ca_file)
                .map_err(|err| invalid(err.to_string()))?;
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            client = client.tls_backend_preconfigured(tls);
        }
        let client = client.build().map_err(|err| invalid(err.to_string()))?;
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(http_traces_url(endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
    } else {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if https {
            // The exporter's default TLS config trusts no roots at all.
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if !tracing.ca_file.is_empty() {
                let pem = std::fs::read(&tracing.ca_file).map_err(|err| {
                    invalid(format!(
                        "cannot read tracing.ca_file {}: {err}; fix the path or mount the file",
                        tracing.ca_file
                    ))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            builder = builder.with_tls_config(tls);
        }
        builder.build()
    };
    built.map_err(|err| invalid(err.to_string()))
}

/// OTLP/HTTP wants the signal's path; a bare collector address gets
/// `/v1/traces`, a URL with a path is used as given.
fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

fn resource(config: &RelayerConfig) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("k8s.cluster.name", config.cluster.name.clone()),
    ];
    if let Ok(pod) = std::env::var("POD_NAME") {
        attributes.push(KeyValue::new("k8s.pod.name", pod.clone()));
        attributes.push(KeyValue::new("service.instance.id", pod));
    }
    if let Ok(namespace) = std::env::var("POD_NAMESPACE") {
        attributes.push(KeyValue::new("k8s.namespace.name", namespace));
    }
    Resource::builder_empty()
        .with_service_name("consonant-relayer")
        .with_attributes(attributes)
        .build()
}

/// Runs an exporter's futures inside a Tokio runtime although the batch
/// processor polls them from a plain thread.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let _inside = self.runtime.enter();
        Entered {
            runtime: self.runtime.clone(),
            future: Box::pin(self.inner.export(batch)),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A future polled with a runtime entered, so the I/O and timers it
/// creates register with that runtime's drivers (which its worker runs).
struct Entered<F> {
    runtime: tokio::runtime::Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let _inside = self.runtime.enter();
        self.future.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoint_gets_the_traces_path_only_when_it_has_none() {
        for (given, expected) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp.example/custom/traces",
                "https://otlp.example/custom/traces",
            ),
        ] {
            assert_eq!(http_traces_url(given), expected);
        }
    }

    #[test]
    fn off_when_no_endpoint_is_set() {
        let config = RelayerConfig::default();
        assert!(SpanExport::start(&config).expect("no error").is_none());
    }
}
