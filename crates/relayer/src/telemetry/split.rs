//! Cutting an export request too large for one frame into requests that
//! fit. Requests within the limit are never touched (the common case costs
//! nothing); a larger one is split between its items (spans, metrics, log
//! records), keeping each item's resource and scope. An item that cannot fit
//! a frame even alone is left out and reported, so the receiver can answer
//! with OTLP partial success instead of dropping it silently.
//!
//! Every piece repeats the resource and scope of the items it carries, so a
//! request whose resource nearly fills a frame would come out as one piece
//! per item, each a frame large: a 16 MiB request of tiny spans under a
//! 4 MiB resource, gigabytes. The pieces together are therefore kept to at
//! most twice the request plus one frame; items beyond that are left out
//! and reported like oversized ones. Ordinary requests (resources far
//! smaller than a frame) never come near it. Pure; no I/O.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::count::{data_points, ItemCount};

/// Upper bound of what embedding a message costs besides its own bytes:
/// one tag byte and a length varint of at most five bytes.
const EMBED_OVERHEAD: usize = 6;

/// Exact size of a message of `len` bytes embedded as a field numbered
/// below 16 (every level here: `resource_*` = 1, `scope_*` = 2, items = 2):
/// one tag byte, the length varint, the message.
fn embedded_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Exact encoded size of a request holding one item with its scope and
/// resource, from their sizes without children: what decides whether the
/// item fits a frame alone.
fn alone_len(resource: usize, scope: usize, item: usize) -> usize {
    embedded_len(resource + embedded_len(scope + embedded_len(item)))
}

/// One serialized export request and its item count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub otlp: Bytes,
    pub items: u64,
}

/// A request as pieces that each fit the limit, and what could not fit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub pieces: Vec<Piece>,
    /// Items left out: larger than a frame on their own, or beyond the
    /// repetition budget (`over_budget_items`).
    pub rejected_items: u64,
    /// The largest item left out for its size, for the error message.
    pub largest_rejected_bytes: usize,
    /// Of `rejected_items`, those that fit a frame but were left out because
    /// repeating their resource and scope would have made the pieces more
    /// than twice the request plus one frame.
    pub over_budget_items: u64,
}

/// Items a receiver left out of an accepted request, for OTLP's
/// partial-success answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub items: u64,
    reason: Option<String>,
}

impl Rejected {
    /// What `split` left out, explained for the client.
    pub fn of(split: &Split, signal: super::Signal, limit: usize) -> Self {
        Rejected {
            items: split.rejected_items,
            reason: (split.rejected_items > 0).then(|| {
                let items = match signal {
                    super::Signal::Traces => "span(s)",
                    super::Signal::Metrics => "metric data point(s)",
                    super::Signal::Logs => "log record(s)",
                };
                let too_large = split.rejected_items - split.over_budget_items;
                let mut reasons = Vec::new();
                if too_large > 0 {
                    reasons.push(format!(
                        "{too_large} {items} left out: the largest item is {} bytes encoded, more than the {limit} bytes one relay frame carries (connection.max_frame_bytes, or less if the backend asks)",
                        split.largest_rejected_bytes
                    ));
                }
                if split.over_budget_items > 0 {
                    reasons.push(format!(
                        "{} {items} left out: their resource and scope are so large against the {limit} bytes one relay frame carries that repeating them in every piece would make the request more than twice its size; send smaller resource attributes or fewer items per request",
                        split.over_budget_items
                    ));
                }
                reasons.join("; ")
            }),
        }
    }

    /// The partial-success message; `None` when nothing was left out.
    pub fn message(&self) -> Option<String> {
        self.reason.clone()
    }
}

/// A decoded export request that can be cut between its items.
pub trait SplitRequest: Message + Default + ItemCount + Sized {
    /// `self` as one piece when its encoding fits in `limit` bytes, else cut
    /// into pieces of at most `limit` bytes each.
    fn split(self, limit: usize) -> Split;
}

