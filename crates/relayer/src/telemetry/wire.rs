//! OTLP export requests as bytes, never decoded into structs: a wire-level
//! walk that checks the protobuf framing of the three nesting levels
//! (request → resource → scope → item) and counts the items (spans, metric
//! data points, log records), and a splitter that cuts a request larger than
//! a frame between its items by copying byte ranges. Memory is the request
//! plus at most about one piece; decoding would have cost up to 130 times
//! the request (an empty span is 2 bytes on the wire, a few hundred in a
//! struct).
//!
//! The three signals share one shape: the request's field 1 holds the
//! resources, a resource's field 2 its scopes, a scope's field 2 its items.
//! A metric's data points are field 1 of its gauge (5), sum (7), histogram
//! (9), exponential histogram (10) or summary (11). Everything else at these
//! levels — the resource itself, the scope, schema URLs, unknown fields — is
//! the level's *shell*, repeated in every piece that carries its items.
//!
//! The split follows `split.rs` exactly (same sizes, same left-out rules):
//! an item that cannot fit a frame even alone is left out and reported, and
//! the pieces together stay within twice the request plus one frame. Pure;
//! no I/O.

use std::ops::Range;

use bytes::Bytes;

use super::sink::Signal;
use super::split::{Piece, Split};

/// Field numbers of the three levels (the same for every signal).
const RESOURCES: u32 = 1;
const SCOPES: u32 = 2;
const ITEMS: u32 = 2;
/// The data fields of a `Metric`, each a message whose field 1 repeats the
/// data points.
const METRIC_DATA: [u32; 5] = [5, 7, 9, 10, 11];
const DATA_POINTS: u32 = 1;

/// Why bytes are not an OTLP export request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the protobuf ends in the middle of a field at byte {0}")]
    Truncated(usize),
    #[error("a varint at byte {0} is longer than 10 bytes")]
    VarintTooLong(usize),
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
    #[error("wire type {wire_type} at byte {at} (groups and unknown wire types are not OTLP)")]
    WireType { wire_type: u8, at: usize },
    #[error("field {field} of {level} at byte {at} is not length-delimited")]
    NotAMessage {
        field: u32,
        level: &'static str,
        at: usize,
    },
}

/// A field's value on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Scalar,
    /// The payload of a length-delimited field.
    Len(Range<usize>),
}

/// One field: its number, value, and the bytes of the whole field (tag
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    number: u32,
    value: Value,
    whole: Range<usize>,
}

/// The fields of the message in `buf[range]`, one by one.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Fields {
            buf,
            pos: range.start,
            end: range.end,
        }
    }

    /// Tags and lengths below 128 are one byte: by far the most common
    /// case in OTLP, so it is decided before the general loop.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        if let Some(&byte) = self.buf[..self.end].get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in 0..10 {
            if self.pos >= self.end {
                return Err(WireError::Truncated(start));
            }
            let byte = self.buf[self.pos];
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong(start))
    }

    #[inline(always)]
    fn skip(&mut self, bytes: u64, start: usize) -> Result<(), WireError> {
        let bytes = usize::try_from(bytes).map_err(|_| WireError::Truncated(start))?;
        if self.end - self.pos < bytes {
            return Err(WireError::Truncated(start));
        }
        self.pos += bytes;
        Ok(())
    }
}

impl Fields<'_> {
    /// Checks one field's framing and steps over it: what [`Iterator::next`]
    /// checks, with the same errors, but nothing built.
    #[inline]
    fn step(&mut self) -> Result<(), WireError> {
        let start = self.pos;
        let tag = self.varint()?;
        if tag >> 3 == 0 || tag >> 3 > u64::from(u32::MAX) {
            return Err(WireError::FieldZero(start));
        }
        match tag & 7 {
            0 => {
                self.varint()?;
            }
            1 => self.skip(8, start)?,
            5 => self.skip(4, start)?,
            2 => {
                let len = self.varint()?;
                self.skip(len, start)?;
            }
            wire_type => {
                return Err(WireError::WireType {
                    wire_type: wire_type as u8,
                    at: start,
                })
            }
        }
        Ok(())
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let start = self.pos;
        let field = (|| {
            let tag = self.varint()?;
            let number = u32::try_from(tag >> 3).map_err(|_| WireError::FieldZero(start))?;
            if number == 0 {
                return Err(WireError::FieldZero(start));
            }
            let value = match tag & 7 {
                0 => {
                    self.varint()?;
                    Value::Scalar
                }
                1 => {
                    self.skip(8, start)?;
                    Value::Scalar
                }
                5 => {
                    self.skip(4, start)?;
                    Value::Scalar
                }
                2 => {
                    let len = self.varint()?;
                    let from = self.pos;
                    self.skip(len, start)?;
                    Value::Len(from..self.pos)
                }
                wire_type => {
                    return Err(WireError::WireType {
                        wire_type: wire_type as u8,
                        at: start,
                    })
                }
            };
            Ok(Field {
                number,
                value,
                whole: start..self.pos,
            })
        })();
        if field.is_err() {
            // One error ends the walk.
            self.pos = self.end;
        }
        Some(field)
    }
}

