//! OTLP/gRPC receivers: the collector `TraceService`, `MetricsService` and
//! `LogsService` over a [`TelemetrySink`]. The request message is taken as
//! bytes (gzip accepted, size capped) and never decoded into structs: it
//! goes through [`forward_bytes`] (framing checked and items counted on the
//! wire, forwarded as is, split when larger than a frame, items that fit no
//! frame answered with OTLP partial success). A refusal becomes
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail, which OTLP
//! exporters treat as retryable after the given delay (without it for a
//! request that can never be taken).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::request::{forward_bytes, ForwardError, OtlpRequest};
use super::sink::{Refusal, Signal, TelemetrySink};
use super::{Receiver, ServeError};

/// `RESOURCE_EXHAUSTED` carrying `RetryInfo { retry_delay }`; without
/// `RetryInfo` when the request can never be taken (OTLP: not retryable).
pub fn refused(signal: Signal, refusal: &Refusal) -> Status {
    let message = format!("{signal} export refused: {}", refusal.reason);
    match refusal.retry_after {
        Some(delay) => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::new(Code::ResourceExhausted, message),
    }
}

/// Requests in as bytes, answers out as the signal's response message.
struct BytesCodec<Resp>(PhantomData<fn() -> Resp>);

impl<Resp> Default for BytesCodec<Resp> {
    fn default() -> Self {
        BytesCodec(PhantomData)
    }
}

impl<Resp: Message + Send + 'static> Codec for BytesCodec<Resp> {
    type Encode = Resp;
    type Decode = Bytes;
    type Encoder = ResponseEncoder<Resp>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

struct ResponseEncoder<Resp>(PhantomData<fn() -> Resp>);

impl<Resp: Message> Encoder for ResponseEncoder<Resp> {
    type Item = Resp;
    type Error = Status;

    fn encode(&mut self, item: Resp, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(format!("encoding the answer: {error}")))
    }
}

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One OTLP collector service (`R` names the signal) over a sink.
pub struct OtlpService<S, R> {
    sink: Arc<S>,
    max_bytes: usize,
    signal: PhantomData<fn() -> R>,
}

impl<S, R> Clone for OtlpService<S, R> {
    fn clone(&self) -> Self {
        OtlpService {
            sink: Arc::clone(&self.sink),
            max_bytes: self.max_bytes,
            signal: PhantomData,
        }
    }
}

/// The export call itself.
struct Export<S, R> {
    sink: Arc<S>,
    signal: PhantomData<fn() -> R>,
}

impl<S: TelemetrySink, R: OtlpRequest> UnaryService<Bytes> for Export<S, R> {
    type Response = R::Response;
    type Future = std::future::Ready<Result<Response<R::Response>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = match forward_bytes(&*self.sink, R::SIGNAL, request.into_inner()) {
            Ok(rejected) => Ok(Response::new(R::response(&rejected))),
            Err(ForwardError::Malformed(why)) => Err(Status::invalid_argument(format!(
                "malformed OTLP {} request: {why}; send one serialized OTLP export request, as the OpenTelemetry SDKs and the collector do",
                R::SIGNAL
            ))),
            Err(ForwardError::Refused(refusal)) => Err(refused(R::SIGNAL, &refusal)),
        };
        std::future::ready(answer)
    }
}

impl<S: TelemetrySink, R: OtlpRequest> tower::Service<http::Request<tonic::body::Body>>
    for OtlpService<S, R>
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let export = Export::<S, R> {
            sink: Arc::clone(&self.sink),
            signal: PhantomData,
        };
        let max_bytes = self.max_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(BytesCodec::<R::Response>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max_bytes);
            Ok(grpc.unary(export, request).await)
        })
    }
}

