//! The bundled OpenTelemetry Collector for real: the chart's rendered
//! collector config (only its listen addresses and the relayer's address
//! pointed at loopback, and `k8s_attributes` given the real control plane's
//! kubeconfig instead of a pod's ServiceAccount) runs in the real collector
//! (`scripts/build-otel-collector`: the chart's image release, built from
//! the collector's Go modules). An agent's OpenTelemetry SDK sends spans,
//! metrics and logs to the collector; the reference backend counts them
//! exactly after the relayer. When the relayer refuses (its buffer full),
//! the collector's exporter retries from its queue and nothing is lost.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::agent::{counts, relayer_with_telemetry, Agent};
use common::chart_tools::{chart_tools, repo};
use common::otel_collector::RunningCollector;
use common::*;
use consonant_dev_backend::FaultsUpdate;
use consonant_kube_testenv::ControlPlane;
use opentelemetry_otlp::Protocol;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The collector config the chart renders for the seed's quick start.
fn chart_collector_config() -> Value {
    let out = Command::new(&chart_tools().helm)
        .args(["template", "consonant-relayer"])
        .arg(repo().join("charts/consonant-relayer"))
        .args([
            "--namespace",
            "consonant-system",
            "--set",
            "cluster.name=production-us-east-1",
            "--set",
            "backend.url=https://backend.company.com",
            "--set",
            "auth.bearerToken=R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB",
        ])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let config = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| {
            doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "consonant-relayer-otel"
        })
        .expect("the collector ConfigMap");
    serde_yaml_ng::from_str(config["data"]["config.yaml"].as_str().unwrap()).unwrap()
}

/// Where a loopback collector listens.
struct Ports {
    grpc: SocketAddr,
    http: SocketAddr,
    health: SocketAddr,
}

/// The chart's config with its listen addresses on free loopback ports, the
/// exporter aimed at the relayer's OTLP/gRPC receiver, `k8s_attributes`
/// reading the API server through a kubeconfig, and the collector's own
/// metrics off (their fixed port would collide between tests). Every
/// processor, its settings, the queue and retry stay as rendered.
fn pointed_at_loopback(relayer_grpc: &str) -> (String, Ports) {
    let mut config = chart_collector_config();
    let ports = Ports {
        grpc: free_addr(),
        http: free_addr(),
        health: free_addr(),
    };
    let set = |config: &mut Value, path: &[&str], value: Value| {
        let mut node = config;
        for key in &path[..path.len() - 1] {
            node = node
                .get_mut(*key)
                .unwrap_or_else(|| panic!("the chart's collector config has no {path:?}"));
        }
        let last = path[path.len() - 1];
        assert!(node.get(last).is_some(), "no {path:?} to change");
        node[last] = value;
    };
    set(
        &mut config,
        &["extensions", "health_check", "endpoint"],
        ports.health.to_string().into(),
    );
    set(
        &mut config,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
        ports.grpc.to_string().into(),
    );
    set(
        &mut config,
        &["receivers", "otlp", "protocols", "http", "endpoint"],
        ports.http.to_string().into(),
    );
    set(
        &mut config,
        &["exporters", "otlp_grpc/relayer", "endpoint"],
        relayer_grpc.trim_start_matches("http://").into(),
    );
    set(
        &mut config,
        &["processors", "k8s_attributes", "auth_type"],
        "kubeConfig".into(),
    );
    config["service"]["telemetry"] = serde_yaml_ng::from_str("metrics: {level: none}").unwrap();
    (serde_yaml_ng::to_string(&config).unwrap(), ports)
}

async fn collector(relayer_grpc: &str) -> (RunningCollector, Ports) {
    let plane = ControlPlane::shared();
    let (config, ports) = pointed_at_loopback(relayer_grpc);
    let kubeconfig = plane.kubeconfig.display().to_string();
    let mut collector = RunningCollector::start(
        &config,
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("K8S_NODE_NAME", "node-1"),
            ("MY_POD_IP", "127.0.0.1"),
        ],
    );
    collector.wait_healthy(ports.health).await;
    (collector, ports)
}

/// An agent → the collector (the chart's pipeline) → the relayer → the
/// backend: every span, metric point and log record arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_collector_delivers_everything_through_the_relayer() {
    let backend = backend().await;
    let (relayer, relayer_grpc, _) = relayer_with_telemetry(&backend, "");
    relayer.wait_connected().await;
    let (collector, ports) = collector(&relayer_grpc).await;
    for protocol in [Protocol::Grpc, Protocol::HttpBinary] {
        let before = counts(&backend);
        let agent = Agent::new(
            protocol,
            &format!("http://{}", ports.grpc),
            &format!("http://{}", ports.http),
        );
        agent.spans(120, 20);
        agent.metrics();
        agent.logs(7);
        agent.flush().await;
        let expected = (before.0 + 120, before.1 + 5, before.2 + 7);
        let arrived = eventually(Duration::from_secs(20), || counts(&backend) == expected).await;
        assert!(
            arrived,
            "{protocol:?}: backend counted {:?}, expected {expected:?}\n--- collector ---\n{}\n--- relayer ---\n{}",
            counts(&backend),
            collector.output(),
            relayer.output()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(counts(&backend), expected, "{protocol:?}: nothing twice");
    }
    assert!(
        !collector.output().contains("deprecated"),
        "{}",
        collector.output()
    );
}

/// The relayer's buffer fills (the backend withholds acks) and it refuses
/// exports with "retry later": the collector's exporter keeps the batches
/// in its sending queue and retries; once the backend acknowledges again,
/// every span arrives, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_retries_from_its_queue_while_the_relayer_refuses() {
    const SPANS: usize = 4_000;
    let backend = backend().await;
    // Room for one of the collector's batches (at most 1,024 spans, about
    // 230 KB here), not for all of them while nothing is acknowledged.
    let (relayer, relayer_grpc, _) = relayer_with_telemetry(
        &backend,
        "buffer_bytes = \"512KiB\"\nmax_batch_bytes = \"64KiB\"",
    );
    relayer.wait_connected().await;
    let (collector, ports) = collector(&relayer_grpc).await;
    backend.state().set_faults(FaultsUpdate {
        withhold_acks: Some(true),
        ..Default::default()
    });
    let agent = Agent::new(
        Protocol::Grpc,
        &format!("http://{}", ports.grpc),
        &format!("http://{}", ports.http),
    );
    agent.spans(SPANS, 200);
    agent.flush().await;
    let refused = eventually(Duration::from_secs(30), || {
        futures::executor::block_on(
            relayer.metric("consonant_relayer_telemetry_refused_requests", ""),
        ) > 0.0
    })
    .await;
    assert!(
        refused,
        "the relayer's buffer filled and it refused exports\n--- collector ---\n{}\n--- relayer ---\n{}",
        collector.output(),
        relayer.output()
    );
    assert!(
        counts(&backend).0 < SPANS as u64,
        "not everything went through yet"
    );
    backend.state().set_faults(FaultsUpdate {
        withhold_acks: Some(false),
        end_streams: Some(true),
        ..Default::default()
    });
    let all = eventually(Duration::from_secs(90), || {
        counts(&backend).0 == SPANS as u64
    })
    .await;
    assert!(
        all,
        "backend counted {:?}\n--- collector ---\n{}\n--- relayer ---\n{}",
        counts(&backend),
        collector.output(),
        relayer.output()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counts(&backend).0, SPANS as u64, "no duplicates");
    assert!(
        collector.output().contains("retry") || collector.output().contains("Exporting failed"),
        "the collector's exporter retried:\n{}",
        collector.output()
    );
}
