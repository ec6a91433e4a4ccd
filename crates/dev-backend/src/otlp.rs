//! Counts what a `TelemetryBatch` carries: decodes its OTLP payload per
//! `signal` with `opentelemetry-proto` and counts spans, metric data points
//! and log records. Pure functions, no I/O.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

use consonant_proto::telemetry_batch::Signal;

/// Items counted in one OTLP export request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpCounts {
    pub spans: u64,
    pub metric_points: u64,
    pub log_records: u64,
}

/// Why a batch could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("telemetry batch has signal {0}, expected TRACES (1), METRICS (2) or LOGS (3)")]
    UnknownSignal(i32),
    #[error("telemetry batch for {signal} is not a valid OTLP export request: {source}")]
    Decode {
        signal: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// Decodes `otlp` as the export request for `signal` and counts its items.
pub fn count(signal: i32, otlp: &[u8]) -> Result<OtlpCounts, OtlpError> {
    let decode_err = |signal: &'static str| move |source| OtlpError::Decode { signal, source };
    match Signal::try_from(signal) {
        Ok(Signal::Traces) => {
            let req = ExportTraceServiceRequest::decode(otlp).map_err(decode_err("TRACES"))?;
            let spans = req
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len() as u64)
                .sum();
            Ok(OtlpCounts {
                spans,
                ..OtlpCounts::default()
            })
        }
        Ok(Signal::Metrics) => {
            let req = ExportMetricsServiceRequest::decode(otlp).map_err(decode_err("METRICS"))?;
            let metric_points = req
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(|m| data_points(m.data.as_ref()))
                .sum();
            Ok(OtlpCounts {
                metric_points,
                ..OtlpCounts::default()
            })
        }
        Ok(Signal::Logs) => {
            let req = ExportLogsServiceRequest::decode(otlp).map_err(decode_err("LOGS"))?;
            let log_records = req
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .map(|sl| sl.log_records.len() as u64)
                .sum();
            Ok(OtlpCounts {
                log_records,
                ..OtlpCounts::default()
            })
        }
        Ok(Signal::Unspecified) | Err(_) => Err(OtlpError::UnknownSignal(signal)),
    }
}

fn data_points(data: Option<&Data>) -> u64 {
    let n = match data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    };
    n as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    /// A trace export request holding `per_scope` spans in each of two scopes.
    pub(crate) fn trace_request(per_scope: usize) -> Vec<u8> {
        let scope = || ScopeSpans {
            spans: (0..per_scope)
                .map(|i| Span {
                    name: format!("span-{i}"),
                    ..Span::default()
                })
                .collect(),
            ..ScopeSpans::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![scope(), scope()],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec()
    }

    fn check(signal: Signal, otlp: &[u8], expected: OtlpCounts) {
        assert_eq!(count(signal as i32, otlp).unwrap(), expected);
    }

    #[test]
    fn counts_spans() {
        check(
            Signal::Traces,
            &trace_request(3),
            OtlpCounts {
                spans: 6,
                ..Default::default()
            },
        );
    }

    #[test]
    fn counts_metric_points_across_kinds() {
        let point = NumberDataPoint::default;
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            data: Some(Data::Gauge(Gauge {
                                data_points: vec![point(), point()],
                            })),
                            ..Metric::default()
                        },
                        Metric {
                            data: Some(Data::Sum(Sum {
                                data_points: vec![point()],
                                ..Sum::default()
                            })),
                            ..Metric::default()
                        },
                        Metric::default(),
                    ],
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        };
        check(
            Signal::Metrics,
            &req.encode_to_vec(),
            OtlpCounts {
                metric_points: 3,
                ..Default::default()
            },
        );
    }

    #[test]
    fn counts_log_records() {
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 4],
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        check(
            Signal::Logs,
            &req.encode_to_vec(),
            OtlpCounts {
                log_records: 4,
                ..Default::default()
            },
        );
    }

    #[test]
    fn rejects_unknown_signal_and_garbage() {
        assert!(matches!(count(0, &[]), Err(OtlpError::UnknownSignal(0))));
        assert!(matches!(
            count(1, &[0xff, 0xff, 0xff]),
            Err(OtlpError::Decode { .. })
        ));
    }
}