/// Access to the two nesting levels (resource → scope → item) of one signal.
trait Levels: Message + Default {
    type Resource: Message + Clone;
    type Scope: Message + Clone;
    type Item: Message;
    fn resources(&mut self) -> &mut Vec<Self::Resource>;
    fn scopes(resource: &mut Self::Resource) -> &mut Vec<Self::Scope>;
    fn items(scope: &mut Self::Scope) -> &mut Vec<Self::Item>;
    fn count(item: &Self::Item) -> u64;
}

macro_rules! levels {
    ($request:ty, $resources:ident, $resource:ty, $scopes:ident, $scope:ty, $items:ident, $item:ty, $count:expr) => {
        impl Levels for $request {
            type Resource = $resource;
            type Scope = $scope;
            type Item = $item;
            fn resources(&mut self) -> &mut Vec<$resource> {
                &mut self.$resources
            }
            fn scopes(resource: &mut $resource) -> &mut Vec<$scope> {
                &mut resource.$scopes
            }
            fn items(scope: &mut $scope) -> &mut Vec<$item> {
                &mut scope.$items
            }
            fn count(item: &$item) -> u64 {
                $count(item)
            }
        }

        impl SplitRequest for $request {
            fn split(self, limit: usize) -> Split {
                split_levels(self, limit)
            }
        }
    };
}

use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

levels!(
    ExportTraceServiceRequest,
    resource_spans,
    ResourceSpans,
    scope_spans,
    ScopeSpans,
    spans,
    Span,
    |_: &Span| 1
);
levels!(
    ExportMetricsServiceRequest,
    resource_metrics,
    ResourceMetrics,
    scope_metrics,
    ScopeMetrics,
    metrics,
    Metric,
    data_points
);
levels!(
    ExportLogsServiceRequest,
    resource_logs,
    ResourceLogs,
    scope_logs,
    ScopeLogs,
    log_records,
    LogRecord,
    |_: &LogRecord| 1
);

/// The request being filled, with an upper bound of its encoded size.
struct Chunk<R: Levels> {
    request: R,
    bytes: usize,
    items: u64,
    /// The last resource / scope in `request` is the one being walked.
    resource_open: bool,
    scope_open: bool,
}

impl<R: Levels> Chunk<R> {
    fn new() -> Self {
        Chunk {
            request: R::default(),
            bytes: 0,
            items: 0,
            resource_open: false,
            scope_open: false,
        }
    }

    fn take(&mut self, out: &mut Split) {
        if self.items == 0 && self.request.resources().is_empty() {
            return;
        }
        let chunk = std::mem::replace(self, Chunk::new());
        out.pieces.push(Piece {
            otlp: Bytes::from(chunk.request.encode_to_vec()),
            items: chunk.items,
        });
    }
}

