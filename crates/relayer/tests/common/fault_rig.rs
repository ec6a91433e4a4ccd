//! The fault rig (issue 17): the reference backend in a network namespace
//! of its own, reached from the relayer (in the test's namespace) over real
//! veth links through a middle namespace whose packets pass through a
//! userspace netem (`scripts/fault-wire`, on a TUN device).
//!
//! ```text
//!  test namespace            <id>-mid                        <id>-backend
//!  relayer ── cfd<N> ═══ veth ═══ d0 ─┐         ┌─ b0 ═══ veth ═══ d1  gRPC  10.214.N.1:50051
//!    10.213.N.1/30         10.213.N.2 └─ w0 (TUN: fault-wire) ─┘ 10.214.N.2
//!  test ───── cfm<N> ═══════════════ veth (management, no faults) ═══════ m0  admin 10.215.N.2:3000
//!    10.215.N.1/30
//! ```
//!
//! Every packet between the relayer and the backend's gRPC port is routed
//! (policy routing in the middle namespace) into the TUN device, where
//! `fault-wire` holds, drops or reorders it as the current impairment says
//! and writes it back. The kernel in this VM has no `sch_netem`; the wire
//! does the same in userspace on the real packets, so retransmissions,
//! RTO backoff and half-open connections are the kernel's own. The
//! backend's admin API has a link of its own that faults never touch, so
//! the test can submit commands and read results while the data path is
//! dark. The backend runs as a process (this test binary started again
//! inside the namespace), so it can be SIGKILLed and restarted.
//!
//! Needs root, `ip` (iproute2), `ss`, `python3` and `/dev/net/tun`;
//! [`FaultRig::new`] says which one is missing. Addresses are 10.213–215.N
//! with N chosen under a lock file among the ones no interface uses, so
//! test binaries running at the same time get separate rigs. Dropping the
//! rig kills its processes and deletes its namespaces (which deletes the
//! veth pairs and their routes with them).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::capture_output;

/// The environment variable that turns the rig's backend test function into
/// the backend process: `<grpc addr>,<http addr>,<heartbeat ms or
/// empty>,<frame journal path>`.
pub(crate) const BACKEND_ROLE: &str = "CONSONANT_FAULT_RIG_BACKEND";

/// The name of the test function every test binary using the rig defines
/// with [`backend_process`] as its body.
pub(crate) const BACKEND_TEST_NAME: &str = "fault_rig_backend_process";

/// The body of [`BACKEND_TEST_NAME`]: when started by the rig, serve the
/// reference backend (`CLUSTER_ID`/`TOKEN` pre-registered) until killed;
/// otherwise return at once.
pub(crate) fn backend_process() {
    let Ok(role) = std::env::var(BACKEND_ROLE) else {
        return;
    };
    let parts: Vec<&str> = role.split(',').collect();
    let grpc: SocketAddr = parts[0].parse().expect("grpc address");
    let http: SocketAddr = parts[1].parse().expect("http address");
    let heartbeat = Some(parts[2])
        .filter(|ms| !ms.is_empty())
        .map(|ms| Duration::from_millis(ms.parse().expect("heartbeat ms")));
    let journal = PathBuf::from(parts[3]);
    // Its log (RUST_LOG, from CONSONANT_RIG_BACKEND_LOG; warnings by
    // default) goes to stderr, which the rig keeps in `backend_output`.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _backend = consonant_dev_backend::start(consonant_dev_backend::DevBackendOptions {
            grpc_listen: grpc,
            http_listen: http,
            clusters: vec![(
                super::CLUSTER_ID.to_string(),
                consonant_relayer::credentials::Secret::new(super::TOKEN),
            )],
            heartbeat_interval: heartbeat,
            frame_journal: Some(journal),
            ..Default::default()
        })
        .await
        .expect("start the reference backend in the rig");
        println!("fault-rig backend ready");
        std::future::pending::<()>().await;
    });
}

/// Why the rig cannot be built on this machine.
#[derive(Debug)]
pub(crate) struct RigUnavailable(pub String);

impl std::fmt::Display for RigUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the fault rig cannot run here: {}", self.0)
    }
}

pub(crate) struct FaultRig {
    n: u8,
    mid: String,
    backend_ns: String,
    wire: Child,
    wire_stdin: ChildStdin,
    pub wire_output: Arc<Mutex<String>>,
    backend: Option<Child>,
    pub backend_output: Arc<Mutex<String>>,
    heartbeat_ms: Option<u64>,
    test_binary: PathBuf,
    /// Holds the backend's frame journal, which outlives its processes.
    journal_dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &str) -> Result<(), String> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

