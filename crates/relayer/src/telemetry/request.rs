//! What the two OTLP receivers share: the three export request types as
//! one trait ([`OtlpRequest`]: signal, answer with partial success),
//! [`forward_bytes`], which offers a protobuf request to the sink as
//! frame-sized pieces without decoding it (`wire`), and [`forward`], the
//! same for a request decoded from OTLP/JSON.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::sink::{Refusal, Signal, TelemetrySink};
use super::split::{Piece, Rejected, SplitRequest};
use super::wire::{self, WireError};

/// An OTLP export request type and what it answers with.
pub trait OtlpRequest: SplitRequest + DeserializeOwned + 'static {
    const SIGNAL: Signal;
    type Response: Message + Default + Serialize;
    /// The answer, with partial success when items were left out.
    fn response(rejected: &Rejected) -> Self::Response;
}

impl OtlpRequest for ExportTraceServiceRequest {
    const SIGNAL: Signal = Signal::Traces;
    type Response = ExportTraceServiceResponse;
    fn response(rejected: &Rejected) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: rejected
                .message()
                .map(|error_message| ExportTracePartialSuccess {
                    rejected_spans: rejected.items as i64,
                    error_message,
                }),
        }
    }
}

impl OtlpRequest for ExportMetricsServiceRequest {
    const SIGNAL: Signal = Signal::Metrics;
    type Response = ExportMetricsServiceResponse;
    fn response(rejected: &Rejected) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: rejected
                .message()
                .map(|error_message| ExportMetricsPartialSuccess {
                    rejected_data_points: rejected.items as i64,
                    error_message,
                }),
        }
    }
}

impl OtlpRequest for ExportLogsServiceRequest {
    const SIGNAL: Signal = Signal::Logs;
    type Response = ExportLogsServiceResponse;
    fn response(rejected: &Rejected) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: rejected
                .message()
                .map(|error_message| ExportLogsPartialSuccess {
                    rejected_log_records: rejected.items as i64,
                    error_message,
                }),
        }
    }
}

/// Offers `request` to `sink` in pieces that each fit a frame, all or none.
/// `raw` is the request's own protobuf encoding when the caller has it
/// (an OTLP/HTTP protobuf body): used as is when it fits, so the common
/// case re-encodes nothing. Returns what had to be left out (items larger
/// than a frame), for the partial-success answer; an empty request
/// succeeds without reaching the sink.
pub fn forward<R: OtlpRequest, S: TelemetrySink + ?Sized>(
    sink: &S,
    request: R,
    raw: Option<Bytes>,
) -> Result<Rejected, Refusal> {
    let items = request.item_count();
    if items == 0 {
        return Ok(Rejected::default());
    }
    let limit = sink.max_piece_bytes();
    let whole = |otlp| (vec![Piece { otlp, items }], Rejected::default());
    let (pieces, rejected) = match raw {
        Some(otlp) if otlp.len() <= limit => whole(otlp),
        _ => {
            // Sized once and encoded once on the common path; only a request
            // larger than a frame is walked again to be split.
            let len = request.encoded_len();
            if len <= limit {
                let mut otlp = Vec::with_capacity(len);
                request.encode_raw(&mut otlp);
                whole(Bytes::from(otlp))
            } else {
                let split = request.split(limit);
                let rejected = Rejected::of(&split, R::SIGNAL, limit);
                (split.pieces, rejected)
            }
        }
    };
    if !pieces.is_empty() {
        sink.offer(R::SIGNAL, pieces)?;
    }
    Ok(rejected)
}

/// Why [`forward_bytes`] did not forward a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// Not an OTLP export request: answered INVALID_ARGUMENT / 400.
    Malformed(WireError),
    /// The sink refused it (buffer full, or larger than the buffer).
    Refused(Refusal),
}

/// Offers the protobuf export request `otlp` to `sink` as it came: its
/// framing is checked and its items counted on the wire (`wire`), it is
/// forwarded as the very same bytes when it fits a frame, and cut between
/// items by copying byte ranges when it does not — never decoded into
/// structs. Returns what had to be left out, for the partial-success
/// answer; an empty request succeeds without reaching the sink.
pub fn forward_bytes<S: TelemetrySink + ?Sized>(
    sink: &S,
    signal: Signal,
    otlp: Bytes,
) -> Result<Rejected, ForwardError> {
    let items = wire::count_items(signal, &otlp).map_err(ForwardError::Malformed)?;
    if items == 0 {
        return Ok(Rejected::default());
    }
    let limit = sink.max_piece_bytes();
    let (pieces, rejected) = if otlp.len() <= limit {
        (vec![Piece { otlp, items }], Rejected::default())
    } else {
        let split = wire::split(signal, &otlp, limit);
        let rejected = Rejected::of(&split, signal, limit);
        (split.pieces, rejected)
    };
    if !pieces.is_empty() {
        sink.offer(signal, pieces).map_err(ForwardError::Refused)?;
    }
    Ok(rejected)
}
