//! `consonant-relayer demo`: the reference backend and a relayer on one
//! machine, wired the way a cluster would be — the cluster registers through
//! the real `register` code path (HTTP to the backend's registration API,
//! credentials into the Secret `consonant-relayer-cluster` in the in-memory
//! Kubernetes API), the demo mounts that Secret as files the relayer reads
//! (as kubelet would), and the relayer dials out to the backend's gRPC port
//! and writes rotated tokens back into the Secret. Interactive
//! mode prints copy-paste `curl` lines and runs until Ctrl-C; `--script`
//! runs a scenario, prints each step with its outcome and latency, and exits
//! 0 only if every step passed.
//!
//! The cluster is the in-memory Kubernetes API (`src/sim/`, the same one the
//! tests use), reached through a kubeconfig like any other cluster. A sample
//! Deployment `web` (label `app.kubernetes.io/managed-by=consonant`) is
//! applied through the relayer at start, so the printed `scale` works.
//!
//! The cluster is locked (docs/cluster-lock.md): the demo makes an Ed25519
//! key pair (`demo-signer.key` in its work directory, key id `demo`), the
//! relayer trusts its public key in `commands.verify_keys`, and the demo's
//! state-changing commands are signed as an approval service would sign
//! them. An unsigned `scale` is refused with SIGNATURE_INVALID; the printed
//! `sign | curl` line shows the same scale signed and accepted.

mod scenario;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_kube_sim::{SimCluster, SimHandle, SimOptions};
use consonant_proto::signing::{generate, Signer};
use consonant_relayer::config::RelayerConfig;
use consonant_relayer::register::token::BootstrapToken;
use consonant_relayer::register::{Outcome, RegisterPlan};
use consonant_relayer::relayer::{self, RunningRelayer};
use consonant_secret::Secret;

/// Where `register` writes the cluster's credentials (the chart's defaults).
pub const SECRET_NAMESPACE: &str = "consonant-system";
pub const SECRET_NAME: &str = "consonant-relayer-cluster";

/// The key id the demo's signer goes by in `commands.verify_keys`.
pub const DEMO_KEY_ID: &str = "demo";

/// The sample workload the demo applies and scales.
pub use consonant_kube_sim::SAMPLE_DEPLOYMENT;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run a short scenario (ping, health, actors, drain and reconnect), print each step, exit 0 only if all pass.
    #[arg(long)]
    pub script: bool,
}

/// Everything a running demo holds.
pub struct Demo {
    pub sim: SimHandle,
    pub backend: DevBackendHandle,
    pub relayer: RunningRelayer,
    pub cluster_id: String,
    pub admin: String,
    pub health: String,
    /// The relayer's OTLP/HTTP receiver (`http://127.0.0.1:4318` when free).
    pub otlp_http: String,
    /// Signs the demo's state-changing commands for the locked cluster.
    pub signer: Signer,
    workdir: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let level = if args.script { "warn" } else { "info" };
    consonant_relayer::logging::init(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| level.into()),
        "text",
    );
    relayer::system().block_on(async move {
        let demo = Demo::start().await?;
        let code = if args.script {
            let passed = scenario::run(&demo).await;
            if passed {
                0
            } else {
                1
            }
        } else {
            demo.print_instructions();
            relayer::shutdown_signal().await;
            println!("\nstopping…");
            0
        };
        demo.stop().await;
        Ok(code)
    })
}

