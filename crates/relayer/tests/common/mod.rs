//! Shared harness for the integration tests: the reference backend runs
//! in-process on loopback ports, the relayer runs as the real binary with a
//! config file in a temp dir, and tests talk to both over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod agent;
pub(crate) mod chart_tools;
pub(crate) mod fault_rig;
pub(crate) mod kube_writes;
pub(crate) mod otel_collector;
pub(crate) mod proxy;
pub(crate) mod register;
pub(crate) mod scripted;

use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_relayer::credentials::Secret;
use consonant_relayer::proto;
use serde_json::Value;

pub(crate) const CLUSTER_ID: &str = "cls_test";
pub(crate) const TOKEN: &str = "test-cluster-token-0123456789abcdef";

/// Collects a child's stdout and stderr, line by line, as they come
/// (echoed to the test's stderr as `[name] line` with RELAYER_TEST_ECHO set).
pub(crate) fn capture_output(child: &mut Child, name: &'static str) -> Arc<Mutex<String>> {
    let output = Arc::new(Mutex::new(String::new()));
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("RELAYER_TEST_ECHO").is_some() {
                    eprintln!("[{name}] {line}");
                }
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
    }
    output
}

pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A backend with `CLUSTER_ID`/`TOKEN` pre-registered, on the given ports
/// (free ones when `None`).
pub(crate) async fn backend_on(
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> DevBackendHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    devbackend::start(DevBackendOptions {
        grpc_listen: grpc.unwrap_or_else(free_addr),
        http_listen: http.unwrap_or_else(free_addr),
        clusters: vec![(CLUSTER_ID.to_string(), Secret::new(TOKEN))],
        ..Default::default()
    })
    .await
    .expect("start the reference backend")
}

pub(crate) async fn backend() -> DevBackendHandle {
    backend_on(None, None).await
}

/// The relayer binary running against a backend.
pub(crate) struct Relayer {
    child: Option<Child>,
    pub health: String,
    pub dir: tempfile::TempDir,
    pub output: Arc<Mutex<String>>,
}

pub(crate) struct RelayerOptions {
    pub grpc_url: String,
    pub http_url: String,
    pub token: String,
    pub cluster_id: String,
    /// Extra TOML appended to the `[credentials]` section.
    pub credentials_extra: String,
    /// Extra TOML appended to the `[connection]` section.
    pub connection: String,
    /// Extra TOML sections appended at the end.
    pub extra: String,
    /// Extra TOML appended to the `[backend]` section.
    pub backend_extra: String,
    /// The `[kubernetes]` section's body (default: disabled).
    pub kubernetes: String,
    /// The `[commands]` section's body.
    pub commands: String,
    /// The `[telemetry]` section's body (default: disabled).
    pub telemetry: String,
    pub env: Vec<(String, String)>,
    pub level: String,
}

impl RelayerOptions {
    pub(crate) fn new(backend: &DevBackendHandle) -> Self {
        Self::to(&backend.grpc_url(), &backend.http_url())
    }

    /// Options for a backend at these URLs (e.g. a `scripted` one).
    pub(crate) fn to(grpc_url: &str, http_url: &str) -> Self {
        Self {
            grpc_url: grpc_url.to_string(),
            http_url: http_url.to_string(),
            token: TOKEN.to_string(),
            cluster_id: CLUSTER_ID.to_string(),
            credentials_extra: String::new(),
            connection: String::new(),
            extra: String::new(),
            backend_extra: String::new(),
            kubernetes: "enabled = false".to_string(),
            commands: String::new(),
            telemetry: "enabled = false".to_string(),
            env: Vec::new(),
            level: "info".to_string(),
        }
    }

    pub(crate) fn connection(mut self, toml: &str) -> Self {
        self.connection.push_str(toml);
        self.connection.push('\n');
        self
    }

    /// Runs with Kubernetes enabled, against the API server in `kubeconfig`.
    pub(crate) fn kubernetes(
        mut self,
        kubeconfig: &std::path::Path,
        leader_election: bool,
    ) -> Self {
        self.kubernetes = format!(
            "enabled = true\nkubeconfig = \"{}\"\nleader_election = {leader_election}\nlease_duration = \"3s\"",
            kubeconfig.display()
        );
        self
    }

