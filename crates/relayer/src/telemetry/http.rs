//! OTLP/HTTP receivers (axum): `POST /v1/traces`, `/v1/metrics`, `/v1/logs`
//! with binary protobuf (`application/x-protobuf`) or the OTLP JSON mapping
//! (`application/json`), optionally `Content-Encoding: gzip`. Each request
//! is counted and offered to a [`TelemetrySink`]: protobuf bodies as bytes,
//! never decoded (`wire`: framing checked, items counted, forwarded as they
//! came or split by byte ranges), JSON decoded and re-encoded as protobuf;
//! a request larger than a frame is split first, and items that fit no
//! frame are answered with OTLP partial success.
//!
//! Answers, in the request's format: 200 with an empty
//! `Export*ServiceResponse`; 400 (malformed body), 413 (body over the limit,
//! before or after decompression), 415 (unsupported content type or
//! encoding) and 429 + `Retry-After` (sink refused) with a `google.rpc.Status`
//! whose message says what failed.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;

use super::slow_clients;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::request::{forward, forward_bytes, ForwardError, OtlpRequest};
use super::sink::{Refusal, Signal, TelemetrySink};
use super::{Receiver, ServeError};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// Body encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

/// A failed export, rendered as a `google.rpc.Status` in `format`.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    /// `google.rpc.Code` matching `status`.
    code: tonic::Code,
    message: String,
    format: Format,
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(status: StatusCode, code: tonic::Code, format: Format, message: String) -> Self {
        Failure {
            status,
            code,
            message,
            format,
            retry_after: None,
        }
    }

    fn too_large(format: Format, signal: Signal, max_bytes: usize) -> Self {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
            format,
            format!("OTLP {signal} request is larger than {max_bytes} bytes; send smaller batches"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = tonic_types::Status {
            code: self.code as i32,
            message: self.message,
            details: Vec::new(),
        };
        let body = match self.format {
            Format::Protobuf => status.encode_to_vec(),
            Format::Json => serde_json::to_vec(&serde_json::json!({
                "code": status.code,
                "message": status.message,
            }))
            .unwrap_or_default(),
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, self.format.content_type())],
            body,
        )
            .into_response();
        if let Some(delay) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(delay)),
            );
        }
        response
    }
}

/// `Retry-After` seconds: rounded up, and at least 1 so clients never retry
/// in a tight loop.
fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

/// The request's body format from `Content-Type` (parameters ignored).
fn format_of(headers: &HeaderMap) -> Result<Format, Failure> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = value.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if mime.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            Format::Json,
            format!("unsupported Content-Type {value:?}; use {PROTOBUF} or {JSON}"),
        ))
    }
}

/// The body after `Content-Encoding`, at most `max_bytes` long.
fn decompress(
    headers: &HeaderMap,
    body: Bytes,
    format: Format,
    signal: Signal,
    max_bytes: usize,
) -> Result<Bytes, Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(body);
    }
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            format,
            format!("unsupported Content-Encoding {encoding:?}; use gzip or none"),
        ));
    }
    let mut out = Vec::new();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::GzDecoder::new(body.as_ref())
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|err| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                format,
                format!("OTLP {signal} request body is not valid gzip: {err}"),
            )
        })?;
    if out.len() > max_bytes {
        return Err(Failure::too_large(format, signal, max_bytes));
    }
    Ok(out.into())
}

fn decode<R: OtlpRequest>(format: Format, body: &[u8]) -> Result<R, Failure> {
    let signal = R::SIGNAL;
    let malformed = |detail: String| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            format,
            detail,
        )
    };
    match format {
        Format::Protobuf => R::decode(body)
            .map_err(|err| malformed(format!("malformed OTLP/protobuf {signal} request: {err}"))),
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let request: R = serde_path_to_error::deserialize(&mut de).map_err(|err| {
                malformed(format!(
                    "malformed OTLP/JSON {signal} request at {}: {}",
                    err.path(),
                    err.inner()
                ))
            })?;
            de.end()
                .map_err(|err| malformed(format!("malformed OTLP/JSON {signal} request: {err}")))?;
            Ok(request)
        }
    }
}