/// Reads the cluster Secret from the in-memory Kubernetes API and writes
/// its keys into `dir` (each file replaced atomically); returns the id and
/// token.
async fn mount_secret(sim: &SimHandle, dir: &std::path::Path) -> anyhow::Result<(String, Secret)> {
    use k8s_openapi::api::core::v1::Secret as KubeSecret;
    let api: kube::Api<KubeSecret> = kube::Api::namespaced(sim.client()?, SECRET_NAMESPACE);
    let secret = api
        .get(SECRET_NAME)
        .await
        .with_context(|| format!("reading Secret {SECRET_NAMESPACE}/{SECRET_NAME}"))?;
    let data = secret.data.unwrap_or_default();
    let key = |name: &str| -> anyhow::Result<String> {
        let bytes = data
            .get(name)
            .with_context(|| format!("Secret {SECRET_NAMESPACE}/{SECRET_NAME} has no {name}"))?;
        Ok(String::from_utf8_lossy(&bytes.0).into_owned())
    };
    let (id, token) = (key("clusterId")?, key("clusterToken")?);
    for (name, value) in [("clusterId", &id), ("clusterToken", &token)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok((id, Secret::new(token)))
}

/// Binds `preferred` if free, else any free port on loopback.
fn pick(preferred: &str) -> SocketAddr {
    let preferred: SocketAddr = preferred
        .parse()
        .expect("demo addresses are valid literals");
    match std::net::TcpListener::bind(preferred) {
        Ok(listener) => {
            drop(listener);
            preferred
        }
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

impl Demo {
    pub async fn start() -> anyhow::Result<Self> {
        let sim = SimCluster::start(SimOptions::default()).await?;
        // A single-use bootstrap token, as the backend's operator would issue.
        let bootstrap = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            rand::random::<[u8; 48]>(),
        );
        let backend = devbackend::start(DevBackendOptions {
            grpc_listen: pick("127.0.0.1:50051"),
            http_listen: pick("127.0.0.1:3000"),
            bootstrap_tokens: vec![Secret::new(bootstrap.clone())],
            ..Default::default()
        })
        .await?;
        let admin = backend.http_url();

        let mut config = RelayerConfig::default();
        config.cluster.name = "demo".into();
        config.cluster.region = "local".into();
        config.cluster.environment = "development".into();
        config.backend.url = admin.clone();
        config.backend.grpc_endpoint = backend.grpc_url();
        config.credentials.secret_name = SECRET_NAME.into();
        config.credentials.secret_namespace = SECRET_NAMESPACE.into();

        // Register exactly as the chart's pre-install hook does.
        let plan = RegisterPlan {
            config: config.clone(),
            config_path: "(demo configuration)".into(),
            token: BootstrapToken::from_value(&bootstrap, "the demo's bootstrap token")?,
            secret_name: SECRET_NAME.into(),
            namespace: SECRET_NAMESPACE.into(),
            labels: [
                ("app.kubernetes.io/name", "consonant-relayer"),
                ("app.kubernetes.io/instance", "demo"),
                ("app.kubernetes.io/component", "credentials"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            delete_bootstrap_secret: None,
            timeout: Duration::from_secs(30),
            force: false,
        };
        let cluster_id = match consonant_relayer::register::register(&plan, sim.client()?)
            .await
            .context("registering the demo cluster")?
        {
            Outcome::Registered { cluster_id, .. }
            | Outcome::AlreadyRegistered { cluster_id, .. } => cluster_id,
        };

        let workdir =
            std::env::temp_dir().join(format!("consonant-demo-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(workdir.join("credentials"))?;

        // Lock the cluster with a key of the demo's own, as `keygen` makes.
        let (private_pem, public) = generate()?;
        let key_file = workdir.join("demo-signer.key");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_file)?
                .write_all(private_pem.as_bytes())?;
        }
        let signer = Signer::from_pem(DEMO_KEY_ID, private_pem.as_bytes())?;
        config
            .commands
            .verify_keys
            .insert(DEMO_KEY_ID.to_string(), public);
        mount_secret(&sim, &workdir.join("credentials")).await?;
        sim.write_kubeconfig(&workdir.join("kubeconfig"))?;

        config.credentials.cluster_id_file = workdir.join("credentials/clusterId");
        config.credentials.cluster_token_file = workdir.join("credentials/clusterToken");
        config.health.listen = pick("127.0.0.1:8080").to_string();
        config.kubernetes.enabled = true;
        config.kubernetes.kubeconfig = workdir.join("kubeconfig").display().to_string();
        config.kubernetes.leader_election = false;
        config.telemetry.enabled = true;
        config.telemetry.otlp_grpc_listen = pick("127.0.0.1:4317").to_string();
        config.telemetry.otlp_http_listen = pick("127.0.0.1:4318").to_string();
        config.telemetry.flush_interval = Duration::from_millis(200);
        let otlp_http = format!("http://{}", config.telemetry.otlp_http_listen);
        config.connection.heartbeat_interval = Duration::from_secs(2);
        let relayer = RunningRelayer::start(
            config,
            std::rc::Rc::new(|reason: &str| {
                tracing::error!(%reason, "demo relayer gave up");
            }),
        )?;
        let health = format!("http://{}", relayer.http_addr);
        let demo = Self {
            sim,
            backend,
            relayer,
            cluster_id,
            admin,
            health,
            otlp_http,
            signer,
            workdir,
        };
        demo.wait_connected(Duration::from_secs(10)).await?;
        demo.apply_sample().await?;
        Ok(demo)
    }

    /// Copies the cluster Secret into the credential files, as kubelet
    /// syncs a mounted Secret.
    pub async fn sync_mount(&self) -> anyhow::Result<(String, Secret)> {
        mount_secret(&self.sim, &self.workdir.join("credentials")).await
    }

    /// Applies the sample Deployment through the relayer, like a backend would.
    pub async fn apply_sample(&self) -> anyhow::Result<serde_json::Value> {
        // proto3 JSON carries `bytes` fields as base64.
        let manifest = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            SAMPLE_DEPLOYMENT,
        );
        self.command(serde_json::json!({"apply": {"manifest": manifest, "namespace": "default"}}))
            .await
    }

    /// Sends one command through the backend's admin API and waits for its
    /// result; an action the lock requires signed goes signed, as the
    /// approval service would sign it.
    pub async fn command(&self, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let locked = ["apply", "delete", "scale", "restart"]
            .iter()
            .any(|action| body.get(action).is_some());
        let sent = if locked {
            self.sign(&body)?
        } else {
            body.clone()
        };
        let (status, result) = self.send(&sent).await?;
        anyhow::ensure!(
            status.is_success() && result["status"] == "SUCCEEDED",
            "command {body} answered HTTP {status}: {result}"
        );
        Ok(result)
    }

    /// `body` (one Command in the proto3 JSON mapping) signed for this
    /// cluster with a 5-minute deadline, as `consonant-relayer sign --ttl 5m`
    /// prints it.
    pub fn sign(&self, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut command: consonant_proto::Command = serde_json::from_value(body.clone())?;
        if command.command_id.is_empty() {
            command.command_id = uuid::Uuid::new_v4().to_string();
        }
        if command.deadline_unix_ms == 0 {
            command.deadline_unix_ms = consonant_relayer::clock::now_unix_ms() + 300_000;
        }
        Ok(serde_json::to_value(
            self.signer.sign(&command, &self.cluster_id),
        )?)
    }

    /// Posts one command as given and waits for its result, whatever it is.
    pub async fn send(
        &self,
        body: &serde_json::Value,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        let url = format!(
            "{}/api/v1/clusters/{}/commands?wait=true&timeout_ms=15000",
            self.admin, self.cluster_id
        );
        let response = reqwest::Client::new().post(&url).json(body).send().await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }

    /// Waits until the relayer reports a live stream.
    pub async fn wait_connected(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.relayer.rc.link.read().connected {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = self
            .relayer
            .rc
            .link
            .read()
            .last_error
            .clone()
            .unwrap_or_default();
        anyhow::bail!("the relayer did not connect within {within:?}: {last}")
    }

    fn print_instructions(&self) {
        let id = &self.cluster_id;
        println!("Consonant Relayer demo is running.\n");
        println!("  reference backend  gRPC  {}", self.backend.grpc_url());
        println!("  reference backend  admin {}", self.admin);
        println!("  relayer health           {}", self.health);
        println!(
            "  relayer OTLP/HTTP        {} (POST /v1/traces, /v1/metrics, /v1/logs)",
            self.otlp_http
        );
        println!("  cluster id               {id}");
        println!(
            "  cluster Secret           {SECRET_NAMESPACE}/{SECRET_NAME} (written by `register`, mounted into {})\n",
            self.workdir.join("credentials").display()
        );
        println!("Try:\n");
        println!("  # a ping, end to end (backend → relayer → backend)");
        println!(
            "  curl -s -X POST '{}/api/v1/clusters/{id}/commands?wait=true' -H 'content-type: application/json' -d '{{\"ping\": {{\"payload\": \"aGVsbG8=\"}}}}'\n",
            self.admin
        );
        let scale = r#"{"scale": {"target": {"api_version": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"}, "replicas": 3}}"#;
        println!("  # the cluster is locked: an unsigned scale is REJECTED with SIGNATURE_INVALID");
        println!(
            "  curl -s -X POST '{}/api/v1/clusters/{id}/commands?wait=true' -H 'content-type: application/json' -d '{scale}'\n",
            self.admin
        );
        let me = std::env::current_exe()
            .map(|path| path.display().to_string())
            .unwrap_or_else(|_| "consonant-relayer".into());
        println!("  # the same scale signed with the demo's key (key id {DEMO_KEY_ID}): SUCCEEDED, 3 replicas");
        println!(
            "  echo '{scale}' | {me} sign --key-file {} --key-id {DEMO_KEY_ID} --cluster-id {id} --ttl 5m | curl -s -X POST '{}/api/v1/clusters/{id}/commands?wait=true' -H 'content-type: application/json' -d @-\n",
            self.workdir.join("demo-signer.key").display(),
            self.admin
        );
        println!("  # cluster events the relayer reported (readiness changes, failing pods)");
        println!("  curl -s '{}/api/v1/clusters/{id}/events'\n", self.admin);
        println!("  # drain the stream; the relayer reconnects after ~1 s");
        println!(
            "  curl -s -X POST '{}/api/v1/clusters/{id}/drain'\n",
            self.admin
        );
        println!("  # rotate the cluster token: the relayer writes it to the Secret {SECRET_NAMESPACE}/{SECRET_NAME} and reconnects with it");
        println!(
            "  curl -s -X POST '{}/api/v1/clusters/{id}/rotate'\n",
            self.admin
        );
        println!("  # the relayer's actors, mailboxes and restarts");
        println!("  curl -s {}/debug/actors\n", self.health);
        println!("  # health as Kubernetes and people see it");
        println!("  curl -s {}/health\n", self.health);
        println!(
            "The cluster is the in-memory Kubernetes API at {} (kubeconfig in {}).",
            self.sim.url(),
            self.workdir.display()
        );
        println!("Ctrl-C stops everything.");
    }

    pub async fn stop(self) {
        self.relayer.shutdown().await;
        self.backend.shutdown().await;
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
