//! OTLP ingest end to end: agents' exporters → relayer (OTLP/gRPC) → the
//! relay stream → a backend, in spans per second, beside a baseline in the
//! same run, plus the relayer's peak RSS under a long overload.
//!
//! - Load: 4 concurrent OTLP/gRPC exporters, each sending 100-span requests
//!   (10 attributes per span) back to back.
//! - Backend: a lean `RelayService` that counts `TelemetryBatch.item_count`
//!   and acknowledges every 8 frames — no OTLP decoding, so the figure is
//!   the relayer's, not the backend's.
//! - Baseline: a plain tonic `TraceService` that decodes each request,
//!   re-encodes it into a `TelemetryBatch` and forwards it over one relay
//!   stream to the same kind of backend — no actors, no coalescing, no
//!   buffer accounting. It runs in a process of its own (this binary,
//!   started again), as the relayer does.
//! - Overload: the backend withholds acks for `TELEMETRY_OVERLOAD_SECS`
//!   (default 60) while the exporters keep sending; the relayer must refuse
//!   with RESOURCE_EXHAUSTED and its RSS stays under `buffer_bytes` + 40 MiB.
//!
//! - Beside the real collector (issue 16 item 3): the same load through the
//!   real OpenTelemetry Collector (`scripts/build-otel-collector`, the
//!   chart's release) with the chart's `memory_limiter` and `batch`, its
//!   OTLP exporter sending to a lean `TraceService` that counts spans, in
//!   its own process; spans/s, CPU-seconds per million spans and RSS for
//!   both forwarders.
//!
//! The relayer is the release binary in its own process; the load and the
//! backends run in this process. Each throughput is measured `ROUNDS` times and
//! reported as median (min–max).
//!
//! Run: `cargo bench -p consonant-relayer --bench telemetry` (`RELAY_BENCH_SECS` sets the
//! measuring window, default 4 s). `TELEMETRY_PROFILE_SECS=N` runs only the
//! relayer under the load for N seconds and prints its pid, for a profiler.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consonant_relayer::proto::{
    backend_frame, relay_service_client::RelayServiceClient, relay_service_server, relayer_frame,
    telemetry_batch, Ack, BackendFrame, Heartbeat, Hello, RelayerFrame, TelemetryBatch,
};
use futures::Stream;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;

mod support;

use support::*;

const EXPORTERS: usize = 4;
const SPANS_PER_REQUEST: usize = 100;
const ATTRIBUTES_PER_SPAN: usize = 10;
const ROUNDS: usize = 3;
const BUFFER_BYTES: u64 = 32 * 1024 * 1024;
const ACK_EVERY: u64 = 8;