fn split_levels<R: Levels>(mut request: R, limit: usize) -> Split {
    let mut out = Split::default();
    let request_len = request.encoded_len();
    if request_len <= limit {
        let items = request_items(&mut request);
        out.pieces.push(Piece {
            otlp: Bytes::from(request.encode_to_vec()),
            items,
        });
        return out;
    }
    // What the pieces may add up to (see the module doc), and an upper
    // bound of what they hold so far: each item's exact embedding plus
    // every resource and scope shell opened, with EMBED_OVERHEAD.
    let budget = request_len.saturating_mul(2).saturating_add(limit);
    let mut spent = 0usize;
    let mut chunk = Chunk::<R>::new();
    for mut resource in std::mem::take(request.resources()) {
        let scopes = std::mem::take(R::scopes(&mut resource));
        let resource_len = resource.encoded_len();
        let resource_shell = resource_len + EMBED_OVERHEAD;
        for mut scope in scopes {
            let items = std::mem::take(R::items(&mut scope));
            let scope_len = scope.encoded_len();
            let scope_shell = scope_len + EMBED_OVERHEAD;
            for item in items {
                let item_len = item.encoded_len();
                let item_bytes = item_len + EMBED_OVERHEAD;
                // Exact, not the packing's upper bound: an item that fits a
                // frame alone is never left out (the upper bound overstates
                // by up to 12 bytes, which refused items that fit). A lone
                // item in a fresh piece is then exactly this size.
                if alone_len(resource_len, scope_len, item_len) > limit {
                    out.rejected_items += R::count(&item);
                    out.largest_rejected_bytes = out.largest_rejected_bytes.max(item.encoded_len());
                    continue;
                }
                let mut needed = item_bytes;
                if !chunk.resource_open {
                    needed += resource_shell;
                }
                if !chunk.scope_open {
                    needed += scope_shell;
                }
                let fresh = chunk.bytes + needed > limit;
                if fresh {
                    needed = item_bytes + resource_shell + scope_shell;
                }
                let cost = needed - item_bytes + embedded_len(item_len);
                if spent + cost > budget {
                    out.rejected_items += R::count(&item);
                    out.over_budget_items += R::count(&item);
                    continue;
                }
                spent += cost;
                if fresh {
                    chunk.take(&mut out);
                }
                if !chunk.resource_open {
                    chunk.request.resources().push(resource.clone());
                    chunk.resource_open = true;
                }
                let open_resource = chunk.request.resources().last_mut().expect("opened above");
                if !chunk.scope_open {
                    R::scopes(open_resource).push(scope.clone());
                    chunk.scope_open = true;
                }
                let open_scope = R::scopes(open_resource).last_mut().expect("opened above");
                chunk.items += R::count(&item);
                R::items(open_scope).push(item);
                chunk.bytes += needed;
            }
            chunk.scope_open = false;
        }
        chunk.resource_open = false;
    }
    chunk.take(&mut out);
    out
}