fn in_ns(ns: &str, command: &str) -> Result<(), String> {
    let mut args = vec!["netns", "exec", ns];
    args.extend(command.split_whitespace());
    run("ip", &args)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Checks what the rig needs, naming the first thing missing.
fn check_prerequisites() -> Result<(), RigUnavailable> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err(RigUnavailable(
            "it needs root (network namespaces, veth links, a TUN device); run the tests as root"
                .into(),
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        ("python3", "python3"),
    ] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Err(RigUnavailable(format!(
                "`{tool}` is not installed (Debian package {package})"
            )));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(RigUnavailable(
            "/dev/net/tun is missing (the kernel's TUN driver, CONFIG_TUN)".into(),
        ));
    }
    // Tests of one binary build rigs at the same time: a probe each.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    let probe = format!("consonant-fault-probe-{pid}-{n}");
    ip(&format!("netns add {probe}"))
        .map_err(|e| RigUnavailable(format!("cannot create a network namespace: {e}")))?;
    let veth = ip(&format!(
        "link add cfp{}x{n} netns {probe} type veth peer name cfprobe netns {probe}",
        pid % 100_000
    ));
    let _ = ip(&format!("netns del {probe}"));
    veth.map_err(|e| RigUnavailable(format!("cannot create a veth pair (CONFIG_VETH): {e}")))
}

/// Picks N (10.213.N.0/30 …) that no interface uses, under a lock file so
/// two rigs starting together do not pick the same.
fn claim_subnet() -> (u8, std::fs::File) {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("consonant-fault-rig.lock"))
        .expect("open the rig's lock file");
    lock.lock().expect("lock the rig's lock file");
    let used = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link show")
            .stdout,
    )
    .into_owned();
    let n = (1..=250u8)
        .find(|n| !used.contains(&format!(" cfd{n}@")) && !used.contains(&format!(" cfd{n}:")))
        .expect("a free fault rig subnet (250 in use?)");
    (n, lock)
}

