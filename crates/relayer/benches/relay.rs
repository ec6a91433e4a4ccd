//! Ping through the whole relayer over loopback, beside a raw tonic echo
//! facing the same load generator, in the same run.
//!
//! The goal figures (issue 16 item 4) come from the **lean generator**: a
//! backend in this process that keeps `IN_FLIGHT` pings outstanding (one new
//! ping per result, a cumulative `Ack` every 256 results) or, for latency,
//! exactly one. Two clients face it in turn, each in a process of its own:
//!
//! - the **raw tonic echo**: this bench binary started again (`ECHO_ROLE`),
//!   a generated tonic client that sends `Hello` and answers every `Command`
//!   frame with a result-sized `CommandResult` frame straight from its read
//!   loop — nothing else;
//! - the **relayer**: the release binary, default configuration (telemetry
//!   and Kubernetes off).
//!
//! Each round spawns each client afresh: throughput (commands or messages
//! per second over the window), the client's CPU per command (user + system
//! from `/proc/<pid>/stat` over the window), and p50/p99 round trips at one
//! in flight, measured by the generator from sending a ping to reading its
//! result. `ROUNDS` rounds, median with the min–max spread.
//!
//! Below them, the older rows through the reference backend (`dev-backend`):
//! a minimal relayer (no actors) against it, the relayer against it, and
//! the relayer's idle RSS. `RELAY_BENCH_REFERENCE=0` skips them.
//!
//! `RELAY_BENCH_PROFILE_COMMANDS=N` instead runs one client (the relayer,
//! or the echo with `RELAY_BENCH_PROFILE_CLIENT=echo`) for exactly `N`
//! commands against the lean generator and stops it with SIGTERM; with
//! `RELAY_BENCH_WRAP="valgrind --tool=callgrind ..."` that gives
//! instruction counts (two runs with different `N`: the difference over the
//! difference in `N` is instructions per command, start-up cancelled).
//! `RELAYER_BENCH_BIN=<path>` runs another build of the relayer instead
//! of this one (before/after comparisons on the same machine).
//!
//! Run: `cargo bench -p consonant-relayer --bench relay` (set `RELAY_BENCH_SECS` to change the
//! measuring window, default 4 s).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
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
/// What the relayer answers a ping of `PAYLOAD` bytes with.
const PING_OUTPUT: &[u8] = b"{\"payload_len\":64}";

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
            output_json: bytes::Bytes::from_static(PING_OUTPUT),
            started_at_unix_ms: 1_764_000_000_000,
            finished_at_unix_ms: 1_764_000_000_001,
            ..Default::default()
        })),
    }
}

type BackendStream = Pin<Box<dyn Stream<Item = Result<BackendFrame, tonic::Status>> + Send>>;

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

// ---------------------------------------------------------- lean generator

/// What one lean generator does and has seen. One client connects at a time.
struct Load {
    /// Pings kept outstanding: `IN_FLIGHT` for throughput, 1 for latency.
    in_flight: usize,
    /// Pings issued at most per connection (profile runs); `u64::MAX` otherwise.
    limit: u64,
    results: AtomicU64,
    /// Round trips, recorded when one ping is in flight.
    rtts: Mutex<Vec<Duration>>,
}

impl Load {
    fn new(in_flight: usize, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            in_flight,
            limit,
            results: AtomicU64::new(0),
            rtts: Mutex::new(Vec::new()),
        })
    }
}

/// A backend that does only what the protocol needs for this measurement:
/// `Welcome`, then keeps `in_flight` pings outstanding, one new ping per
/// result, with a cumulative `Ack` every 256 results. It measures its
/// client's capacity, free of the reference backend's bookkeeping.
struct LeanBackend {
    load: Arc<Load>,
}

