//! Test support for the real Kubernetes control plane: one control plane per
//! test binary (etcd, kube-apiserver, kube-controller-manager, started by
//! `scripts/kube-testenv up` and stopped when the test process exits), a
//! namespace per test, and the stand-in kubelet ([`kubelet`]) that does what
//! a control plane alone cannot — a Node, pod binding, pod status, and
//! container logs served through the API server's kubelet proxy.
//!
//! ```no_run
//! # async fn demo() {
//! let plane = consonant_kube_testenv::ControlPlane::shared();
//! let namespace = plane.namespace("apply").await;
//! let client = plane.client().await;
//! # }
//! ```

pub mod kubelet;
mod pods;
mod time;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The stand-in kubelet's Node.
pub const NODE_NAME: &str = "testenv-node";

/// A running control plane with its stand-in kubelet.
#[derive(Debug)]
pub struct ControlPlane {
    /// Where `scripts/kube-testenv` keeps its state and logs (kept for the
    /// process's life; the watchdog stops the components when it exits).
    pub dir: PathBuf,
    /// An admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The API server's `gitVersion`, e.g. `v1.37.2`.
    pub version: String,
    _tempdir: tempfile::TempDir,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use (building
    /// it first if `.tools/` has no build yet). Panics with the reason and
    /// the logs' location if it cannot start.
    pub fn shared() -> &'static ControlPlane {
        match SHARED.get_or_init(Self::start) {
            Ok(plane) => plane,
            Err(why) => panic!("the Kubernetes control plane did not start: {why}"),
        }
    }

    fn start() -> Result<ControlPlane, String> {
        let tempdir = tempfile::Builder::new()
            .prefix("kube-testenv-")
            .tempdir()
            .map_err(|err| format!("temp dir: {err}"))?;
        let dir = tempdir.path().to_path_buf();
        let script = repo_root().join("scripts/kube-testenv");
        let out = Command::new(&script)
            .arg("up")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|err| format!("run {}: {err}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} up exited with {} (logs in {})",
                script.display(),
                out.status,
                dir.display()
            ));
        }
        let kubeconfig = dir.join("kubeconfig");
        let version = std::thread::spawn({
            let kubeconfig = kubeconfig.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| err.to_string())?;
                runtime.block_on(async {
                    let client = client_for(&kubeconfig).await;
                    client
                        .apiserver_version()
                        .await
                        .map(|info| info.git_version)
                        .map_err(|err| format!("GET /version: {err}"))
                })
            }
        })
        .join()
        .map_err(|_| "reading /version panicked".to_string())??;
        kubelet::spawn(kubeconfig.clone(), dir.clone(), NODE_NAME)?;
        Ok(ControlPlane {
            dir,
            kubeconfig,
            version,
            _tempdir: tempdir,
        })
    }

    /// A fresh admin client for the calling test's runtime (a client's
    /// connections belong to the runtime that made it).
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// A new namespace `<prefix>-<random>` for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// A new namespace with labels (e.g. Pod Security's
    /// `pod-security.kubernetes.io/enforce=restricted`).
    pub async fn namespace_with_labels(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), serde_json::Value::from(*value)))
            .collect();
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels }
        }))
        .expect("a namespace object");
        let client = self.client().await;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("create namespace {name}: {err}"));
        // Pods are refused (ServiceAccount admission) until the
        // service-account controller made `default`: wait as a user would.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client, &name);
        for _ in 0..300 {
            if accounts.get_opt("default").await.ok().flatten().is_some() {
                return name;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("namespace {name} got no default ServiceAccount within 30 s: is kube-controller-manager running? (logs in {})", self.dir.display())
    }
}

impl ControlPlane {
    /// Pods whose first container's image starts with `image_prefix` run as
    /// processes of `binary` in their own network and mount namespaces (see
    /// the stand-in kubelet); other images are only marked running.
    pub fn run_image_as(&self, image_prefix: &str, binary: &Path) {
        pods::register_image(image_prefix, binary.to_path_buf());
    }

    /// Makes the host's `127.0.0.1:port` reachable inside every process pod
    /// at `127.0.0.1:port` (the API server's port always is).
    pub fn expose_to_pods(&self, port: u16) {
        pods::expose(port).unwrap_or_else(|why| panic!("expose port {port} to pods: {why}"));
    }

    /// A token for the ServiceAccount `namespace/name` (TokenRequest, one
    /// hour), creating the account if it does not exist.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let account: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("a ServiceAccount");
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => panic!("create ServiceAccount {namespace}/{name}: {err}"),
        }
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {"audiences": [], "expirationSeconds": 3600}
        }))
        .expect("a TokenRequest");
        accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|err| panic!("TokenRequest for {namespace}/{name}: {err}"))
            .status
            .expect("a TokenRequest status")
            .token
    }

    /// Writes a kubeconfig that authenticates with `token` (same server and
    /// CA as the admin kubeconfig) to `path`.
    pub fn write_kubeconfig_for_token(&self, token: &str, namespace: &str, path: &Path) {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("the admin kubeconfig");
        let mut config: serde_json::Value =
            serde_yaml_ng::from_str(&admin).expect("the admin kubeconfig is YAML");
        config["users"][0]["user"] = serde_json::json!({ "token": token });
        config["contexts"][0]["context"]["namespace"] = serde_json::Value::from(namespace);
        std::fs::write(path, serde_yaml_ng::to_string(&config).expect("YAML"))
            .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    }

    /// Restarts one component (`kube-apiserver`, `etcd`,
    /// `kube-controller-manager`) with the same command line and data, and
    /// for the API server waits until it is ready again. Tests that restart
    /// something should have their own test binary: every test of a binary
    /// shares its control plane.
    pub fn restart(&self, component: &str) {
        self.restart_after_down(component, Duration::ZERO);
    }

    /// Stops one component (`kube-apiserver`, `etcd`,
    /// `kube-controller-manager`), leaves it stopped for `down` once it
    /// exited, and starts it again with the same command line and data,
    /// waiting until the API server (or etcd) answers again. Blocks the
    /// calling thread meanwhile (from async code, call it through
    /// `spawn_blocking`). Returns how long stopping and the outage took.
    pub fn restart_after_down(&self, component: &str, down: Duration) -> Restarted {
        let script = repo_root().join("scripts/kube-testenv");
        let out = Command::new(&script)
            .arg("restart")
            .arg(&self.dir)
            .arg(component)
            .arg(format!("{:.3}", down.as_secs_f64()))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("run {}: {err}", script.display()));
        assert!(
            out.status.success(),
            "restart {component} failed (logs in {})",
            self.dir.display()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let seconds = |key: &str| {
            stdout
                .split_whitespace()
                .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse::<f64>().ok())
                .map(Duration::from_secs_f64)
                .unwrap_or_else(|| panic!("restart {component}: no {key}= in {stdout:?}"))
        };
        Restarted {
            stopping: seconds("stopping"),
            down: seconds("down"),
        }
    }

    /// The API server's audit log so far: one JSON object per request
    /// (Metadata level: user, verb, objectRef, responseStatus).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// What [`ControlPlane::restart_after_down`] measured.
#[derive(Clone, Copy, Debug)]
pub struct Restarted {
    /// From SIGTERM until the component exited (kube-apiserver drains its
    /// requests first).
    pub stopping: Duration,
    /// From its exit until it was back: started, and for kube-apiserver and
    /// etcd answering again (`/readyz`, `/health`).
    pub down: Duration,
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|err| panic!("read {}: {err}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|err| panic!("kubeconfig {}: {err}", kubeconfig.display()));
    kube::Client::try_from(config).expect("a kube client")
}