/// The payload of a field that must be a message.
fn message(field: &Field, level: &'static str) -> Result<Range<usize>, WireError> {
    match &field.value {
        Value::Len(range) => Ok(range.clone()),
        Value::Scalar => Err(WireError::NotAMessage {
            field: field.number,
            level,
            at: field.whole.start,
        }),
    }
}

/// Checks the framing of every field of the message in `buf[range]`. The
/// hottest loop of the walk (every field of every span and log record), so
/// it steps over fields without building them.
fn check_framing(buf: &[u8], range: Range<usize>) -> Result<(), WireError> {
    let mut fields = Fields::new(buf, range);
    while fields.pos < fields.end {
        fields.step()?;
    }
    Ok(())
}

/// Items in one item message: 1 for a span or a log record, the data points
/// for a metric.
fn item_count(signal: Signal, buf: &[u8], item: Range<usize>) -> Result<u64, WireError> {
    if signal != Signal::Metrics {
        check_framing(buf, item)?;
        return Ok(1);
    }
    let mut points = 0;
    for field in Fields::new(buf, item) {
        let field = field?;
        if METRIC_DATA.contains(&field.number) {
            let data = message(&field, "a metric")?;
            for inner in Fields::new(buf, data) {
                let inner = inner?;
                if inner.number == DATA_POINTS {
                    message(&inner, "metric data")?;
                    points += 1;
                }
            }
        }
    }
    Ok(points)
}

/// Walks the whole request: checks the framing of the request, resource,
/// scope and item levels (and a metric's data) and counts the items.
pub fn count_items(signal: Signal, buf: &[u8]) -> Result<u64, WireError> {
    let mut total = 0u64;
    for resource in Fields::new(buf, 0..buf.len()) {
        let resource = resource?;
        if resource.number != RESOURCES {
            continue;
        }
        for scope in Fields::new(buf, message(&resource, "the request")?) {
            let scope = scope?;
            if scope.number != SCOPES {
                continue;
            }
            for item in Fields::new(buf, message(&scope, "a resource")?) {
                let item = item?;
                if item.number != ITEMS {
                    continue;
                }
                total += item_count(signal, buf, message(&item, "a scope")?)?;
            }
        }
    }
    Ok(total)
}

/// The bytes of every field of `buf[range]` except field `except`: a level's
/// shell.
fn shell(buf: &[u8], range: Range<usize>, except: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for field in Fields::new(buf, range).flatten() {
        if field.number != except {
            out.extend_from_slice(&buf[field.whole]);
        }
    }
    out
}

fn varint_len(value: usize) -> usize {
    prost::encoding::encoded_len_varint(value as u64)
}

/// Size of a message of `len` bytes embedded as a field below 16.
fn embedded_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

/// Upper bound of what embedding costs besides the message (as split.rs).
const EMBED_OVERHEAD: usize = 6;