fn request_items<R: Levels>(request: &mut R) -> u64 {
    let mut total = 0;
    for resource in request.resources().iter_mut() {
        for scope in R::scopes(resource).iter_mut() {
            total += R::items(scope).iter().map(R::count).sum::<u64>();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn span(name_len: usize) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            name: "s".repeat(name_len),
            ..Default::default()
        }
    }

    fn traces(
        resources: usize,
        scopes: usize,
        spans: usize,
        name_len: usize,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..resources)
                .map(|r| ResourceSpans {
                    resource: Some(Resource {
                        dropped_attributes_count: r as u32,
                        ..Default::default()
                    }),
                    scope_spans: (0..scopes)
                        .map(|s| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: format!("scope-{s}"),
                                ..Default::default()
                            }),
                            spans: (0..spans).map(|_| span(name_len)).collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Decodes every piece, checks sizes and counts, and merges them back.
    fn check(split: &Split, limit: usize) -> ExportTraceServiceRequest {
        let mut merged = ExportTraceServiceRequest::default();
        for piece in &split.pieces {
            assert!(piece.otlp.len() <= limit, "{} > {limit}", piece.otlp.len());
            let decoded = ExportTraceServiceRequest::decode(piece.otlp.clone()).unwrap();
            assert_eq!(decoded.item_count(), piece.items);
            merged.resource_spans.extend(decoded.resource_spans);
        }
        merged
    }

    #[test]
    fn a_request_within_the_limit_is_one_piece_with_the_same_bytes() {
        let request = traces(2, 2, 3, 10);
        let bytes = request.encode_to_vec();
        let split = request.split(bytes.len());
        assert_eq!(split.pieces.len(), 1);
        assert_eq!(split.pieces[0].otlp, bytes);
        assert_eq!(split.pieces[0].items, 12);
        assert_eq!(split.rejected_items, 0);
    }

    #[test]
    fn a_large_request_is_cut_into_pieces_that_fit_and_keep_every_span_in_order() {
        let request = traces(3, 2, 50, 100);
        let original: Vec<(u32, String, usize)> = flatten(&request);
        let limit = 2_000;
        let split = request.split(limit);
        assert!(split.pieces.len() > 10, "{} pieces", split.pieces.len());
        assert_eq!(split.rejected_items, 0);
        let merged = check(&split, limit);
        assert_eq!(merged.item_count(), 300);
        assert_eq!(
            flatten(&merged),
            original,
            "resource and scope kept per span"
        );
    }

    #[test]
    fn an_item_larger_than_a_frame_is_rejected_and_the_rest_kept() {
        let mut request = traces(1, 1, 4, 10);
        request.resource_spans[0].scope_spans[0].spans[2] = span(5_000);
        let split = request.split(1_000);
        assert_eq!(split.rejected_items, 1);
        assert!(split.largest_rejected_bytes > 5_000);
        assert_eq!(check(&split, 1_000).item_count(), 3);
    }

    #[test]
    fn metrics_are_cut_between_metrics_and_counted_in_data_points() {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Gauge, NumberDataPoint};
        let metric = |i: usize| Metric {
            name: format!("m{i}{}", "x".repeat(200)),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); 3],
            })),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: (0..20).map(metric).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let split = request.split(1_000);
        assert!(split.pieces.len() >= 4);
        assert_eq!(split.pieces.iter().map(|p| p.items).sum::<u64>(), 60);
        for piece in &split.pieces {
            assert!(piece.otlp.len() <= 1_000);
            let decoded = ExportMetricsServiceRequest::decode(piece.otlp.clone()).unwrap();
            assert_eq!(decoded.item_count(), piece.items);
        }
    }

    /// An item within a dozen bytes of the limit fits a frame alone and
    /// must be carried, not rejected (the fuzz seed logs-split.bin: a log
    /// record whose one-item request is 149 bytes was refused at 150).
    #[test]
    fn an_item_that_fits_a_frame_exactly_alone_is_carried() {
        let request = traces(1, 1, 3, 40);
        let alone = traces(1, 1, 1, 40).encoded_len();
        assert!(request.encoded_len() > alone);
        let split = request.split(alone);
        assert_eq!(split.rejected_items, 0, "{split:?}");
        assert_eq!(split.pieces.len(), 3);
        for piece in &split.pieces {
            assert_eq!(piece.otlp.len(), alone);
        }
        assert_eq!(check(&split, alone).item_count(), 3);
        let split = traces(1, 1, 3, 40).split(alone - 1);
        assert_eq!(split.rejected_items, 3);
        assert!(split.pieces.is_empty());
    }

    /// The fuzz finding in fuzz/regressions/otlp_split/: a resource nearly
    /// a frame large made every small item a piece of its own, each
    /// repeating the resource (568 bytes came out as 1,449; 16 MiB of tiny
    /// spans under a 4 MiB resource would have come out as terabytes).
    #[test]
    fn repeating_a_large_resource_is_bounded_and_what_it_leaves_out_reported() {
        let limit = 2_000;
        let mut request = traces(1, 1, 200, 1);
        request.resource_spans[0].resource = Some(Resource {
            attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                key: "k".repeat(limit - 60),
                ..Default::default()
            }],
            ..Default::default()
        });
        let request_len = request.encoded_len();
        let split = request.split(limit);
        let total: usize = split.pieces.iter().map(|p| p.otlp.len()).sum();
        assert!(
            total <= 2 * request_len + limit,
            "{total} from {request_len}"
        );
        assert!(split.over_budget_items > 0, "{split:?}");
        assert_eq!(split.rejected_items, split.over_budget_items);
        let carried = check(&split, limit).item_count();
        assert_eq!(carried + split.rejected_items, 200);
        assert!(carried > 0);
        let message = Rejected::of(&split, super::super::Signal::Traces, limit)
            .message()
            .unwrap();
        assert!(
            message.contains("repeating them in every piece"),
            "{message}"
        );
        assert!(!message.contains("the largest item"), "{message}");
    }

    fn flatten(request: &ExportTraceServiceRequest) -> Vec<(u32, String, usize)> {
        let mut out = Vec::new();
        for r in &request.resource_spans {
            let rid = r
                .resource
                .as_ref()
                .map_or(0, |r| r.dropped_attributes_count);
            for s in &r.scope_spans {
                let scope = s.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                for span in &s.spans {
                    out.push((rid, scope.clone(), span.name.len()));
                }
            }
        }
        out
    }
}