impl FaultRig {
    /// Builds the namespaces, links and wire, and starts the backend. The
    /// backend's heartbeat interval (imposed in `Welcome`) is
    /// `heartbeat_ms` when given.
    pub(crate) fn new(heartbeat_ms: Option<u64>) -> Result<Self, RigUnavailable> {
        check_prerequisites()?;
        let (n, lock) = claim_subnet();
        let mid = format!("consonant-fault-{n}-mid");
        let backend_ns = format!("consonant-fault-{n}-backend");
        let build = || -> Result<(), String> {
            for ns in [&mid, &backend_ns] {
                let _ = ip(&format!("netns del {ns}"));
                ip(&format!("netns add {ns}"))?;
                in_ns(ns, "ip link set lo up")?;
            }
            // Forwarding without reverse-path checks in the middle: a packet
            // comes back from the wire on w0, not on the link it arrived by.
            in_ns(
                &mid,
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
            )?;
            ip(&format!(
                "link add cfd{n} type veth peer name d0 netns {mid}"
            ))?;
            ip(&format!(
                "link add b0 netns {mid} type veth peer name d1 netns {backend_ns}"
            ))?;
            ip(&format!(
                "link add cfm{n} type veth peer name m0 netns {backend_ns}"
            ))?;
            ip(&format!("addr add 10.213.{n}.1/30 dev cfd{n}"))?;
            ip(&format!("link set cfd{n} up"))?;
            ip(&format!("route add 10.214.{n}.0/30 via 10.213.{n}.2"))?;
            ip(&format!("addr add 10.215.{n}.1/30 dev cfm{n}"))?;
            ip(&format!("link set cfm{n} up"))?;
            ip(&format!("-n {mid} addr add 10.213.{n}.2/30 dev d0"))?;
            ip(&format!("-n {mid} link set d0 up"))?;
            ip(&format!("-n {mid} addr add 10.214.{n}.2/30 dev b0"))?;
            ip(&format!("-n {mid} link set b0 up"))?;
            ip(&format!("-n {backend_ns} addr add 10.214.{n}.1/30 dev d1"))?;
            ip(&format!("-n {backend_ns} link set d1 up"))?;
            ip(&format!(
                "-n {backend_ns} route add default via 10.214.{n}.2"
            ))?;
            ip(&format!("-n {backend_ns} addr add 10.215.{n}.2/30 dev m0"))?;
            ip(&format!("-n {backend_ns} link set m0 up"))?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = ip(&format!("netns del {mid}"));
            let _ = ip(&format!("netns del {backend_ns}"));
            return Err(RigUnavailable(e));
        }
        drop(lock); // the interfaces now mark N as used
        let mut wire = Command::new("ip")
            .args(["netns", "exec", &mid, "python3"])
            .arg(repo().join("scripts/fault-wire"))
            .arg("w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RigUnavailable(format!("start scripts/fault-wire: {e}")))?;
        let wire_stdin = wire.stdin.take().expect("wire stdin");
        let wire_output = capture_output(&mut wire, "fault-wire");
        let mut rig = Self {
            n,
            mid: mid.clone(),
            backend_ns,
            wire,
            wire_stdin,
            wire_output,
            backend: None,
            backend_output: Arc::new(Mutex::new(String::new())),
            heartbeat_ms,
            test_binary: std::env::current_exe().expect("the test binary's path"),
            journal_dir: tempfile::tempdir()
                .map_err(|e| RigUnavailable(format!("a temp dir for the journal: {e}")))?,
        };
        let started = Instant::now();
        while !rig.wire_output.lock().unwrap().contains("ready") {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(RigUnavailable(format!(
                    "scripts/fault-wire did not open its TUN device: {}",
                    rig.wire_output.lock().unwrap()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let route = || -> Result<(), String> {
            ip(&format!("-n {mid} link set w0 up"))?;
            in_ns(&mid, "sysctl -qw net.ipv4.conf.w0.rp_filter=0")?;
            ip(&format!("-n {mid} rule add iif d0 lookup 100"))?;
            ip(&format!("-n {mid} rule add iif b0 lookup 100"))?;
            ip(&format!("-n {mid} route add default dev w0 table 100"))
        };
        route().map_err(RigUnavailable)?;
        rig.start_backend();
        Ok(rig)
    }

    /// The backend's gRPC endpoint, on the faulty path.
    pub(crate) fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 214, self.n, 1), 50051))
    }

    pub(crate) fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr())
    }

    /// The backend's admin API, on the management link (never faulty).
    pub(crate) fn http_url(&self) -> String {
        format!("http://10.215.{}.2:3000", self.n)
    }

    /// Replaces the wire's impairment, e.g. `delay_ms=200 jitter_ms=100
    /// loss=0.05`; keys not named keep their value.
    pub(crate) fn impair(&mut self, line: &str) {
        writeln!(self.wire_stdin, "{line}").expect("write to fault-wire");
        self.wire_stdin.flush().expect("flush fault-wire");
        // The wire applies it on its next turn (it waits on stdin too).
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Every packet on the data path silently dropped (half-open
    /// connections), or the path healed.
    pub(crate) fn black_hole(&mut self, on: bool) {
        self.impair(if on { "blackhole=1" } else { "blackhole=0" });
    }

    /// Aborts every TCP connection of the backend's gRPC port from inside
    /// its namespace (`ss -K`, the kernel's sock_destroy): the relayer gets
    /// a reset, as when a load balancer cuts the stream.
    pub(crate) fn cut_streams(&self) {
        in_ns(
            &self.backend_ns,
            &format!(
                "ss -K -t state established sport = :{}",
                self.grpc_addr().port()
            ),
        )
        .expect("ss -K in the backend's namespace");
    }

    /// Starts the backend process (a fresh one: the reference backend keeps
    /// its state in memory, so a restart forgets commands and sessions).
    pub(crate) fn start_backend(&mut self) {
        assert!(self.backend.is_none(), "the backend is already running");
        let role = format!(
            "{},{},{},{}",
            self.grpc_addr(),
            self.http_url().trim_start_matches("http://"),
            self.heartbeat_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
            self.journal_path().display()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.backend_ns])
            .arg(&self.test_binary)
            .args([
                BACKEND_TEST_NAME,
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(BACKEND_ROLE, role)
            .env(
                "RUST_LOG",
                std::env::var("CONSONANT_RIG_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the rig's backend");
        self.backend_output = capture_output(&mut child, "rig backend");
        let started = Instant::now();
        while !self
            .backend_output
            .lock()
            .unwrap()
            .contains("fault-rig backend ready")
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the rig's backend did not start: {}",
                self.backend_output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.backend = Some(child);
    }

    /// SIGKILLs the backend process (its sockets close with it).
    pub(crate) fn kill_backend(&mut self) {
        if let Some(mut child) = self.backend.take() {
            // `ip netns exec` execs the test binary: the child is the backend.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The backends' frame journal (`DevBackendOptions::frame_journal`),
    /// for tasks that read it while the rig is borrowed elsewhere.
    pub(crate) fn journal_path(&self) -> PathBuf {
        self.journal_dir.path().join("frames.jsonl")
    }

    /// Every reliable frame any of the rig's backend processes kept and
    /// acked, killed ones included.
    pub(crate) fn journal(&self) -> Journal {
        Journal::read(&self.journal_path())
    }

    /// The wire's counters: packets in, forwarded, dropped.
    pub(crate) fn wire_counters(&self) -> String {
        self.wire_output
            .lock()
            .unwrap()
            .lines()
            .rev()
            .find(|l| l.contains("fault-wire: in"))
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for FaultRig {
    fn drop(&mut self) {
        self.kill_backend();
        let _ = self.wire.kill();
        let _ = self.wire.wait();
        let _ = ip(&format!("netns del {}", self.mid));
        let _ = ip(&format!("netns del {}", self.backend_ns));
        // The root-namespace ends went with their peers; a leftover one
        // (a peer that outlived its namespace) is removed here.
        let _ = ip(&format!("link del cfd{}", self.n));
        let _ = ip(&format!("link del cfm{}", self.n));
    }
}

// Shared by the fault scenarios (tests/faults.rs, tests/kube_faults.rs).

/// `scripts/soak` sets `CONSONANT_SOAK=1`: the scenarios run their long
/// versions (minutes each) instead of the seconds the test command spends.
pub(crate) fn soak() -> bool {
    std::env::var_os("CONSONANT_SOAK").is_some()
}

pub(crate) fn short_or_long<T>(short: T, long: T) -> T {
    if soak() {
        long
    } else {
        short
    }
}

/// One row of the soak report, on stderr for `scripts/soak` to collect:
/// scenario, commands, results, duplicates, max RSS, reconnect times,
/// dead-stream detection time, telemetry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    scenario: &str,
    commands: usize,
    results: usize,
    duplicates: usize,
    max_rss_kib: u64,
    reconnects: &str,
    detection: &str,
    telemetry: &str,
) {
    eprintln!(
        "SOAK-REPORT\t{scenario}\t{commands}\t{results}\t{duplicates}\t{:.1} MiB\t{reconnects}\t{detection}\t{telemetry}",
        max_rss_kib as f64 / 1024.0
    );
}

pub(crate) async fn backend_json(http: &str, path: &str) -> serde_json::Value {
    reqwest::get(format!("{http}{path}"))
        .await
        .expect("admin API")
        .json()
        .await
        .expect("admin API JSON")
}

/// Final result frames per command id, as the backend's `/frames` debug
/// log recorded them (the journal's format; see [`Journal::results`]).
pub(crate) async fn results_per_command(http: &str) -> std::collections::HashMap<String, u32> {
    let frames = backend_json(
        http,
        &format!("/api/v1/clusters/{}/frames", super::CLUSTER_ID),
    )
    .await;
    let frames = frames["frames"].as_array().expect("frames").clone();
    Journal { frames }
        .results()
        .into_iter()
        .map(|(id, (count, _))| (id, count))
        .collect()
}

/// What the rig's backends acked, across their restarts: the frame
/// journal's lines, deduplicated on `(incarnation, seq)` as a durable
/// backend deduplicates (a frame one backend acked and died with, replayed
/// to the next, counts once).
pub(crate) struct Journal {
    frames: Vec<serde_json::Value>,
}

impl Journal {
    pub(crate) fn read(path: &std::path::Path) -> Self {
        Self::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    fn parse(text: &str) -> Self {
        let mut seen = std::collections::HashSet::new();
        let frames = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|frame| {
                seen.insert((
                    frame["incarnation"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    frame["seq"].as_u64().unwrap_or_default(),
                ))
            })
            .collect();
        Self { frames }
    }

    /// Final result frames per command id, and the status of the last one
    /// (a retryable REJECTED is not final: the backend sends the command
    /// again).
    pub(crate) fn results(&self) -> std::collections::HashMap<String, (u32, String)> {
        let mut results = std::collections::HashMap::new();
        for frame in self
            .frames
            .iter()
            .filter(|f| f["kind"] == "result" && f["retryable"] != true)
        {
            let id = frame["command_id"].as_str().unwrap_or_default().to_string();
            let entry = results.entry(id).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = frame["status"].as_str().unwrap_or_default().to_string();
        }
        results
    }

    /// Spans that arrived, per relayer incarnation.
    pub(crate) fn spans_by_incarnation(&self) -> std::collections::HashMap<String, u64> {
        let mut spans = std::collections::HashMap::new();
        for frame in self.frames.iter().filter(|f| f["kind"] == "telemetry") {
            *spans
                .entry(
                    frame["incarnation"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
                .or_insert(0) += frame["spans"].as_u64().unwrap_or_default();
        }
        spans
    }
}