    pub(crate) fn commands(mut self, toml: &str) -> Self {
        self.commands.push_str(toml);
        self.commands.push('\n');
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

impl Relayer {
    pub(crate) fn start(options: RelayerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("clusterId"), &options.cluster_id).unwrap();
        std::fs::write(creds.join("clusterToken"), &options.token).unwrap();
        let health = free_addr();
        let config = format!(
            r#"
[cluster]
name = "test-cluster"
region = "local"
environment = "test"
labels = {{ team = "relay" }}

[backend]
url = "{http}"
grpc_endpoint = "{grpc}"
{backend_extra}

[credentials]
cluster_id_file = "{id_file}"
cluster_token_file = "{token_file}"
{credentials_extra}

[connection]
{connection}

[telemetry]
{telemetry}

[kubernetes]
{kubernetes}

[commands]
{commands}

[health]
listen = "{health}"

[logging]
level = "{level}"
format = "text"
{extra}
"#,
            http = options.http_url,
            grpc = options.grpc_url,
            id_file = creds.join("clusterId").display(),
            token_file = creds.join("clusterToken").display(),
            credentials_extra = options.credentials_extra,
            connection = options.connection,
            health = health,
            level = options.level,
            extra = options.extra,
            backend_extra = options.backend_extra,
            kubernetes = options.kubernetes,
            commands = options.commands,
            telemetry = options.telemetry,
        );
        let config_path = dir.path().join("relayer.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_consonant-relayer"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("POD_NAME", "relayer-test-0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn the relayer binary");
        let output = capture_output(&mut child, "relayer");
        Self {
            child: Some(child),
            health: format!("http://{health}"),
            dir,
            output,
        }
    }

    pub(crate) fn creds_dir(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The relayer process's resident memory in KiB, read from `/proc` (a
    /// bound measured from outside, not from the relayer's own counters).
    pub(crate) fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The relayer's anonymous resident memory (`RssAnon`: heap and stacks,
    /// not the binary's mapped code), in KiB. A debug binary maps tens of
    /// MiB of code, so bounds on what the relayer allocates use this.
    pub(crate) fn anon_rss_kib(&self) -> u64 {
        self.proc_status_kib("RssAnon:")
    }

    /// The relayer's peak resident memory so far (`VmHWM`), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("the relayer runs").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) async fn get(&self, path: &str) -> Option<reqwest::Response> {
        reqwest::Client::new()
            .get(format!("{}{path}", self.health))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()
    }

    pub(crate) async fn json(&self, path: &str) -> Option<Value> {
        self.get(path).await?.json().await.ok()
    }

    /// Polls `/health` until `check` holds; panics with the last body and the
    /// relayer's output after `within`.
    pub(crate) async fn wait_health(
        &self,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(body) = self.json("/health").await {
                if check(&body) {
                    return body;
                }
                last = body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("health condition not met within {within:?}; last /health: {last}\n--- relayer output ---\n{}", self.output());
    }

    pub(crate) async fn wait_connected(&self) -> Value {
        self.wait_health(Duration::from_secs(15), |h| h["grpc"]["connected"] == true)
            .await
    }

    /// The metric's value (summed over label sets matching `labels`).
    pub(crate) async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits for the process to exit by itself.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, as Kubernetes stops a pod; returns the exit status.
    pub(crate) fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        self.wait_exit(within)
    }
}

impl Drop for Relayer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn ping(id: &str, payload: &[u8]) -> proto::Command {
    proto::Command {
        command_id: id.to_string(),
        action: Some(proto::command::Action::Ping(proto::Ping {
            payload: payload.to_vec().into(),
        })),
        ..Default::default()
    }
}

/// Submits a command and waits for its result.
/// An `apply` of `manifest` into `namespace`, with a fresh command id.
pub(crate) fn apply_manifest(namespace: &str, manifest: &str) -> proto::Command {
    proto::Command {
        command_id: uuid::Uuid::new_v4().to_string(),
        action: Some(proto::command::Action::Apply(proto::ApplyManifest {
            manifest: manifest.as_bytes().to_vec().into(),
            namespace: namespace.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) async fn run_command(
    backend: &DevBackendHandle,
    command: proto::Command,
) -> proto::CommandResult {
    let rx = backend
        .state()
        .submit_command(CLUSTER_ID, command)
        .expect("submit");
    tokio::time::timeout(Duration::from_secs(15), rx)
        .await
        .expect("a result within 15 s")
        .expect("result sender kept")
}

pub(crate) async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// Like [`eventually`], for a check that has to await (an API call).
pub(crate) async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// Makes the backend withhold acks, then runs `count` pings named
/// `{prefix}-{i}` to completion: their results sit unacked in the relayer.
pub(crate) async fn pings_with_acks_withheld(
    backend: &DevBackendHandle,
    prefix: &str,
    count: usize,
) {
    backend
        .state()
        .set_faults(consonant_dev_backend::FaultsUpdate {
            withhold_acks: Some(true),
            ..Default::default()
        });
    let waiters: Vec<_> = (0..count)
        .map(|i| {
            backend
                .state()
                .submit_command(CLUSTER_ID, ping(&format!("{prefix}-{i}"), b"x"))
                .unwrap()
        })
        .collect();
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}

/// The `ready` flags of the `workload.status` events reported for
/// `namespace/name`, oldest first.
pub(crate) fn readiness_reported(
    backend: &DevBackendHandle,
    namespace: &str,
    name: &str,
) -> Vec<bool> {
    backend
        .state()
        .events(CLUSTER_ID, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.kind == "workload.status"
                && e.object
                    .as_ref()
                    .is_some_and(|o| o.name == name && o.namespace == namespace)
        })
        .map(|e| {
            serde_json::from_slice::<Value>(&e.payload_json)
                .ok()
                .and_then(|p| p["ready"].as_bool())
                .expect("a workload.status payload with a ready flag")
        })
        .collect()
}
