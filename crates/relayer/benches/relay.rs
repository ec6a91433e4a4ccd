//! Ping through the whole relayer (reference backend → relayer → backend)
//! over loopback, beside a raw tonic bidirectional echo with the same
//! message sizes as the baseline, in the same run:
//!
//! - throughput with 1,000 commands in flight (commands/s);
//! - round-trip latency with 1 in flight (p50 / p99);
//! - the relayer's idle RSS once connected.
//!
//! The relayer is the release binary in its own process (its own runtime,
//! as in production); the backend and the load generator run in this
//! process. The baseline's client and server also run in this process.
//! Each figure is measured `ROUNDS` times and reported as median with the
//! min–max spread, so machine noise is visible.
//!
//! Run: `cargo bench -p consonant-relayer --bench relay` (set `RELAY_BENCH_SECS` to change the
//! measuring window, default 4 s).

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_relayer::credentials::Secret;
use consonant_relayer::proto::{
    backend_frame, command, relay_service_client::RelayServiceClient, relay_service_server,
    relayer_frame, BackendFrame, Command as RelayCommand, CommandResult, Ping, RelayerFrame,
};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::Stream;
use tokio::sync::mpsc;

mod support;

use support::*;

const IN_FLIGHT: usize = 1_000;
const PAYLOAD: usize = 64;
const ROUNDS: usize = 3;
const LATENCY_SAMPLES: usize = 3_000;

fn ping_command(i: u64) -> RelayCommand {
    RelayCommand {
        command_id: format!("{:032x}", i),
        action: Some(command::Action::Ping(Ping {
            payload: vec![7u8; PAYLOAD].into(),
        })),
        ..Default::default()
    }
}

fn result_frame(seq: u64, id: String) -> RelayerFrame {
    RelayerFrame {
        seq,
        body: Some(relayer_frame::Body::Result(CommandResult {
            command_id: id,
            status: 1,
            output_json: format!("{{\"payload_len\":{PAYLOAD}}}").into_bytes().into(),
            started_at_unix_ms: 1_764_000_000_000,
            finished_at_unix_ms: 1_764_000_000_001,
            ..Default::default()
        })),
    }
}

// ---------------------------------------------------------------- baseline

/// Echo: answers every result frame with a ping-sized command frame.
struct Echo;