#[tonic::async_trait]
impl relay_service_server::RelayService for LeanBackend {
    type ConnectStream = BackendStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<RelayerFrame>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        use consonant_relayer::proto::Ack;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8192);
        let load = self.load.clone();
        tokio::spawn(async move {
            if !welcome(&mut inbound, &tx).await {
                return;
            }
            let ping = |n: u64| {
                Ok(BackendFrame {
                    body: Some(backend_frame::Body::Command(ping_command(n))),
                })
            };
            let mut next = 0u64;
            while next < (load.in_flight as u64).min(load.limit) {
                next += 1;
                let _ = tx.send(ping(next)).await;
            }
            let mut sent_at = Instant::now();
            let mut since_ack = 0;
            while let Ok(Some(frame)) = inbound.message().await {
                let Some(relayer_frame::Body::Result(_)) = frame.body else {
                    continue;
                };
                load.results.fetch_add(1, Relaxed);
                if load.in_flight == 1 {
                    load.rtts.lock().unwrap().push(sent_at.elapsed());
                }
                since_ack += 1;
                if next < load.limit {
                    next += 1;
                    sent_at = Instant::now();
                    if tx.send(ping(next)).await.is_err() {
                        break;
                    }
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
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn lean_backend(load: &Arc<Load>) -> SocketAddr {
    serve_relay(LeanBackend { load: load.clone() }).await.0
}

// -------------------------------------------------------------- raw echo

/// Set in the environment of the echo's own process: the lean generator to
/// dial. The echo, like the relayer, then has a process and runtime of its
/// own (like with like).
const ECHO_ROLE: &str = "RELAY_BENCH_ECHO_BACKEND";

/// The echo process: `Hello`, then one `CommandResult` per `Command`, from
/// the read loop, until the stream ends or the process is stopped.
fn echo_process(backend: &str) {
    runtime().block_on(async {
        let (tx, mut inbound) = open_stream(format!("http://{backend}"), CLUSTER, "echo").await;
        let mut seq = 0;
        while let Ok(Some(frame)) = inbound.message().await {
            if let Some(backend_frame::Body::Command(command)) = frame.body {
                seq += 1;
                if tx
                    .send(result_frame(seq, command.command_id))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });
}

/// A client of the lean generator, in its own process.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    Echo,
    Relayer,
}

/// A started client and what it needs kept alive.
struct Running {
    process: RelayerProcess,
    _dir: Option<tempfile::TempDir>,
}

impl Client {
    fn start(self, backend: SocketAddr) -> Running {
        match self {
            Client::Echo => {
                let child = wrapped(std::env::current_exe().unwrap())
                    .env(ECHO_ROLE, backend.to_string())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn the echo");
                Running {
                    process: RelayerProcess(child),
                    _dir: None,
                }
            }
            Client::Relayer => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("http://{backend}");
                let process = spawn_relayer(&url, &url, dir.path(), "enabled = false");
                Running {
                    process,
                    _dir: Some(dir),
                }
            }
        }
    }
}

impl Running {
    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Stops the client with SIGTERM (so a profiler under it writes its
    /// output) and waits for it.
    fn terminate(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.process.0.wait();
    }
}

/// Waits until `load` saw its first result after `before` (the client
/// connected and answers).
async fn first_result(load: &Load, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.results.load(Relaxed) == before {
        assert!(Instant::now() < deadline, "the client never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One throughput round: `client` against the generator, one window after
/// a 1 s warm-up. Returns (answers per second, client CPU µs per answer,
/// this process's — the generator's — CPU µs per answer).
async fn throughput_round(
    load: &Load,
    backend: SocketAddr,
    client: Client,
    window: Duration,
) -> (f64, f64, f64) {
    let running = client.start(backend);
    first_result(load, load.results.load(Relaxed)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.results.load(Relaxed);
    let cpu_before = cpu_seconds(running.pid());
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let answered = (load.results.load(Relaxed) - before) as f64;
    let cpu = cpu_seconds(running.pid()) - cpu_before;
    let own = cpu_seconds(std::process::id()) - own_before;
    let elapsed = started.elapsed().as_secs_f64();
    drop(running);
    (
        answered / elapsed,
        cpu / answered * 1e6,
        own / answered * 1e6,
    )
}

/// One latency round: `client` against the one-in-flight generator,
/// `LATENCY_SAMPLES` round trips after a warm-up. Returns (p50, p99) in µs.
async fn latency_round(load: &Load, backend: SocketAddr, client: Client) -> (f64, f64) {
    let running = client.start(backend);
    first_result(load, load.results.load(Relaxed)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.rtts.lock().unwrap().clear();
    while load.rtts.lock().unwrap().len() < LATENCY_SAMPLES {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(running);
    let mut rtts: Vec<Duration> = std::mem::take(&mut *load.rtts.lock().unwrap());
    rtts.truncate(LATENCY_SAMPLES);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(percentile(&mut rtts, 0.50)),
        us(percentile(&mut rtts, 0.99)),
    )
}

/// Profile mode: `client` answers exactly `commands` pings, then stops.
async fn profile(commands: u64) {
    let client = match std::env::var("RELAY_BENCH_PROFILE_CLIENT").as_deref() {
        Ok("echo") => Client::Echo,
        _ => Client::Relayer,
    };
    let load = Load::new(IN_FLIGHT, commands);
    let backend = lean_backend(&load).await;
    let running = client.start(backend);
    let started = Instant::now();
    while load.results.load(Relaxed) < commands {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    running.terminate();
    println!("{client:?}: {commands} commands answered in {elapsed:?}");
}

/// The `Hello` a client of these backends opens its stream with.
/// Dials `url` (Nagle off), sends `Hello` for `cluster` and opens the relay
/// stream: the sender for further frames and the backend's frames.
async fn open_stream(
    url: String,
    cluster: &str,
    incarnation: &str,
) -> (
    mpsc::Sender<RelayerFrame>,
    tonic::Streaming<consonant_relayer::proto::BackendFrame>,
) {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("dial the backend");
    let (tx, rx) = mpsc::channel::<RelayerFrame>(8192);
    tx.send(hello(cluster, incarnation)).await.unwrap();
    let inbound = RelayServiceClient::new(channel)
        .connect(authorized(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            cluster,
        ))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

fn hello(cluster: &str, incarnation: &str) -> RelayerFrame {
    use consonant_relayer::proto::Hello;
    RelayerFrame {
        seq: 0,
        body: Some(relayer_frame::Body::Hello(Hello {
            cluster_id: cluster.into(),
            incarnation: incarnation.into(),
            protocol_version: 1,
            heartbeat_interval_ms: 10_000,
            ..Default::default()
        })),
    }
}

/// `outbound` as a `Connect` request with the cluster's credentials.
fn authorized<T>(outbound: T, cluster: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(outbound);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-consonant-cluster-id", cluster.parse().unwrap());
    request
}

// ------------------------------------------------- minimal relayer (ceiling)

/// The least a relayer can do against the same backend: answer every ping
/// with `CommandAccepted` + `CommandResult` straight from the read loop — no
/// actors, no outbox, no dedup, no replay. Its throughput is the ceiling
/// this backend and load generator allow on this machine.
async fn minimal_relayer(backend: &DevBackendHandle) -> tokio::task::JoinHandle<()> {
    use consonant_relayer::proto::CommandAccepted;
    let (tx, mut inbound) = open_stream(backend.grpc_url(), MINIMAL_CLUSTER, "minimal").await;
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
    if let Ok(backend) = std::env::var(ECHO_ROLE) {
        return echo_process(&backend);
    }
    runtime().block_on(async {
        if let Some(commands) = std::env::var("RELAY_BENCH_PROFILE_COMMANDS")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            return profile(commands).await;
        }
        let duration = window();
        println!("relay bench: {IN_FLIGHT} in flight, payload {PAYLOAD} B, window {duration:?}, {ROUNDS} rounds\n");

        let row = |name: &str, values: &mut Vec<f64>, unit: &str| {
            let (median, min, max) = spread(values);
            println!("{name:<44} {median:>12.1} {unit:<8} (min {min:.1}, max {max:.1})");
            median
        };

        // The goal figures: echo and relayer against the same lean
        // generator, interleaved round by round so drift hits both.
        let many = Load::new(IN_FLIGHT, u64::MAX);
        let one = Load::new(1, u64::MAX);
        let (many_addr, one_addr) = (lean_backend(&many).await, lean_backend(&one).await);
        let mut figures: [Vec<f64>; 8] = Default::default();
        for round in 0..ROUNDS {
            for (i, client) in [Client::Echo, Client::Relayer].into_iter().enumerate() {
                let (rate, cpu, generator) =
                    throughput_round(&many, many_addr, client, duration).await;
                let (p50, p99) = latency_round(&one, one_addr, client).await;
                println!("round {round}: {client:?} {rate:.0}/s, {cpu:.2} µs CPU each (generator {generator:.2}), p50 {p50:.0} µs, p99 {p99:.0} µs");
                figures[i].push(rate);
                figures[2 + i].push(cpu);
                figures[4 + i].push(p50);
                figures[6 + i].push(p99);
            }
        }
        println!();
        let [e_t, r_t, e_cpu, r_cpu, e_50, r_50, e_99, r_99] = &mut figures;
        let e_t = row("raw tonic echo throughput (lean generator)", e_t, "msgs/s");
        let r_t = row("relay ping throughput (lean generator)", r_t, "cmds/s");
        row("echo CPU per message", e_cpu, "µs");
        let r_cpu = row("relayer CPU per command", r_cpu, "µs");
        let e_50 = row("echo p50 RTT (1 in flight)", e_50, "µs");
        let e_99 = row("echo p99 RTT (1 in flight)", e_99, "µs");
        let r_50 = row("relay ping p50 RTT (1 in flight)", r_50, "µs");
        let r_99 = row("relay ping p99 RTT (1 in flight)", r_99, "µs");
        println!();
        println!("throughput relay/echo                        {:>12.2}   (goal ≥ 0.30)", r_t / e_t);
        println!("relayer CPU per command                      {:>12.2} µs (goal ≤ 1.5)", r_cpu);
        println!("p50 above echo                               {:>12.1} µs", r_50 - e_50);
        println!("p99 above echo                               {:>12.1} µs (goal ≤ 100)", r_99 - e_99);

        if std::env::var("RELAY_BENCH_REFERENCE").as_deref() == Ok("0") {
            return;
        }
        println!();
        reference_rows(duration, row).await;
    });
}

/// The rows through the reference backend (in process): the minimal
/// relayer, the relayer, its idle RSS.
async fn reference_rows(duration: Duration, row: impl Fn(&str, &mut Vec<f64>, &str) -> f64) {
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
        minimal_tput
            .push(relay_throughput_for(&backend, MINIMAL_CLUSTER, duration, &mut next).await);
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

    let m_t = row(
        "minimal relayer throughput (reference)",
        &mut minimal_tput,
        "cmds/s",
    );
    let r_t = row(
        "relay ping throughput (reference)",
        &mut relay_tput,
        "cmds/s",
    );
    row("relay ping p50 RTT (reference)", &mut relay_p50, "µs");
    row("relay ping p99 RTT (reference)", &mut relay_p99, "µs");
    println!("throughput relay/minimal (reference)         {:>12.2}   (the actors' cost against this backend)", r_t / m_t);
    if let Some(rss) = idle_rss {
        println!(
            "relayer idle RSS                             {:>12.1} MiB",
            rss as f64 / 1024.0
        );
    }
    if let Some(rss) = peak_rss {
        println!(
            "relayer RSS after the load                   {:>12.1} MiB",
            rss as f64 / 1024.0
        );
    }
    backend.shutdown().await;
}
