//! Counting the items of a decoded OTLP export request: spans, metric data
//! points, log records. Pure; no I/O.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Metric};

/// An export request whose items can be counted.
pub trait ItemCount {
    /// Spans, metric data points or log records in the request.
    fn item_count(&self) -> u64;
}

impl ItemCount for ExportTraceServiceRequest {
    fn item_count(&self) -> u64 {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum()
    }
}

impl ItemCount for ExportMetricsServiceRequest {
    fn item_count(&self) -> u64 {
        self.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(data_points)
            .sum()
    }
}

impl ItemCount for ExportLogsServiceRequest {
    fn item_count(&self) -> u64 {
        self.resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len() as u64)
            .sum()
    }
}

/// Data points of one metric, whatever its kind; 0 when it has no data.
pub fn data_points(metric: &Metric) -> u64 {
    let n = match &metric.data {
        None => 0,
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
    };
    n as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    /// A trace request with `per_scope[i]` spans in scope `i` of one resource,
    /// repeated over `resources` resources.
    pub(crate) fn traces(resources: usize, per_scope: &[usize]) -> ExportTraceServiceRequest {
        let resource = ResourceSpans {
            scope_spans: per_scope
                .iter()
                .map(|&n| ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("span-{i}"),
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![resource; resources],
        }
    }

    fn metric(data: Option<Data>) -> Metric {
        Metric {
            name: "m".into(),
            data,
            ..Default::default()
        }
    }

    fn check<R: ItemCount>(request: R, expected: u64) {
        assert_eq!(request.item_count(), expected);
    }

    #[test]
    fn counts_spans_across_resources_and_scopes() {
        check(ExportTraceServiceRequest::default(), 0);
        check(traces(1, &[0]), 0);
        check(traces(1, &[3]), 3);
        check(traces(2, &[1, 4]), 10);
    }

    #[test]
    fn counts_data_points_of_every_metric_kind() {
        let metrics = vec![
            metric(None),
            metric(Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); 2],
            }))),
            metric(Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint::default(); 3],
                ..Default::default()
            }))),
            metric(Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint::default(); 4],
                ..Default::default()
            }))),
            metric(Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint::default(); 5],
                ..Default::default()
            }))),
            metric(Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint::default(); 6],
            }))),
        ];
        let scope = ScopeMetrics {
            metrics,
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![scope; 2],
                ..Default::default()
            }],
        };
        check(request, 2 * (2 + 3 + 4 + 5 + 6));
        check(ExportMetricsServiceRequest::default(), 0);
    }

    #[test]
    fn counts_log_records() {
        let scope = ScopeLogs {
            log_records: vec![LogRecord::default(); 3],
            ..Default::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    scope_logs: vec![scope.clone(), scope],
                    ..Default::default()
                },
                ResourceLogs::default(),
            ],
        };
        check(request, 6);
        check(ExportLogsServiceRequest::default(), 0);
    }
}