struct HttpState<S> {
    sink: Arc<S>,
    max_bytes: usize,
}

async fn export<S: TelemetrySink, R: OtlpRequest>(
    State(state): State<Arc<HttpState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let signal = R::SIGNAL;
    let format = format_of(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure::too_large(format, signal, state.max_bytes)
        } else if crate::error_chain::error_chain(&rejection).contains(slow_clients::STALLED) {
            Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                format,
                format!(
                    "OTLP {signal} request body stalled for {:?}; send it without pauses",
                    slow_clients::BODY_STALL_TIMEOUT
                ),
            )
        } else {
            Failure::new(
                rejection.status(),
                tonic::Code::InvalidArgument,
                format,
                format!("cannot read OTLP {signal} request body: {rejection}"),
            )
        }
    })?;
    let body = decompress(&headers, body, format, signal, state.max_bytes)?;
    let refused = |refusal: Refusal| Failure {
        // 429 + Retry-After while the buffer is full; 413 (not retried)
        // for a request larger than the whole buffer.
        status: match refusal.retry_after {
            Some(_) => StatusCode::TOO_MANY_REQUESTS,
            None => StatusCode::PAYLOAD_TOO_LARGE,
        },
        code: tonic::Code::ResourceExhausted,
        message: format!("{signal} export refused: {}", refusal.reason),
        format,
        retry_after: refusal.retry_after,
    };
    let rejected = match format {
        // Protobuf bodies are checked and forwarded as bytes, never decoded.
        Format::Protobuf => {
            forward_bytes(&*state.sink, signal, body).map_err(|error| match error {
                ForwardError::Malformed(why) => Failure::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    format,
                    format!("malformed OTLP/protobuf {signal} request: {why}; send one serialized OTLP export request, as the OpenTelemetry SDKs and the collector do"),
                ),
                ForwardError::Refused(refusal) => refused(refusal),
            })?
        }
        Format::Json => {
            let request: R = decode(format, &body)?;
            forward(&*state.sink, request, None).map_err(refused)?
        }
    };
    let response = R::response(&rejected);
    let body = match format {
        Format::Protobuf => response.encode_to_vec(),
        Format::Json if rejected.items == 0 => b"{}".to_vec(),
        Format::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
    };
    Ok(([(header::CONTENT_TYPE, format.content_type())], body).into_response())
}

/// The OTLP/HTTP routes over `sink`; bodies over `max_bytes` (before or
/// after gzip) answer 413.
pub fn router<S: TelemetrySink>(sink: Arc<S>, max_bytes: usize) -> Router {
    let state = Arc::new(HttpState { sink, max_bytes });
    Router::new()
        .route("/v1/traces", post(export::<S, ExportTraceServiceRequest>))
        .route(
            "/v1/metrics",
            post(export::<S, ExportMetricsServiceRequest>),
        )
        .route("/v1/logs", post(export::<S, ExportLogsServiceRequest>))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(state)
}

/// Binds `addr` (port 0 allowed) and serves [`router`] until `shutdown`
/// completes. Returns once bound, with the bound address.
pub async fn serve_http<S, F>(
    addr: SocketAddr,
    sink: Arc<S>,
    max_bytes: usize,
    shutdown: F,
) -> Result<Receiver, ServeError>
where
    S: TelemetrySink,
    F: Future<Output = ()> + Send + 'static,
{
    let (listener, local_addr) = super::bind("http", addr).await?;
    let app =
        router(sink, max_bytes).layer(axum::middleware::from_fn(slow_clients::limit_body_stalls));
    let task = tokio::spawn(serve_limited(listener, app, shutdown));
    Ok(Receiver { local_addr, task })
}

