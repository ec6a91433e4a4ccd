//! The OpenTelemetry SDK's own OTLP exporters — what an AI agent uses —
//! against the relayer's receivers: over gRPC, HTTP/protobuf and HTTP/JSON,
//! spans, metric data points and log records reach the reference backend
//! with exact counts; and when the relayer's buffer is full the exporters'
//! own retries (RESOURCE_EXHAUSTED + RetryInfo, 429 + Retry-After) deliver
//! everything once the backend acknowledges again, with no duplicates.

mod common;

use std::time::Duration;

use common::agent::{counts, relayer_with_telemetry, Agent};
use common::*;
use consonant_dev_backend::FaultsUpdate;
use opentelemetry_otlp::Protocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_deliver_spans_metrics_and_logs_with_exact_counts() {
    for protocol in [Protocol::Grpc, Protocol::HttpBinary, Protocol::HttpJson] {
        let backend = backend().await;
        let (relayer, grpc, http) = relayer_with_telemetry(&backend, "");
        relayer.wait_connected().await;
        let agent = Agent::new(protocol, &grpc, &http);
        agent.spans(120, 20);
        agent.metrics();
        agent.logs(7);
        agent.flush().await;
        let arrived = eventually(Duration::from_secs(15), || counts(&backend) == (120, 5, 7)).await;
        assert!(
            arrived,
            "{protocol:?}: backend counted {:?}\n{}",
            counts(&backend),
            relayer.output()
        );
        // Nothing more trickles in later (no duplicates from replays).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts(&backend), (120, 5, 7), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_retry_a_full_buffer_and_every_span_arrives_once() {
    for protocol in [Protocol::Grpc, Protocol::HttpBinary] {
        let backend = backend().await;
        let (relayer, grpc, http) = relayer_with_telemetry(
            &backend,
            "buffer_bytes = \"32KiB\"\nmax_batch_bytes = \"8KiB\"",
        );
        relayer.wait_connected().await;
        backend.state().set_faults(FaultsUpdate {
            withhold_acks: Some(true),
            ..Default::default()
        });
        let agent = Agent::new(protocol, &grpc, &http);
        agent.spans(400, 200);
        let flushed = tokio::spawn(async move {
            agent.flush().await;
            agent
        });
        let refused = eventually(Duration::from_secs(20), || {
            futures::executor::block_on(
                relayer.metric("consonant_relayer_telemetry_refused_requests", ""),
            ) > 0.0
        })
        .await;
        assert!(
            refused,
            "{protocol:?}: the buffer filled and exports were refused\n{}",
            relayer.output()
        );
        backend.state().set_faults(FaultsUpdate {
            withhold_acks: Some(false),
            end_streams: Some(true),
            ..Default::default()
        });
        let _agent = flushed.await.unwrap();
        let all = eventually(Duration::from_secs(20), || counts(&backend).0 == 400).await;
        assert!(
            all,
            "{protocol:?}: backend counted {:?}\n{}",
            counts(&backend),
            relayer.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts(&backend).0, 400, "{protocol:?}: no duplicates");
    }
}
