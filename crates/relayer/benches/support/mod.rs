//! Shared pieces of the bench binaries: the relayer process, loopback
//! ports, the measuring window and the statistics.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consonant_dev_backend::DevBackendHandle;

pub(crate) fn window() -> Duration {
    let secs = std::env::var("RELAY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

pub(crate) const CLUSTER: &str = "cls_bench";
pub(crate) const TOKEN: &str = "bench-token-bench-token-bench-token";

pub(crate) struct RelayerProcess(pub Child);

impl Drop for RelayerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The relayer binary the benches run: this build's, or the one named by
/// `RELAYER_BENCH_BIN` (to compare builds — profiles, allocators — under
/// the same load generator).
pub(crate) fn relayer_binary() -> std::ffi::OsString {
    std::env::var_os("RELAYER_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_consonant-relayer").into())
}

/// Set to a command line (e.g. `valgrind --tool=callgrind`) to run the
/// processes under test under it: profiles come from the same runs as the
/// figures.
pub(crate) const WRAP: &str = "RELAY_BENCH_WRAP";

/// A command running `program`, under [`WRAP`] when that is set.
pub(crate) fn wrapped(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match std::env::var(WRAP).ok().filter(|w| !w.trim().is_empty()) {
        Some(wrap) => {
            let mut words = wrap.split_whitespace();
            let mut command = Command::new(words.next().unwrap_or_default());
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The release relayer binary, configured for `grpc` with the bench cluster.
pub(crate) fn spawn_relayer(
    http: &str,
    grpc: &str,
    dir: &std::path::Path,
    kubernetes: &str,
) -> RelayerProcess {
    spawn_relayer_with(
        http,
        grpc,
        dir,
        &format!("[telemetry]\nenabled = false\n[kubernetes]\n{kubernetes}\n"),
    )
}

/// [`spawn_relayer`] with the `[telemetry]` and `[kubernetes]` sections
/// (and any others) given whole in `sections`.
pub(crate) fn spawn_relayer_with(
    http: &str,
    grpc: &str,
    dir: &std::path::Path,
    sections: &str,
) -> RelayerProcess {
    std::fs::write(dir.join("clusterId"), CLUSTER).unwrap();
    std::fs::write(dir.join("clusterToken"), TOKEN).unwrap();
    let health = free_addr();
    let config = format!(
        "[cluster]\nname = \"bench\"\n[backend]\nurl = \"{http}\"\ngrpc_endpoint = \"{grpc}\"\n[credentials]\ncluster_id_file = \"{}\"\ncluster_token_file = \"{}\"\n[commands]\nrate_per_second = 100000000\nburst = 100000000\n{sections}\n[health]\nlisten = \"{health}\"\n[logging]\nlevel = \"warn\"\nformat = \"text\"\n",
        dir.join("clusterId").display(),
        dir.join("clusterToken").display(),
    );
    std::fs::write(dir.join("relayer.toml"), config).unwrap();
    let child = wrapped(relayer_binary())
        .args(["run", "--config"])
        .arg(dir.join("relayer.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the relayer");
    RelayerProcess(child)
}

pub(crate) async fn start_relayer(
    backend: &DevBackendHandle,
    dir: &std::path::Path,
    kubernetes: &str,
) -> RelayerProcess {
    let process = spawn_relayer(&backend.http_url(), &backend.grpc_url(), dir, kubernetes);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if backend
            .state()
            .list_clusters()
            .iter()
            .any(|c| c.cluster_id == CLUSTER && c.connected)
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the relayer did not connect");
}

pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

pub(crate) fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// CPU time (user + system) process `pid` has used, from `/proc`.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The benches' runtime (multi-thread, like the relayer's I/O pool), with
/// the process's rustls provider installed.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Serves tonic `routes` on a free loopback port with Nagle off (tonic's
/// `serve_with_incoming` ignores `Server::tcp_nodelay`); returns the address
/// and the server task.
pub(crate) async fn serve(
    routes: tonic::service::Routes,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await;
    });
    (addr, task)
}

/// [`serve`] for one relay-protocol backend.
pub(crate) async fn serve_relay<S>(service: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    S: consonant_relayer::proto::relay_service_server::RelayService,
{
    serve(tonic::service::Routes::new(
        consonant_relayer::proto::relay_service_server::RelayServiceServer::new(service),
    ))
    .await
}

/// The lean backends' handshake: waits for `Hello`, answers `Welcome`.
/// False when the stream ended first.
pub(crate) async fn welcome<T>(
    inbound: &mut tonic::Streaming<consonant_relayer::proto::RelayerFrame>,
    tx: &tokio::sync::mpsc::Sender<Result<consonant_relayer::proto::BackendFrame, T>>,
) -> bool {
    use consonant_relayer::proto::{backend_frame, BackendFrame, Welcome};
    let Ok(Some(_hello)) = inbound.message().await else {
        return false;
    };
    let welcome = BackendFrame {
        body: Some(backend_frame::Body::Welcome(Welcome {
            session_id: "lean".into(),
            ..Default::default()
        })),
    };
    tx.send(Ok(welcome)).await.is_ok()
}