/// Serves `app` with the limits of [`slow_clients`]: a header-read timeout,
/// a connection cap (a full house stops accepting; the kernel's backlog
/// holds the rest), a stream cap per HTTP/2 connection, and a graceful
/// stop that waits up to 5 s for requests in progress.
async fn serve_limited<F>(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let connections = Arc::new(tokio::sync::Semaphore::new(slow_clients::MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    tracing::debug!(error = %err, "OTLP/HTTP accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(slow_clients::HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(slow_clients::MAX_STREAMS_PER_CONNECTION);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::count::tests::traces;
    use crate::telemetry::sink::testing::RecordingSink;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use std::io::Write;
    use tokio::sync::oneshot;

    struct Running {
        sink: Arc<RecordingSink>,
        base: String,
        client: reqwest::Client,
        stop: Option<oneshot::Sender<()>>,
        receiver: Receiver,
    }

    async fn start(max_bytes: usize) -> Running {
        crate::logging::install_crypto_provider();
        let sink = Arc::new(RecordingSink::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let receiver = serve_http(
            "127.0.0.1:0".parse().unwrap(),
            sink.clone(),
            max_bytes,
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        Running {
            sink,
            base: format!("http://{}", receiver.local_addr),
            client: reqwest::Client::new(),
            stop: Some(stop),
            receiver,
        }
    }

    impl Running {
        async fn post(
            &self,
            path: &str,
            content_type: &str,
            gzip: bool,
            body: Vec<u8>,
        ) -> reqwest::Response {
            let mut request = self
                .client
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type);
            let body = if gzip {
                request = request.header("content-encoding", "gzip");
                gzipped(&body)
            } else {
                body
            };
            request.body(body).send().await.unwrap()
        }

        async fn shutdown(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.receiver.task.await.unwrap().unwrap();
        }
    }

    fn gzipped(body: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    }

    /// Two spans in one scope, as an OTLP/JSON exporter sends them: camelCase
    /// keys, hex ids, nanosecond times as strings, kind as a number.
    const TRACE_JSON: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0"},
          "spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "parentSpanId": "eee19b7ec3c1b173", "name": "llm.call", "kind": 2,
             "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
             "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "42"}}],
             "status": {"code": 1}},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175",
             "name": "tool.call", "kind": 1,
             "startTimeUnixNano": "1544712660500000000", "endTimeUnixNano": "1544712660600000000"}
          ]
        }]
      }]
    }"#;

    const METRICS_JSON: &str = r#"{"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "tokens", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
          "dataPoints": [{"asInt": "5", "timeUnixNano": "1544712660000000000"},
                         {"asInt": "7", "timeUnixNano": "1544712661000000000"}]}},
        {"name": "latency", "gauge": {"dataPoints": [{"asDouble": 1.5}]}}
    ]}]}]}"#;

    const LOGS_JSON: &str = r#"{"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "1544712660000000000", "severityNumber": 9, "severityText": "INFO",
         "body": {"stringValue": "hello"}, "traceId": "5b8efff798038103d269b633813fc60c"}
    ]}]}]}"#;

    fn google_status(body: &[u8]) -> tonic_types::Status {
        tonic_types::Status::decode(body).unwrap()
    }

    #[tokio::test]
    async fn protobuf_plain_and_gzip_are_accepted_and_counted() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        let request = traces(1, &[2, 1]).encode_to_vec();
        for gzip in [false, true] {
            let response = server
                .post("/v1/traces", PROTOBUF, gzip, request.clone())
                .await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], PROTOBUF);
            let body = response.bytes().await.unwrap();
            assert_eq!(
                ExportTraceServiceResponse::decode(body).unwrap(),
                ExportTraceServiceResponse::default()
            );
        }
        assert_eq!(
            server.sink.counts(),
            vec![(Signal::Traces, 3), (Signal::Traces, 3)]
        );
        let offers = server.sink.offers.lock().clone();
        assert_eq!(offers[1].1, Bytes::from(request));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn json_bodies_of_every_signal_are_accepted_and_reencoded() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        for (path, body, gzip) in [
            ("/v1/traces", TRACE_JSON, false),
            ("/v1/metrics", METRICS_JSON, true),
            ("/v1/logs", LOGS_JSON, false),
        ] {
            let response = server
                .post(path, "application/json; charset=utf-8", gzip, body.into())
                .await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(response.headers()["content-type"], JSON);
            assert_eq!(response.text().await.unwrap(), "{}");
        }
        assert_eq!(
            server.sink.counts(),
            vec![(Signal::Traces, 2), (Signal::Metrics, 3), (Signal::Logs, 1)]
        );
        let offers = server.sink.offers.lock().clone();
        let spans = ExportTraceServiceRequest::decode(offers[0].1.clone()).unwrap();
        let span = &spans.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.trace_id,
            vec![
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(span.name, "llm.call");
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_body_larger_than_a_frame_is_split_and_an_oversized_span_reported_in_json() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        server.sink.set_max_piece_bytes(300);
        let mut request: serde_json::Value = serde_json::from_str(TRACE_JSON).unwrap();
        request["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["name"] =
            serde_json::Value::String("x".repeat(400));
        let response = server
            .post("/v1/traces", JSON, false, request.to_string().into_bytes())
            .await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        // int64 may be a JSON number or string (OTLP/JSON readers take both).
        let rejected = body["partialSuccess"]["rejectedSpans"].to_string();
        assert_eq!(rejected.trim_matches('"'), "1", "{body}");
        assert!(body["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("300 bytes"));
        assert_eq!(server.sink.counts(), vec![(Signal::Traces, 1)]);
        // Protobuf bodies over the limit are split too.
        let large = traces(1, &[20]).encode_to_vec();
        assert!(large.len() > 300);
        let response = server.post("/v1/traces", PROTOBUF, false, large).await;
        assert_eq!(response.status(), 200);
        let offers = server.sink.offers.lock().clone();
        assert!(offers.len() > 2);
        assert!(offers.iter().all(|(_, otlp, _)| otlp.len() <= 300));
        assert_eq!(offers.iter().map(|(_, _, n)| n).sum::<u64>(), 21);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_with_a_reason() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;

        let response = server
            .post("/v1/traces", PROTOBUF, false, vec![0x0a, 0xff, 0x01])
            .await;
        assert_eq!(response.status(), 400);
        let status = google_status(&response.bytes().await.unwrap());
        assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
        assert!(
            status
                .message
                .contains("malformed OTLP/protobuf traces request"),
            "{}",
            status.message
        );

        let bad = TRACE_JSON.replace("\"eee19b7ec3c1b174\"", "\"not-hex\"");
        let response = server.post("/v1/traces", JSON, false, bad.into()).await;
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("malformed OTLP/JSON traces request at resourceSpans[0]"),
            "{message}"
        );

        let response = server
            .post("/v1/logs", JSON, false, b"{\"resourceLogs\": [".to_vec())
            .await;
        assert_eq!(response.status(), 400);

        let response = server
            .client
            .post(format!("{}/v1/logs", server.base))
            .header("content-type", JSON)
            .header("content-encoding", "gzip")
            .body("definitely not gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("not valid gzip"));

        assert!(server.sink.offers.lock().is_empty());
        server.shutdown().await;
    }

    #[tokio::test]
    async fn unsupported_content_type_is_415() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        let response = server
            .post("/v1/traces", "text/plain", false, b"x".to_vec())
            .await;
        assert_eq!(response.status(), 415);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("text/plain"));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_before_and_after_gzip() {
        let server = start(1024).await;
        let big = traces(1, &[100]).encode_to_vec();
        assert!(big.len() > 1024);
        let response = server
            .post("/v1/traces", PROTOBUF, false, big.clone())
            .await;
        assert_eq!(response.status(), 413);
        let status = google_status(&response.bytes().await.unwrap());
        assert!(status.message.contains("larger than 1024 bytes"));
        // Compresses well below the limit, decompresses above it.
        let response = server.post("/v1/traces", PROTOBUF, true, big).await;
        assert_eq!(response.status(), 413);
        assert!(server.sink.offers.lock().is_empty());
        server.shutdown().await;
    }

    #[tokio::test]
    async fn refusal_is_429_with_retry_after_rounded_up() {
        let server = start(crate::telemetry::DEFAULT_MAX_REQUEST_BYTES).await;
        server.sink.set_refuse(true);
        let response = server
            .post("/v1/traces", JSON, false, TRACE_JSON.into())
            .await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], tonic::Code::ResourceExhausted as i32);
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("telemetry buffer full"));
        server.shutdown().await;
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