fn put_embedded(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    out.push(((field << 3) | 2) as u8);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// The piece being filled: finished resources, the open resource's body
/// (shell and finished scopes) and the open scope's body (shell and items).
#[derive(Default)]
struct Chunk {
    request: Vec<u8>,
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// Upper bound of the piece's size, as split.rs counts it.
    bytes: usize,
    items: u64,
    resource_open: bool,
    scope_open: bool,
}

impl Chunk {
    fn close_scope(&mut self) {
        if self.scope_open {
            put_embedded(&mut self.resource, SCOPES, &self.scope);
            self.scope.clear();
            self.scope_open = false;
        }
    }

    fn close_resource(&mut self) {
        self.close_scope();
        if self.resource_open {
            put_embedded(&mut self.request, RESOURCES, &self.resource);
            self.resource.clear();
            self.resource_open = false;
        }
    }

    fn take(&mut self, out: &mut Split) {
        self.close_resource();
        if self.items == 0 && self.request.is_empty() {
            return;
        }
        let chunk = std::mem::take(self);
        out.pieces.push(Piece {
            otlp: Bytes::from(chunk.request),
            items: chunk.items,
        });
    }
}

/// `request` (already walked by [`count_items`]) as pieces of at most
/// `limit` bytes: the request itself when it fits, else cut between items
/// with each piece repeating the shells of the items it carries.
pub fn split(signal: Signal, request: &Bytes, limit: usize) -> Split {
    let mut out = Split::default();
    let buf: &[u8] = request;
    if buf.len() <= limit {
        out.pieces.push(Piece {
            otlp: request.clone(),
            items: count_items(signal, buf).unwrap_or(0),
        });
        return out;
    }
    let budget = buf.len().saturating_mul(2).saturating_add(limit);
    let mut spent = 0usize;
    let mut chunk = Chunk::default();
    for resource in Fields::new(buf, 0..buf.len()).flatten() {
        let Value::Len(resource_range) = resource.value else {
            continue;
        };
        if resource.number != RESOURCES {
            continue;
        }
        let resource_shell = shell(buf, resource_range.clone(), SCOPES);
        let resource_len = resource_shell.len();
        for scope in Fields::new(buf, resource_range).flatten() {
            let Value::Len(scope_range) = scope.value else {
                continue;
            };
            if scope.number != SCOPES {
                continue;
            }
            let scope_shell = shell(buf, scope_range.clone(), ITEMS);
            let scope_len = scope_shell.len();
            for item in Fields::new(buf, scope_range).flatten() {
                let Value::Len(item_range) = item.value else {
                    continue;
                };
                if item.number != ITEMS {
                    continue;
                }
                let count = item_count(signal, buf, item_range.clone()).unwrap_or(0);
                let item_len = item_range.len();
                let item_bytes = item_len + EMBED_OVERHEAD;
                let alone =
                    embedded_len(resource_len + embedded_len(scope_len + embedded_len(item_len)));
                if alone > limit {
                    out.rejected_items += count;
                    out.largest_rejected_bytes = out.largest_rejected_bytes.max(item_len);
                    continue;
                }
                let resource_cost = resource_len + EMBED_OVERHEAD;
                let scope_cost = scope_len + EMBED_OVERHEAD;
                let mut needed = item_bytes;
                if !chunk.resource_open {
                    needed += resource_cost;
                }
                if !chunk.scope_open {
                    needed += scope_cost;
                }
                let fresh = chunk.bytes + needed > limit;
                if fresh {
                    needed = item_bytes + resource_cost + scope_cost;
                }
                let cost = needed - item_bytes + embedded_len(item_len);
                if spent + cost > budget {
                    out.rejected_items += count;
                    out.over_budget_items += count;
                    continue;
                }
                spent += cost;
                if fresh {
                    chunk.take(&mut out);
                }
                if !chunk.resource_open {
                    chunk.resource.extend_from_slice(&resource_shell);
                    chunk.resource_open = true;
                }
                if !chunk.scope_open {
                    chunk.scope.extend_from_slice(&scope_shell);
                    chunk.scope_open = true;
                }
                put_embedded(&mut chunk.scope, ITEMS, &buf[item_range]);
                chunk.items += count;
                chunk.bytes += needed;
            }
            chunk.close_scope();
        }
        chunk.close_resource();
    }
    chunk.take(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;
    use crate::telemetry::count::ItemCount;
    use crate::telemetry::split::SplitRequest;

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
                            spans: (0..spans)
                                .map(|i| Span {
                                    trace_id: vec![7; 16],
                                    span_id: vec![i as u8; 8],
                                    name: "s".repeat(name_len + i % 7),
                                    ..Default::default()
                                })
                                .collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn metrics() -> ExportMetricsServiceRequest {
        let point = NumberDataPoint::default();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "g".into(),
                            data: Some(Data::Gauge(Gauge {
                                data_points: vec![point.clone(); 3],
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "s".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![point; 2],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "h".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint::default(); 4],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "empty".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs(records: usize) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..records)
                        .map(|i| LogRecord {
                            severity_text: format!("INFO-{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_match_the_decoded_counts() {
        let t = traces(3, 2, 17, 10);
        assert_eq!(
            count_items(Signal::Traces, &t.encode_to_vec()),
            Ok(t.item_count())
        );
        let m = metrics();
        assert_eq!(count_items(Signal::Metrics, &m.encode_to_vec()), Ok(9));
        assert_eq!(m.item_count(), 9);
        let l = logs(12);
        assert_eq!(count_items(Signal::Logs, &l.encode_to_vec()), Ok(12));
        assert_eq!(count_items(Signal::Traces, &[]), Ok(0));
    }

    #[test]
    fn malformed_requests_are_refused_where_they_break() {
        let good = traces(1, 1, 3, 5).encode_to_vec();
        let rows: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "ends in the middle"),
            (vec![0x0a, 0x05, 0x01], "ends in the middle"),
            (vec![0x08, 0x01], "not length-delimited"), // field 1 as a varint
            (vec![0x0b, 0x0c], "wire type 3"),          // a group
            (vec![0x00, 0x00], "field number 0"),
            (
                vec![
                    0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
                ],
                "longer than 10 bytes",
            ),
            // A span whose own fields are broken.
            (
                vec![0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x0a, 0x05],
                "ends in the middle",
            ),
        ];
        // Inside a span (the framing check's own loop): request → resource →
        // scope → span bytes.
        let in_span = |span: &[u8]| {
            let n = span.len() as u8;
            let mut bytes = vec![0x0a, n + 4, 0x12, n + 2, 0x12, n];
            bytes.extend_from_slice(span);
            bytes
        };
        let mut long_varint = vec![0x08];
        long_varint.extend([0x80; 10]);
        long_varint.push(0x01);
        let span_rows: Vec<(Vec<u8>, &str)> = vec![
            (in_span(&[0x0b]), "wire type 3"),
            (in_span(&[0x00, 0x00]), "field number 0"),
            (in_span(&[0x09, 1, 2, 3]), "ends in the middle"),
            (in_span(&[0x0d, 1, 2]), "ends in the middle"),
            (in_span(&[0x12, 0x05, b'a']), "ends in the middle"),
            (in_span(&long_varint), "longer than 10 bytes"),
        ];
        for (bytes, expected) in rows.into_iter().chain(span_rows) {
            let error = count_items(Signal::Traces, &bytes).unwrap_err().to_string();
            assert!(error.contains(expected), "{bytes:?}: {error}");
        }
        // Every wire type a span may hold passes.
        let fine = in_span(&[
            0x08, 0x96, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1d, 1, 2, 3, 4,
        ]);
        assert_eq!(count_items(Signal::Traces, &fine), Ok(1));
    }

    /// The wire split cuts where the struct split cuts: the same pieces
    /// (decoded; the shells' fields may come in another order on the wire),
    /// the same sizes, the same left-out items, for sizes around every
    /// boundary.
    fn same_split<R: Message + Default + PartialEq + std::fmt::Debug + SplitRequest + Clone>(
        signal: Signal,
        request: &R,
        limit: usize,
    ) {
        let bytes = Bytes::from(request.encode_to_vec());
        let wire = split(signal, &bytes, limit);
        let structs = request.clone().split(limit);
        let decode = |split: &Split| -> Vec<(R, u64, usize)> {
            split
                .pieces
                .iter()
                .map(|p| (R::decode(p.otlp.clone()).unwrap(), p.items, p.otlp.len()))
                .collect()
        };
        assert_eq!(decode(&wire), decode(&structs), "limit {limit}");
        assert_eq!(
            (
                wire.rejected_items,
                wire.over_budget_items,
                wire.largest_rejected_bytes
            ),
            (
                structs.rejected_items,
                structs.over_budget_items,
                structs.largest_rejected_bytes
            ),
            "limit {limit}"
        );
        for piece in &wire.pieces {
            assert!(piece.otlp.len() <= limit, "{} > {limit}", piece.otlp.len());
        }
    }

    #[test]
    fn the_wire_split_is_the_struct_split() {
        let cases = [
            (traces(1, 1, 200, 20), 1_000),
            (traces(3, 2, 50, 40), 2_000),
            (traces(2, 3, 30, 300), 700),
            (traces(1, 1, 5, 2_000), 1_500), // items too large for a frame
            (traces(4, 4, 4, 4), 100_000),   // fits whole
        ];
        for (request, limit) in cases {
            same_split(Signal::Traces, &request, limit);
        }
        same_split(Signal::Metrics, &metrics(), 40);
        same_split(Signal::Logs, &logs(300), 500);
    }

    /// A request that fits is forwarded as the very same bytes.
    #[test]
    fn a_request_that_fits_is_not_copied() {
        let bytes = Bytes::from(traces(2, 2, 10, 10).encode_to_vec());
        let split = split(Signal::Traces, &bytes, bytes.len());
        assert_eq!(split.pieces.len(), 1);
        assert_eq!(split.pieces[0].otlp.as_ptr(), bytes.as_ptr());
        assert_eq!(split.pieces[0].items, 40);
    }

    /// Empty spans (2 bytes each on the wire): counting and splitting stay
    /// within a small multiple of the request, unlike decoding.
    #[test]
    fn tiny_items_cost_no_structs() {
        let mut scope = Vec::new();
        for _ in 0..100_000 {
            scope.extend_from_slice(&[0x12, 0x00]);
        }
        let mut resource = Vec::new();
        put_embedded(&mut resource, SCOPES, &scope);
        let mut request = Vec::new();
        put_embedded(&mut request, RESOURCES, &resource);
        let bytes = Bytes::from(request);
        assert_eq!(count_items(Signal::Traces, &bytes), Ok(100_000));
        let split = split(Signal::Traces, &bytes, 16 * 1024);
        let items: u64 = split.pieces.iter().map(|p| p.items).sum();
        assert_eq!(items + split.rejected_items, 100_000);
        assert_eq!(split.rejected_items, 0);
        let total: usize = split.pieces.iter().map(|p| p.otlp.len()).sum();
        assert!(total <= bytes.len() * 2 + 16 * 1024, "{total}");
    }
}