impl<S> NamedService for OtlpService<S, ExportTraceServiceRequest> {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<S> NamedService for OtlpService<S, ExportMetricsServiceRequest> {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl<S> NamedService for OtlpService<S, ExportLogsServiceRequest> {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

fn service<S, R>(sink: &Arc<S>, max_bytes: usize) -> OtlpService<S, R> {
    OtlpService {
        sink: Arc::clone(sink),
        max_bytes,
        signal: PhantomData,
    }
}

/// The three OTLP services as tonic routes: gzip accepted, requests larger
/// than `max_bytes` (decompressed) refused with `RESOURCE_EXHAUSTED`.
pub fn services<S: TelemetrySink>(sink: Arc<S>, max_bytes: usize) -> tonic::service::Routes {
    tonic::service::Routes::new(service::<S, ExportTraceServiceRequest>(&sink, max_bytes))
        .add_service(service::<S, ExportMetricsServiceRequest>(&sink, max_bytes))
        .add_service(service::<S, ExportLogsServiceRequest>(&sink, max_bytes))
}

/// Binds `addr` (port 0 allowed) and serves [`services`] until `shutdown`
/// completes. Returns once bound, with the bound address.
pub async fn serve_grpc<S, F>(
    addr: SocketAddr,
    sink: Arc<S>,
    max_bytes: usize,
    shutdown: F,
) -> Result<Receiver, ServeError>
where
    S: TelemetrySink,
    F: Future<Output = ()> + Send + 'static,
{
    let (listener, local_addr) = super::bind("grpc", addr).await?;
    let incoming = super::slow_clients::capped_incoming(listener);
    let routes = services(sink, max_bytes);
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(super::slow_clients::MAX_STREAMS_PER_CONNECTION))
            .timeout(super::slow_clients::GRPC_REQUEST_TIMEOUT)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(ServeError::from)
    });
    Ok(Receiver { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::count::tests::traces;
    use crate::telemetry::sink::testing::RecordingSink;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message;
    use std::time::Duration;
    use tokio::sync::oneshot;

    struct Running {
        sink: Arc<RecordingSink>,
        url: String,
        stop: Option<oneshot::Sender<()>>,
        receiver: Receiver,
    }

    async fn start(max_bytes: usize) -> Running {
        let sink = Arc::new(RecordingSink::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let receiver = serve_grpc(
            "127.0.0.1:0".parse().unwrap(),
            sink.clone(),
            max_bytes,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        let url = format!("http://{}", receiver.local_addr);
        Running {
            sink,
            url,
            stop: Some(stop),
            receiver,
        }
    }

    impl Running {
        async fn shutdown(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.receiver.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn trace_export_reaches_the_sink_with_its_item_count() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        let mut client = TraceServiceClient::connect(server.url.clone())
            .await
            .unwrap()
            .send_compressed(CompressionEncoding::Gzip);
        let request = traces(2, &[1, 2]);
        let response = client.export(request.clone()).await.unwrap().into_inner();
        assert_eq!(response.partial_success, None);
        let offers = server.sink.offers.lock().clone();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].0, Signal::Traces);
        assert_eq!(offers[0].2, 6);
        assert_eq!(
            ExportTraceServiceRequest::decode(offers[0].1.clone()).unwrap(),
            request
        );
        // Empty requests succeed without reaching the sink.
        client
            .export(ExportTraceServiceRequest::default())
            .await
            .unwrap();
        assert_eq!(server.sink.offers.lock().len(), 1);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_request_larger_than_a_frame_is_split_and_oversized_spans_reported() {
        use opentelemetry_proto::tonic::trace::v1::Span;
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        server.sink.set_max_piece_bytes(4096);
        let mut client = TraceServiceClient::connect(server.url.clone())
            .await
            .unwrap();
        let mut request = traces(1, &[200]);
        let spans = &mut request.resource_spans[0].scope_spans[0].spans;
        for span in spans.iter_mut() {
            span.name = "n".repeat(100);
        }
        spans[7] = Span {
            name: "huge".repeat(2000),
            ..Default::default()
        };
        let response = client.export(request).await.unwrap().into_inner();
        let partial = response.partial_success.expect("partial success");
        assert_eq!(partial.rejected_spans, 1);
        assert!(
            partial.error_message.contains("more than the 4096 bytes"),
            "{}",
            partial.error_message
        );
        let offers = server.sink.offers.lock().clone();
        assert!(offers.len() > 3, "split into {} pieces", offers.len());
        assert!(offers.iter().all(|(_, otlp, _)| otlp.len() <= 4096));
        assert_eq!(offers.iter().map(|(_, _, n)| n).sum::<u64>(), 199);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn logs_export_is_counted_as_log_records() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        let mut client = LogsServiceClient::connect(server.url.clone())
            .await
            .unwrap();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 4],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.export(request).await.unwrap();
        assert_eq!(server.sink.counts(), vec![(Signal::Logs, 4)]);
        server.shutdown().await;
    }

    #[test]
    fn only_a_retryable_refusal_carries_retry_info() {
        let later = refused(
            Signal::Traces,
            &Refusal {
                retry_after: Some(Duration::from_secs(1)),
                reason: "full".into(),
            },
        );
        assert_eq!(later.code(), Code::ResourceExhausted);
        assert!(later.get_details_retry_info().is_some());
        let never = refused(
            Signal::Traces,
            &Refusal {
                retry_after: None,
                reason: "too large".into(),
            },
        );
        assert_eq!(never.code(), Code::ResourceExhausted);
        assert!(never.get_details_retry_info().is_none());
    }

    #[tokio::test]
    async fn refusal_is_resource_exhausted_with_retry_info() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        server.sink.set_refuse(true);
        let mut client = TraceServiceClient::connect(server.url.clone())
            .await
            .unwrap();
        let status = client.export(traces(1, &[1])).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("telemetry buffer full"));
        let retry = status.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
        assert!(server.sink.offers.lock().is_empty());
        server.shutdown().await;
    }

    #[tokio::test]
    async fn request_over_the_size_limit_is_rejected() {
        let server = start(1024).await;
        let mut client = TraceServiceClient::connect(server.url.clone())
            .await
            .unwrap();
        let status = client.export(traces(1, &[100])).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        // The limit holds after decompression too: this compresses below it.
        let mut client = client.send_compressed(CompressionEncoding::Gzip);
        let status = client.export(traces(1, &[100])).await.unwrap_err();
        assert!(status.message().contains("size limit"), "{status:?}");
        assert!(server.sink.offers.lock().is_empty());
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let err = serve_grpc(addr, Arc::new(RecordingSink::default()), 1024, async {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
