//! OTLP into the relayer and out over the stream: OTLP/HTTP protobuf and
//! OTLP/gRPC requests reach the reference backend with exact counts, and a
//! full buffer answers "retry later" instead of dropping.

mod common;

use std::time::Duration;

use common::*;
use consonant_dev_backend::FaultsUpdate;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn spans(count: usize, attribute_bytes: usize) -> ExportTraceServiceRequest {
    let spans = (0..count)
        .map(|i| Span {
            trace_id: vec![1; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("agent.step.{i}{}", "x".repeat(attribute_bytes)),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn telemetry_options(
    backend: &consonant_dev_backend::DevBackendHandle,
    extra: &str,
) -> (RelayerOptions, String, String) {
    let (grpc, http) = (free_addr(), free_addr());
    let mut options = RelayerOptions::new(backend);
    options.telemetry = format!(
        "enabled = true\notlp_grpc_listen = \"{grpc}\"\notlp_http_listen = \"{http}\"\nflush_interval = \"100ms\"\n{extra}"
    );
    (options, format!("http://{grpc}"), format!("http://{http}"))
}

async fn post(http: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("POST /v1/traces")
}

#[tokio::test]
async fn otlp_over_http_and_grpc_arrives_with_exact_counts() {
    let backend = backend().await;
    let (options, grpc, http) = telemetry_options(&backend, "");
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    let response = post(&http, spans(3, 0).encode_to_vec()).await;
    assert_eq!(response.status(), 200);
    let mut client = TraceServiceClient::connect(grpc).await.unwrap();
    client
        .export(spans(5, 0))
        .await
        .expect("gRPC export accepted");
    let arrived = eventually(Duration::from_secs(10), || {
        backend.state().telemetry(CLUSTER_ID).unwrap().spans == 8
    })
    .await;
    assert!(
        arrived,
        "{:?}\n{}",
        backend.state().telemetry(CLUSTER_ID).unwrap(),
        relayer.output()
    );
    let bad = post(&http, vec![0xff, 0xff, 0xff]).await;
    assert_eq!(bad.status(), 400, "malformed protobuf is refused");
}

#[tokio::test]
async fn a_full_buffer_answers_retry_later_and_nothing_accepted_is_lost() {
    let backend = backend().await;
    let (options, _, http) = telemetry_options(
        &backend,
        "buffer_bytes = \"16KiB\"\nmax_batch_bytes = \"4KiB\"",
    );
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    backend.state().set_faults(FaultsUpdate {
        withhold_acks: Some(true),
        ..Default::default()
    });
    let mut accepted = 0u64;
    let mut refused = 0;
    for _ in 0..100 {
        let response = post(&http, spans(4, 200).encode_to_vec()).await;
        match response.status().as_u16() {
            200 => accepted += 4,
            429 => {
                assert!(
                    response.headers().get("retry-after").is_some(),
                    "429 carries Retry-After"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the 16 KiB buffer filled");
    assert!(accepted > 0);
    assert_eq!(
        relayer
            .metric("consonant_relayer_telemetry_refused_requests", "")
            .await,
        refused as f64
    );
    backend.state().set_faults(FaultsUpdate {
        withhold_acks: Some(false),
        end_streams: Some(true),
        ..Default::default()
    });
    let all = eventually(Duration::from_secs(15), || {
        backend.state().telemetry(CLUSTER_ID).unwrap().spans == accepted
    })
    .await;
    assert!(
        all,
        "accepted {accepted}, backend counted {:?}",
        backend.state().telemetry(CLUSTER_ID).unwrap()
    );
}

/// An OTLP collector stand-in: the library's own receivers over a sink
/// that keeps every trace request.
#[derive(Default)]
struct Collected(std::sync::Mutex<Vec<bytes::Bytes>>);

impl consonant_relayer::telemetry::TelemetrySink for Collected {
    fn max_piece_bytes(&self) -> usize {
        usize::MAX
    }

    fn offer(
        &self,
        _: consonant_relayer::telemetry::Signal,
        pieces: Vec<consonant_relayer::telemetry::Piece>,
    ) -> Result<(), consonant_relayer::telemetry::Refusal> {
        self.0
            .lock()
            .unwrap()
            .extend(pieces.into_iter().map(|p| p.otlp));
        Ok(())
    }
}

impl Collected {
    fn spans(&self) -> Vec<(opentelemetry_proto::tonic::resource::v1::Resource, Span)> {
        let mut out = Vec::new();
        for otlp in self.0.lock().unwrap().iter() {
            let request = ExportTraceServiceRequest::decode(otlp.clone()).unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        out.push((resource.resource.clone().unwrap_or_default(), span));
                    }
                }
            }
        }
        out
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn command_spans_continue_the_backend_trace_and_are_exported_over_grpc_and_http() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";
    for protocol in ["grpc", "http/protobuf"] {
        let backend = backend().await;
        let collected = std::sync::Arc::new(Collected::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let any = "127.0.0.1:0".parse().unwrap();
        let receiver = if protocol == "grpc" {
            consonant_relayer::telemetry::serve_grpc(any, collected.clone(), 1 << 20, shutdown)
                .await
                .unwrap()
        } else {
            consonant_relayer::telemetry::serve_http(any, collected.clone(), 1 << 20, shutdown)
                .await
                .unwrap()
        };
        let mut options = RelayerOptions::new(&backend);
        options.extra = format!(
            "\n[tracing]\notlp_endpoint = \"http://{}\"\notlp_protocol = \"{protocol}\"\n",
            receiver.local_addr
        );
        // The SDK's batch processor reads its export delay from here (default 5 s).
        let options = options.env("OTEL_BSP_SCHEDULE_DELAY", "100");
        let relayer = Relayer::start(options);
        relayer.wait_connected().await;

        let mut traced = ping("traced-ping", b"x");
        traced.trace = Some(consonant_relayer::proto::TraceContext {
            traceparent: format!("00-{TRACE_ID}-{PARENT_ID}-01"),
            tracestate: "backend=1".into(),
        });
        let result = run_command(&backend, traced).await;
        let trace = result.trace.expect("result carries a trace context");
        let parts: Vec<&str> = trace.traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{}", trace.traceparent);
        assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
        assert_ne!(
            parts[2], PARENT_ID,
            "the result names the relayer's own span"
        );
        assert_eq!(trace.tracestate, "backend=1", "tracestate is carried on");
        let own_span_id = parts[2].to_string();

        let refused = run_command(
            &backend,
            consonant_relayer::proto::Command {
                command_id: "untraced-get".into(),
                action: Some(consonant_relayer::proto::command::Action::Get(
                    consonant_relayer::proto::GetResource {
                        target: Some(consonant_relayer::proto::ObjectRef {
                            api_version: "v1".into(),
                            kind: "ConfigMap".into(),
                            namespace: "default".into(),
                            name: "x".into(),
                            ..Default::default()
                        }),
                    },
                )),
                ..Default::default()
            },
        )
        .await;
        let root = refused.trace.expect("a new trace for an untraced command");

        let exported = eventually(Duration::from_secs(20), || collected.spans().len() >= 2).await;
        assert!(exported, "{protocol}: spans exported\n{}", relayer.output());
        let spans = collected.spans();
        let (resource, ping_span) = spans
            .iter()
            .find(|(_, s)| s.name == "command ping")
            .expect("ping span");
        assert_eq!(hex(&ping_span.trace_id), TRACE_ID);
        assert_eq!(hex(&ping_span.parent_span_id), PARENT_ID);
        assert_eq!(hex(&ping_span.span_id), own_span_id);
        assert_eq!(
            attribute(ping_span, "command_id").as_deref(),
            Some("traced-ping")
        );
        assert_eq!(
            attribute(ping_span, "outcome").as_deref(),
            Some("succeeded")
        );
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.clone());
        assert!(format!("{service:?}").contains("consonant-relayer"));

        let (_, get_span) = spans
            .iter()
            .find(|(_, s)| s.name == "command get")
            .expect("get span");
        assert!(get_span.parent_span_id.is_empty(), "a root span");
        assert!(root.traceparent.contains(&hex(&get_span.span_id)));
        assert_eq!(attribute(get_span, "outcome").as_deref(), Some("rejected"));
        assert_eq!(attribute(get_span, "code").as_deref(), Some("UNAVAILABLE"));
        let status = get_span.status.clone().expect("status");
        assert_eq!(status.code, 2, "error status: {status:?}");
        assert!(status.message.contains("kubernetes.enabled is false"));
        let _ = stop.send(());
    }
}

#[tokio::test]
async fn frames_stay_within_the_limit_the_backend_announces() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = consonant_dev_backend::start(consonant_dev_backend::DevBackendOptions {
        clusters: vec![(
            CLUSTER_ID.to_string(),
            consonant_relayer::credentials::Secret::new(TOKEN),
        )],
        max_frame_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .await
    .unwrap();
    let (options, _, http) = telemetry_options(&backend, "");
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    // ~300 KiB in one request: more than four frames' worth at 64 KiB.
    let request = spans(1000, 250).encode_to_vec();
    assert!(request.len() > 256 * 1024);
    let response = post(&http, request).await;
    assert_eq!(response.status(), 200);
    let arrived = eventually(Duration::from_secs(10), || {
        backend.state().telemetry(CLUSTER_ID).unwrap().spans == 1000
    })
    .await;
    assert!(
        arrived,
        "{:?}\n{}",
        backend.state().telemetry(CLUSTER_ID).unwrap(),
        relayer.output()
    );
    let batches = backend.state().telemetry(CLUSTER_ID).unwrap().batches;
    assert!(batches >= 5, "split into {batches} frames");
    assert!(
        relayer.output().contains("frame_limit=65536"),
        "{}",
        relayer.output()
    );
}

#[tokio::test]
async fn command_spans_export_over_tls_to_a_collector_with_a_private_ca() {
    use common::register::{pki, serve_tls};
    let _ = rustls::crypto::ring::default_provider().install_default();
    for protocol in ["grpc", "http/protobuf"] {
        let backend = backend().await;
        let collected = std::sync::Arc::new(Collected::default());
        let router = if protocol == "grpc" {
            consonant_relayer::telemetry::services(collected.clone(), 1 << 20).into_axum_router()
        } else {
            consonant_relayer::telemetry::router(collected.clone(), 1 << 20)
        };
        let pki = pki("collector test CA", &["localhost"]);
        let (addr, server) = serve_tls(&pki, router).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("collector-ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let mut options = RelayerOptions::new(&backend);
        options.extra = format!(
            "\n[tracing]\notlp_endpoint = \"https://localhost:{}\"\notlp_protocol = \"{protocol}\"\nca_file = \"{}\"\n",
            addr.port(),
            ca.display()
        );
        let relayer = Relayer::start(options.env("OTEL_BSP_SCHEDULE_DELAY", "100"));
        relayer.wait_connected().await;
        run_command(&backend, ping("tls-traced", b"x")).await;
        let exported = eventually(Duration::from_secs(15), || {
            collected
                .spans()
                .iter()
                .any(|(_, s)| attribute(s, "command_id").as_deref() == Some("tls-traced"))
        })
        .await;
        assert!(
            exported,
            "{protocol} over TLS: span exported\n{}",
            relayer.output()
        );
        server.abort();
    }
}

/// A slow OTLP/HTTP client cannot hold the receiver (protocol.md, edge
/// cases): headers that never complete are cut off after 10 s, a body that
/// stalls gets 408 after 30 s — and a well-behaved client is served all the
/// while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_otlp_http_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = backend().await;
    let (options, _, http) = telemetry_options(&backend, "");
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    let addr = http.trim_start_matches("http://").to_string();

    // Reads what the server sends until it closes; None if it never does
    // within `within`.
    async fn until_closed(mut tcp: tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(within, tcp.read_to_end(&mut answer)).await;
        read.ok()
            .map(|_| String::from_utf8_lossy(&answer).into_owned())
    }

    let mut headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: relayer\r\nContent-Type: application/x-protobuf\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: relayer\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let (headers, body) = tokio::join!(
        until_closed(headers, Duration::from_secs(25)),
        until_closed(body, Duration::from_secs(50)),
    );
    // The slow ones hold nothing meanwhile: a normal export goes through.
    let response = post(&http, spans(1, 0).encode_to_vec()).await;
    assert_eq!(response.status(), 200);
    let headers = headers.expect("incomplete headers are cut off, not held");
    assert!(
        headers.is_empty() || headers.starts_with("HTTP/1.1 408"),
        "{headers}"
    );
    let body = body.expect("a stalled body ends the request, not held");
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    assert!(body.contains("stalled"), "{body}");
}

/// The OTLP/gRPC receiver serves at most 256 connections at once
/// (protocol.md, edge cases: the receivers cap concurrent connections): a
/// client that opens 256 idle connections holds every slot, so an export on
/// one more connection waits in the backlog — and is served as soon as one
/// of the idle connections closes. The held connections cost the relayer
/// no more than a few MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_connections_are_capped_and_freed() {
    let backend = backend().await;
    let (options, grpc, _) = telemetry_options(&backend, "");
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    let addr = grpc.trim_start_matches("http://").to_string();
    let before = relayer.anon_rss_kib();
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let export = tokio::spawn(async move {
        let mut client = TraceServiceClient::connect(grpc).await.unwrap();
        client.export(spans(2, 0)).await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !export.is_finished(),
        "a 257th connection was served while 256 were held"
    );
    let grown = relayer.anon_rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "256 idle connections grew the relayer by {grown} KiB"
    );
    idle.pop();
    let served = tokio::time::timeout(Duration::from_secs(20), export)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}
