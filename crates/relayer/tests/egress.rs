//! Egress the way enterprises run it (config.md "Egress: proxy and endpoint
//! failover"), against real peers: two reference backends for failover,
//! and (with the real tinyproxy, `tests/common/proxy.rs`) the proxy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `[backend] grpc_endpoints` over `backends`, with a quick breaker (2
/// failures) and a short backoff, so a dead endpoint is left fast.
fn failover_options(backends: &[&consonant_dev_backend::DevBackendHandle]) -> RelayerOptions {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.grpc_url()))
        .collect();
    let mut options = RelayerOptions::new(backends[0]).connection(
        "backoff_base = \"50ms\"\nbackoff_max = \"200ms\"\nbreaker_failure_threshold = 2\nbreaker_open_duration = \"30s\"\nconnect_timeout = \"1s\"",
    );
    options.grpc_url = String::new();
    options.backend_extra = format!("grpc_endpoints = [{}]", endpoints.join(", "));
    options
}

fn endpoint(health: &Value) -> String {
    health["grpc"]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The first backend dies with results unacknowledged: the relayer moves to
/// the second well within one breaker period (30 s), replays there what the
/// first never acked, and counts the failover. When the first comes back
/// the relayer stays where it is (sticky); when the second dies it wraps
/// around to the first.
#[tokio::test]
async fn failover_to_the_next_endpoint_replays_and_sticks() {
    let first = backend().await;
    let second = backend().await;
    let (first_grpc, first_http) = (first.grpc_addr, first.http_addr);
    let first_url = first.grpc_url();
    let second_url = second.grpc_url();
    let relayer = Relayer::start(failover_options(&[&first, &second]));
    let health = relayer.wait_connected().await;
    assert_eq!(endpoint(&health), first_url);
    assert!(first.state().last_hello(CLUSTER_ID).is_some());
    assert!(
        second.state().last_hello(CLUSTER_ID).is_none(),
        "no session to the second yet"
    );

    pings_with_acks_withheld(&first, "f", 10).await;
    let died = Instant::now();
    first.shutdown().await;
    relayer
        .wait_health(Duration::from_secs(25), |h| {
            h["grpc"]["connected"] == true && endpoint(h) == second_url
        })
        .await;
    let moved_after = died.elapsed();
    assert!(moved_after < Duration::from_secs(30), "{moved_after:?}");
    // Everything the first never acknowledged arrives at the second.
    let replayed = eventually(Duration::from_secs(10), || {
        let frames = second.state().frames(CLUSTER_ID).unwrap();
        (0..10).all(|i| {
            frames
                .frames
                .iter()
                .any(|f| f.command_id.as_deref() == Some(format!("f-{i}").as_str()))
        })
    })
    .await;
    assert!(replayed, "{:?}", second.state().frames(CLUSTER_ID));
    assert_eq!(
        relayer
            .metric("consonant_relayer_endpoint_failovers_total", "")
            .await,
        1.0
    );
    let actors = relayer.json("/debug/actors").await.unwrap();
    let connection = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ConnectionActor")
        .unwrap();
    assert_eq!(connection["details"]["endpoint"], second_url.as_str());
    assert_eq!(connection["details"]["endpoint_index"], 1);
    assert_eq!(
        connection["details"]["endpoints"],
        serde_json::json!([first_url, second_url])
    );

    // The first comes back: the relayer stays on the second.
    let revived = backend_on(Some(first_grpc), Some(first_http)).await;
    let result = run_command(&second, ping("on-second", b"")).await;
    assert_eq!(result.command_id, "on-second");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        endpoint(&relayer.json("/health").await.unwrap()),
        second_url
    );
    assert!(
        revived.state().last_hello(CLUSTER_ID).is_none(),
        "sticky: no session to the first"
    );

    // The second dies: wrap around to the first.
    second.shutdown().await;
    relayer
        .wait_health(Duration::from_secs(25), |h| {
            h["grpc"]["connected"] == true && endpoint(h) == first_url
        })
        .await;
    let result = run_command(&revived, ping("back-on-first", b"")).await;
    assert_eq!(result.command_id, "back-on-first");
    assert_eq!(
        relayer
            .metric("consonant_relayer_endpoint_failovers_total", "")
            .await,
        2.0
    );
}