fn overload_window() -> Duration {
    let secs = std::env::var("TELEMETRY_OVERLOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

/// One agent export: 100 spans with 10 string attributes each.
fn export_request(exporter: usize) -> ExportTraceServiceRequest {
    let string = |s: String| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        })
    };
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| Span {
            trace_id: [exporter as u8 + 1; 16].to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: 1u64.to_be_bytes().to_vec(),
            name: format!("agent.tool_call.{}", i % 7),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_000_500_000 + i as u64,
            attributes: (0..ATTRIBUTES_PER_SPAN)
                .map(|k| KeyValue {
                    key: format!("agent.attribute.{k}"),
                    value: string(format!("value-{k}-{i:08}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: string(format!("kagent-{exporter}")),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// ------------------------------------------------------------- backend

type FrameStream = Pin<Box<dyn Stream<Item = Result<BackendFrame, tonic::Status>> + Send>>;

/// Counts forwarded spans; acks every `ACK_EVERY` telemetry frames unless
/// told to withhold.
#[derive(Clone, Default)]
struct LeanBackend {
    spans: Arc<AtomicU64>,
    withhold_acks: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl relay_service_server::RelayService for LeanBackend {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<RelayerFrame>>,
    ) -> Result<tonic::Response<FrameStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let backend = self.clone();
        tokio::spawn(async move {
            if !welcome(&mut inbound, &tx).await {
                return;
            }
            // Heartbeats keep the relayer from declaring a silent backend
            // while acks are withheld.
            let beat = tx.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(2));
                loop {
                    every.tick().await;
                    let heartbeat = BackendFrame {
                        body: Some(backend_frame::Body::Heartbeat(Heartbeat::default())),
                    };
                    if beat.send(Ok(heartbeat)).await.is_err() {
                        break;
                    }
                }
            });
            let mut frames = 0u64;
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(relayer_frame::Body::Telemetry(batch)) = &frame.body {
                    backend
                        .spans
                        .fetch_add(u64::from(batch.item_count), Relaxed);
                    frames += 1;
                    if frames.is_multiple_of(ACK_EVERY) && !backend.withhold_acks.load(Relaxed) {
                        let ack = BackendFrame {
                            body: Some(backend_frame::Body::Ack(Ack {
                                acked_seq: frame.seq,
                            })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

// ------------------------------------------------------------- baseline

/// Decode, re-encode as a `TelemetryBatch`, send down one relay stream.
struct Forwarder {
    frames: mpsc::Sender<RelayerFrame>,
    seq: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for Forwarder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let frame = RelayerFrame {
            seq: self.seq.fetch_add(1, Relaxed) + 1,
            body: Some(relayer_frame::Body::Telemetry(TelemetryBatch {
                signal: telemetry_batch::Signal::Traces as i32,
                otlp: request.encode_to_vec().into(),
                item_count: spans as u32,
                received_at_unix_ms: 0,
            })),
        };
        self.frames
            .send(frame)
            .await
            .map_err(|_| tonic::Status::unavailable("stream closed"))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Set in the environment of the baseline's own process: the backend to
/// forward to. The bench binary then serves the forwarder and prints its
/// address, so the baseline, like the relayer, has a process and runtime
/// of its own (like with like).
const BASELINE_ROLE: &str = "TELEMETRY_BENCH_BASELINE_BACKEND";

/// Runs the bench binary again as the baseline forwarder; returns the
/// process and its OTLP address.
fn spawn_baseline(backend: SocketAddr) -> (RelayerProcess, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(BASELINE_ROLE, backend.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the baseline forwarder");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("the baseline prints its address")
        .parse()
        .unwrap();
    (RelayerProcess(child), addr)
}

/// The baseline process: forwards to `backend` until killed.
fn baseline_process(backend: &str) {
    runtime().block_on(async {
        let addr = start_baseline(backend.parse().unwrap()).await;
        println!("listening {addr}");
        std::future::pending::<()>().await;
    });
}

/// Starts the baseline forwarder against `backend`; returns its OTLP address.
async fn start_baseline(backend: SocketAddr) -> SocketAddr {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<RelayerFrame>(1024);
    tx.send(RelayerFrame {
        seq: 0,
        body: Some(relayer_frame::Body::Hello(Hello {
            cluster_id: CLUSTER.into(),
            protocol_version: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = RelayServiceClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let forwarder = Forwarder {
        frames: tx,
        seq: AtomicU64::new(0),
    };
    let traces = TraceServiceServer::new(forwarder).max_decoding_message_size(16 * 1024 * 1024);
    serve(tonic::service::Routes::new(traces)).await.0
}

// ------------------------------------------------------------- collector

/// Counts the spans the collector exports to it.
#[derive(Clone, Default)]
struct SpanSink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector binary, built (or found cached) by the project's script.
fn collector_binary() -> std::path::PathBuf {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-otel-collector");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .expect("run build-otel-collector");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("OTELCOL=").map(std::path::PathBuf::from))
        .expect("OTELCOL=")
}

/// The collector as a forwarder: OTLP/gRPC in on `otlp`, the chart's
/// memory_limiter and batch, OTLP/gRPC out to `sink`.
fn spawn_collector(otlp: SocketAddr, sink: SocketAddr, dir: &std::path::Path) -> RelayerProcess {
    let config = format!(
        r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {otlp}
        max_recv_msg_size_mib: 16
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 400
    spike_limit_mib: 100
  batch:
    timeout: 1s
    send_batch_size: 512
    send_batch_max_size: 1024
exporters:
  otlp_grpc/sink:
    endpoint: {sink}
    # Like the relayer's stream: uncompressed (gzip would charge the
    # collector CPU the relayer does not spend).
    compression: none
    tls:
      insecure: true
    sending_queue:
      enabled: true
      queue_size: 1000
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp_grpc/sink]
"#
    );
    let path = dir.join("collector.yaml");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(collector_binary())
        .arg(format!("--config={}", path.display()))
        .env("GOMEMLIMIT", "400MiB")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the collector");
    RelayerProcess(child)
}

// ------------------------------------------------------------- load

/// Runs `EXPORTERS` exporters against `target` until `stop`; a refused
/// export is retried after 50 ms. Returns how many exports were refused.
fn start_load(target: SocketAddr, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let refused = Arc::new(AtomicU64::new(0));
    for exporter in 0..EXPORTERS {
        let (stop, refused) = (stop.clone(), refused.clone());
        tokio::spawn(async move {
            let request = export_request(exporter);
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap();
            let mut client = TraceServiceClient::new(channel);
            while !stop.load(Relaxed) {
                if client.export(request.clone()).await.is_err() {
                    refused.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    refused
}

/// Spans per second arriving at `spans`, over `ROUNDS` windows after a
/// warm-up, and the CPU-seconds process `pid` spent per million spans.
async fn measure(spans: &AtomicU64, window: Duration, pid: u32) -> (Vec<f64>, Vec<f64>) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rates = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..ROUNDS {
        let before = spans.load(Relaxed);
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let moved = (spans.load(Relaxed) - before) as f64;
        rates.push(moved / started.elapsed().as_secs_f64());
        cpu.push((cpu_seconds(pid) - cpu_before) / moved * 1e6);
    }
    (rates, cpu)
}

/// The relayer binary (own process, config in a temp dir kept alive by the
/// caller) connected to `backend`, its OTLP/gRPC receiver listening.
async fn relayer_facing(backend: &LeanBackend) -> (RelayerProcess, SocketAddr, tempfile::TempDir) {
    let addr = serve_relay(backend.clone()).await.0;
    let dir = tempfile::tempdir().unwrap();
    let otlp = free_addr();
    let url = format!("http://{addr}");
    let relayer = spawn_relayer_with(&url, &url, dir.path(), &relayer_sections(otlp));
    wait_listening(otlp).await;
    (relayer, otlp, dir)
}

fn relayer_sections(otlp: SocketAddr) -> String {
    format!(
        "[telemetry]\nenabled = true\notlp_grpc_listen = \"{otlp}\"\notlp_http_listen = \"{}\"\nbuffer_bytes = {BUFFER_BYTES}\n[kubernetes]\nenabled = false\n",
        free_addr()
    )
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The wire walk alone (`telemetry::wire::count_items` over one load
/// request, in this process), in ns per span: the part of the relayer's CPU
/// per span that validating and counting costs.
fn wire_walk_ns_per_span() -> Vec<f64> {
    use consonant_relayer::telemetry::{sink::Signal, wire::count_items};
    let request = export_request(0).encode_to_vec();
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut spans = 0u64;
        while started.elapsed() < Duration::from_millis(500) {
            for _ in 0..100 {
                spans += count_items(Signal::Traces, std::hint::black_box(&request)).unwrap();
            }
        }
        rounds.push(started.elapsed().as_nanos() as f64 / spans as f64);
    }
    rounds
}

/// Profiling mode (`TELEMETRY_PROFILE_SECS=N`): only the relayer under the
/// same load for N seconds (after 3 s idle, whose RSS is printed), its pid
/// printed first so a profiler
/// (`perf record -p`, or `perf stat`) can attach; then its CPU per span and
/// RSS (now and the peak, sampled every 100 ms). With
/// `TELEMETRY_PROFILE_WITHHOLD=1` the backend withholds every ack: the
/// overload's peak RSS.
async fn profile_relayer(duration: Duration) {
    let (walk, _, _) = spread(&mut wire_walk_ns_per_span());
    let backend = LeanBackend::default();
    // TELEMETRY_PROFILE_WITHHOLD=1: the overload instead (acks withheld).
    if std::env::var_os("TELEMETRY_PROFILE_WITHHOLD").is_some() {
        backend.withhold_acks.store(true, Relaxed);
    }
    let (relayer, otlp, _dir) = relayer_facing(&backend).await;
    // Idle first: connected, telemetry on, no load yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(relayer.0.id()).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    start_load(otlp, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "relayer pid {} (wire walk alone: {walk:.1} ns per span; idle RSS {:.1} MiB)",
        relayer.0.id(),
        idle_rss as f64 / 1024.0
    );
    let before = backend.spans.load(Relaxed);
    let cpu_before = cpu_seconds(relayer.0.id());
    let started = Instant::now();
    let mut peak_rss = 0u64;
    while started.elapsed() < duration {
        peak_rss = peak_rss.max(rss_kib(relayer.0.id()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = (backend.spans.load(Relaxed) - before) as f64;
    let cpu = cpu_seconds(relayer.0.id()) - cpu_before;
    println!(
        "relayer: {:.0} spans/s, {:.3} µs CPU per span, RSS {:.1} MiB, peak {:.1} MiB",
        moved / started.elapsed().as_secs_f64(),
        cpu / moved * 1e6,
        rss_kib(relayer.0.id()).unwrap_or(0) as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    stop.store(true, Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn main() {
    if let Ok(backend) = std::env::var(BASELINE_ROLE) {
        return baseline_process(&backend);
    }
    if let Some(secs) = std::env::var("TELEMETRY_PROFILE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        return runtime().block_on(profile_relayer(Duration::from_secs_f64(secs)));
    }
    runtime().block_on(async {
        let window = window();
        let request_bytes = export_request(0).encoded_len();
        println!(
            "telemetry bench: {EXPORTERS} exporters, {SPANS_PER_REQUEST} spans x {ATTRIBUTES_PER_SPAN} attributes per request ({request_bytes} B), window {window:?}, {ROUNDS} rounds\n"
        );

        let mut walk = wire_walk_ns_per_span();

        // Baseline.
        let baseline_backend = LeanBackend::default();
        let addr = serve_relay(baseline_backend.clone()).await.0;
        let (forwarder_process, forwarder) = spawn_baseline(addr);
        let stop = Arc::new(AtomicBool::new(false));
        start_load(forwarder, stop.clone());
        let (mut baseline, mut baseline_cpu) =
            measure(&baseline_backend.spans, window, forwarder_process.0.id()).await;
        stop.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(forwarder_process);

        // The relayer.
        let relay_backend = LeanBackend::default();
        let (relayer, otlp, _dir) = relayer_facing(&relay_backend).await;
        // Idle, connected, telemetry on (the chart's default), before any load.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_rss = rss_kib(relayer.0.id());
        let stop = Arc::new(AtomicBool::new(false));
        start_load(otlp, stop.clone());
        let (mut relayed, mut relayed_cpu) =
            measure(&relay_backend.spans, window, relayer.0.id()).await;
        let loaded_rss = rss_kib(relayer.0.id());
        stop.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(relayer);

        // The real collector as the forwarder, same load.
        let sink = SpanSink::default();
        let sink_addr = serve(tonic::service::Routes::new(
            TraceServiceServer::new(sink.clone()).max_decoding_message_size(64 * 1024 * 1024),
        ))
        .await
        .0;
        let dir = tempfile::tempdir().unwrap();
        let otlp = free_addr();
        let collector = spawn_collector(otlp, sink_addr, dir.path());
        wait_listening(otlp).await;
        let stop = Arc::new(AtomicBool::new(false));
        start_load(otlp, stop.clone());
        let (mut collected, mut collected_cpu) =
            measure(&sink.spans, window, collector.0.id()).await;
        let collector_rss = rss_kib(collector.0.id());
        stop.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(collector);

        // Overload: acks withheld for the whole window.
        let overload_backend = LeanBackend::default();
        overload_backend.withhold_acks.store(true, Relaxed);
        let (relayer, otlp, _dir) = relayer_facing(&overload_backend).await;
        let stop = Arc::new(AtomicBool::new(false));
        let refused = start_load(otlp, stop.clone());
        let overload = overload_window();
        let started = Instant::now();
        let mut peak_rss = 0u64;
        while started.elapsed() < overload {
            peak_rss = peak_rss.max(rss_kib(relayer.0.id()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Relaxed);
        let accepted = overload_backend.spans.load(Relaxed);
        drop(relayer);

        let row = |name: &str, values: &mut Vec<f64>| {
            let (median, min, max) = spread(values);
            println!("{name:<40} {median:>12.0} spans/s (min {min:.0}, max {max:.0})");
            median
        };
        let b = row("baseline: tonic TraceService → stream", &mut baseline);
        let r = row("relayer: OTLP/gRPC → relay stream", &mut relayed);
        let cpu_row = |name: &str, values: &mut Vec<f64>| {
            let (median, min, max) = spread(values);
            println!("{name:<40} {median:>12.2} CPU-s per million spans (min {min:.2}, max {max:.2})");
            median
        };
        let bc = cpu_row("baseline process CPU", &mut baseline_cpu);
        let rc = cpu_row("relayer process CPU", &mut relayed_cpu);
        let c = row("collector: OTLP/gRPC → OTLP/gRPC", &mut collected);
        let cc = cpu_row("collector process CPU", &mut collected_cpu);
        println!();
        println!("ratio relayer/baseline                   {:>12.2}   (target ≥ 0.70)", r / b);
        println!("ratio relayer/collector throughput       {:>12.2}", r / c);
        println!("CPU per span, relayer/collector          {:>12.2}   (goal ≤ 0.33)", rc / cc);
        if let (Some(relayer), Some(collector)) = (loaded_rss, collector_rss) {
            println!(
                "RSS under full load, relayer/collector   {:>7.1} / {:.1} MiB",
                relayer as f64 / 1024.0,
                collector as f64 / 1024.0
            );
        }
        println!("CPU per span, relayer/baseline           {:>12.2}", rc / bc);
        let (w, w_min, w_max) = spread(&mut walk);
        println!("wire walk alone (count_items)            {w:>12.1} ns per span (min {w_min:.1}, max {w_max:.1})");
        if let Some(rss) = idle_rss {
            println!("relayer idle RSS (telemetry on)          {:>12.1} MiB (goal ≤ 12 MiB)", rss as f64 / 1024.0);
        }
        if let Some(rss) = loaded_rss {
            println!("relayer RSS under full load              {:>12.1} MiB", rss as f64 / 1024.0);
        }
        let limit = (BUFFER_BYTES as f64) / 1048576.0 + 40.0;
        println!(
            "overload {:?}: peak RSS                {:>12.1} MiB (target < buffer_bytes + 40 MiB = {limit:.0} MiB)",
            overload,
            peak_rss as f64 / 1024.0
        );
        println!(
            "overload: exports refused (retry later)  {:>12}   spans forwarded before the buffer filled: {accepted}",
            refused.load(Relaxed)
        );
    });
}