type BackendStream = Pin<Box<dyn Stream<Item = Result<BackendFrame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl relay_service_server::RelayService for Echo {
    type ConnectStream = BackendStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<RelayerFrame>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut i = 0;
            while let Ok(Some(_frame)) = inbound.message().await {
                i += 1;
                let frame = BackendFrame {
                    body: Some(backend_frame::Body::Command(ping_command(i))),
                };
                if tx.send(Ok(frame)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn baseline_server() -> SocketAddr {
    serve_relay(Echo).await.0
}

/// Sends `in_flight` frames ahead of the answers; returns (count, elapsed, RTT samples).
async fn baseline_run(
    addr: SocketAddr,
    in_flight: usize,
    duration: Duration,
    samples: usize,
) -> (u64, Duration, Vec<Duration>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<RelayerFrame>(in_flight * 2);
    let mut client = RelayServiceClient::new(channel);
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seq = 0u64;
    for _ in 0..in_flight {
        seq += 1;
        tx.send(result_frame(seq, format!("{seq:032x}")))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut done = 0u64;
    let mut rtts = Vec::new();
    let mut sent_at = Instant::now();
    while let Ok(Some(_)) = inbound.message().await {
        done += 1;
        if in_flight == 1 {
            rtts.push(sent_at.elapsed());
            if rtts.len() >= samples {
                break;
            }
        } else if started.elapsed() >= duration {
            break;
        }
        seq += 1;
        sent_at = Instant::now();
        if tx
            .send(result_frame(seq, format!("{seq:032x}")))
            .await
            .is_err()
        {
            break;
        }
    }
    (done, started.elapsed(), rtts)
}

// ---------------------------------------------------------------- relay

async fn relay_throughput(backend: &DevBackendHandle, duration: Duration, next: &mut u64) -> f64 {
    relay_throughput_for(backend, CLUSTER, duration, next).await
}

async fn relay_throughput_for(
    backend: &DevBackendHandle,
    cluster: &str,
    duration: Duration,
    next: &mut u64,
) -> f64 {
    let state = backend.state().clone();
    let mut pending = FuturesUnordered::new();
    for _ in 0..IN_FLIGHT {
        *next += 1;
        pending.push(state.submit_command(cluster, ping_command(*next)).unwrap());
    }
    let started = Instant::now();
    let mut done = 0u64;
    while let Some(result) = pending.next().await {
        result.expect("result");
        done += 1;
        if started.elapsed() < duration {
            *next += 1;
            pending.push(state.submit_command(cluster, ping_command(*next)).unwrap());
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn relay_latency(
    backend: &DevBackendHandle,
    samples: usize,
    next: &mut u64,
) -> Vec<Duration> {
    let state = backend.state().clone();
    let mut rtts = Vec::with_capacity(samples);
    for _ in 0..samples {
        *next += 1;
        let started = Instant::now();
        state
            .submit_command(CLUSTER, ping_command(*next))
            .unwrap()
            .await
            .unwrap();
        rtts.push(started.elapsed());
    }
    rtts
}

// ------------------------------------------------------------ lean backend

/// A backend that does only what the protocol needs for this measurement:
/// `Welcome`, then keeps `IN_FLIGHT` pings outstanding, one new ping per
/// result, with a cumulative `Ack` every 256 results. It measures the
/// relayer's own capacity, free of the reference backend's bookkeeping.
struct LeanBackend {
    results: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl relay_service_server::RelayService for LeanBackend {
    type ConnectStream = BackendStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<RelayerFrame>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        use consonant_relayer::proto::Ack;
        use std::sync::atomic::Ordering::Relaxed;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8192);
        let results = self.results.clone();
        tokio::spawn(async move {
            if !welcome(&mut inbound, &tx).await {
                return;
            }
            let mut next = 0u64;
            for _ in 0..IN_FLIGHT {
                next += 1;
                let frame = BackendFrame {
                    body: Some(backend_frame::Body::Command(ping_command(next))),
                };
                let _ = tx.send(Ok(frame)).await;
            }
            let mut since_ack = 0;
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(relayer_frame::Body::Result(_)) = frame.body {
                    results.fetch_add(1, Relaxed);
                    since_ack += 1;
                    next += 1;
                    let command = BackendFrame {
                        body: Some(backend_frame::Body::Command(ping_command(next))),
                    };
                    if tx.send(Ok(command)).await.is_err() {
                        break;
                    }
                    if since_ack >= 256 {
                        since_ack = 0;
                        let ack = BackendFrame {
                            body: Some(backend_frame::Body::Ack(Ack {
                                acked_seq: frame.seq,
                            })),
                        };
                        let _ = tx.send(Ok(ack)).await;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Relayer throughput against the lean backend, `ROUNDS` windows.
async fn lean_throughput(duration: Duration) -> Vec<f64> {
    use std::sync::atomic::Ordering::Relaxed;
    let results = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (addr, server) = serve_relay(LeanBackend {
        results: results.clone(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relayer = spawn_relayer(
        &format!("http://{addr}"),
        &format!("http://{addr}"),
        dir.path(),
        "enabled = false",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while results.load(Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let before = results.load(Relaxed);
        let started = Instant::now();
        tokio::time::sleep(duration).await;
        rates.push((results.load(Relaxed) - before) as f64 / started.elapsed().as_secs_f64());
    }
    drop(relayer);
    server.abort();
    rates
}

// ------------------------------------------------- minimal relayer (ceiling)

/// The least a relayer can do against the same backend: answer every ping
/// with `CommandAccepted` + `CommandResult` straight from the read loop — no
/// actors, no outbox, no dedup, no replay. Its throughput is the ceiling
/// this backend and load generator allow on this machine.
async fn minimal_relayer(backend: &DevBackendHandle) -> tokio::task::JoinHandle<()> {
    use consonant_relayer::proto::{CommandAccepted, Hello};
    let channel = tonic::transport::Endpoint::from_shared(backend.grpc_url())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel::<RelayerFrame>(8192);
    tx.send(RelayerFrame {
        seq: 0,
        body: Some(relayer_frame::Body::Hello(Hello {
            cluster_id: MINIMAL_CLUSTER.into(),
            incarnation: "minimal".into(),
            protocol_version: 1,
            heartbeat_interval_ms: 10_000,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-consonant-cluster-id", MINIMAL_CLUSTER.parse().unwrap());
    let mut inbound = RelayServiceClient::new(channel)
        .connect(request)
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut seq = 0;
        while let Ok(Some(frame)) = inbound.message().await {
            if let Some(backend_frame::Body::Command(command)) = frame.body {
                let accepted = RelayerFrame {
                    seq: 0,
                    body: Some(relayer_frame::Body::Accepted(CommandAccepted {
                        command_id: command.command_id.clone(),
                    })),
                };
                seq += 1;
                if tx.send(accepted).await.is_err()
                    || tx
                        .send(result_frame(seq, command.command_id))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
    })
}

const MINIMAL_CLUSTER: &str = "cls_minimal";

// ---------------------------------------------------------------- report

fn main() {
    runtime().block_on(async {
        let duration = window();
        println!("relay bench: {IN_FLIGHT} in flight, payload {PAYLOAD} B, window {duration:?}, {ROUNDS} rounds\n");

        let echo = baseline_server().await;
        let mut echo_tput = Vec::new();
        let mut echo_p50 = Vec::new();
        let mut echo_p99 = Vec::new();
        for _ in 0..ROUNDS {
            let (done, elapsed, _) = baseline_run(echo, IN_FLIGHT, duration, 0).await;
            echo_tput.push(done as f64 / elapsed.as_secs_f64());
            let (_, _, mut rtts) = baseline_run(echo, 1, duration, LATENCY_SAMPLES).await;
            echo_p50.push(percentile(&mut rtts, 0.50).as_secs_f64() * 1e6);
            echo_p99.push(percentile(&mut rtts, 0.99).as_secs_f64() * 1e6);
        }

        let backend = devbackend::start(DevBackendOptions {
            clusters: vec![
                (CLUSTER.to_string(), Secret::new(TOKEN)),
                (MINIMAL_CLUSTER.to_string(), Secret::new(TOKEN)),
            ],
            ..Default::default()
        })
        .await
        .unwrap();

        let minimal = minimal_relayer(&backend).await;
        let mut minimal_tput = Vec::new();
        let mut next = 0u64;
        for _ in 0..ROUNDS {
            minimal_tput.push(relay_throughput_for(&backend, MINIMAL_CLUSTER, duration, &mut next).await);
        }
        minimal.abort();
        let dir = tempfile::tempdir().unwrap();
        let relayer = start_relayer(&backend, dir.path(), "enabled = false").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_rss = rss_kib(relayer.0.id());

        let _ = relay_latency(&backend, 500, &mut next).await; // warm-up
        let mut relay_tput = Vec::new();
        let mut relay_p50 = Vec::new();
        let mut relay_p99 = Vec::new();
        for _ in 0..ROUNDS {
            relay_tput.push(relay_throughput(&backend, duration, &mut next).await);
            let mut rtts = relay_latency(&backend, LATENCY_SAMPLES, &mut next).await;
            relay_p50.push(percentile(&mut rtts, 0.50).as_secs_f64() * 1e6);
            relay_p99.push(percentile(&mut rtts, 0.99).as_secs_f64() * 1e6);
        }
        let peak_rss = rss_kib(relayer.0.id());

        drop(relayer);
        let mut lean_tput = lean_throughput(duration).await;

        let row = |name: &str, values: &mut Vec<f64>, unit: &str| {
            let (median, min, max) = spread(values);
            println!("{name:<34} {median:>12.1} {unit:<8} (min {min:.1}, max {max:.1})");
            median
        };
        let e_t = row("raw tonic echo throughput", &mut echo_tput, "msgs/s");
        let e_50 = row("raw tonic echo p50 RTT", &mut echo_p50, "µs");
        let e_99 = row("raw tonic echo p99 RTT", &mut echo_p99, "µs");
        let m_t = row("minimal relayer throughput", &mut minimal_tput, "cmds/s");
        let r_t = row("relay ping throughput", &mut relay_tput, "cmds/s");
        let l_t = row("relay ping throughput, lean backend", &mut lean_tput, "cmds/s");
        let r_50 = row("relay ping p50 RTT", &mut relay_p50, "µs");
        let r_99 = row("relay ping p99 RTT", &mut relay_p99, "µs");
        println!();
        println!("throughput ratio relay/echo        {:>12.2}   (target ≥ 0.50)", r_t / e_t);
        println!("throughput ratio relay(lean)/echo  {:>12.2}   (target ≥ 0.50)", l_t / e_t);
        println!("throughput ratio relay/minimal     {:>12.2}   (the actors' cost against this backend)", r_t / m_t);
        println!("p50 latency above echo             {:>12.1} µs", r_50 - e_50);
        println!("p99 latency above echo             {:>12.1} µs (target ≤ 500 µs)", r_99 - e_99);
        if let Some(rss) = idle_rss {
            println!("relayer idle RSS                   {:>12.1} MiB (target < 20 MiB)", rss as f64 / 1024.0);
        }
        if let Some(rss) = peak_rss {
            println!("relayer RSS after the load         {:>12.1} MiB", rss as f64 / 1024.0);
        }
        backend.shutdown().await;
    });
}
