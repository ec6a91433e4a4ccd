//! OTLP into the relayer and out over the stream: OTLP/HTTP protobuf and
//! OTLP/gRPC requests reach the reference backend with exact counts, and a
//! full buffer answers "retry later" instead of dropping.

mod common;

use std::time::Duration;

use common::*;
use consonant_relayer::devbackend::FaultsUpdate;
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
    backend: &consonant_relayer::devbackend::DevBackendHandle,
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
