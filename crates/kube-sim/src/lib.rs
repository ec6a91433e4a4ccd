//! An in-memory Kubernetes API server on loopback: the demo's embedded
//! cluster and the Kubernetes bench's peer. The tests run against a real
//! kube-apiserver instead (`crates/kube-testenv`).
//!
//! [`SimCluster::start`] binds `127.0.0.1:<port>` and serves enough of the
//! Kubernetes REST API (JSON over HTTP/1.1, no TLS) that an unmodified
//! `kube::Client` can discover, list, get, create, replace, patch (merge,
//! strategic merge, server-side apply), delete, watch, scale, restart, read
//! pod logs and hold a leader-election Lease.
//!
//! # Pointing a `kube::Client` at it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use consonant_kube_sim::{SimCluster, SimOptions};
//! let sim = SimCluster::start(SimOptions::default()).await?;
//! // Either let the handle build it ...
//! let client = sim.client()?;
//! // ... or build it yourself: plain http, no TLS settings needed.
//! let mut config = kube::Config::new(sim.url().parse()?);
//! config.default_namespace = "default".into();
//! let client = kube::Client::try_from(config)?;
//! // Or write a kubeconfig for another process (KUBECONFIG=path).
//! sim.write_kubeconfig(std::path::Path::new("/tmp/sim-kubeconfig"))?;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! `kube::Client::try_from(Config)` builds a rustls connector even for an
//! `http://` url, and rustls needs a process-wide crypto provider; when more
//! than one is compiled in (today only ring is), install one first:
//! `rustls::crypto::ring::default_provider().install_default()` —
//! [`SimHandle::client`] does this for you.
//!
//! `kube::Client` retries 429, 503 and 504 answers by itself
//! (`Config::default_retry`), so `fail_next(1, 503)` is invisible to callers;
//! fail more requests than it retries, or use 500, to see the error.
//!
//! # What it serves
//!
//! - Discovery: `/version` (gitVersion from [`SimOptions::kubernetes_version`],
//!   default `v1.32.3`), `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}` with verbs, namespaced flags, short names and
//!   subresources (`deployments/scale`, `deployments/status`, `pods/log`, ...).
//! - Built-in types: v1 Namespace, Node, Pod, Service, ConfigMap, Secret,
//!   ServiceAccount, Event; apps/v1 Deployment, StatefulSet, DaemonSet,
//!   ReplicaSet; batch/v1 Job; coordination.k8s.io/v1 Lease;
//!   rbac.authorization.k8s.io/v1 Role, RoleBinding; apiextensions.k8s.io/v1
//!   CustomResourceDefinition. Creating a CRD serves its kind at once; the
//!   CRD `agents.kagent.dev` (kind `Agent`, `v1alpha2`, namespaced) exists
//!   from the start, as do the namespaces `default`, `kube-system`,
//!   `kube-public`, `consonant-system` and two Ready nodes.
//! - Verbs: list (label and field selectors, `limit`/`continue`), watch
//!   (`resourceVersion`, selectors, `timeoutSeconds`, `allowWatchBookmarks`;
//!   410 as an `ERROR` event when the version is older than the history),
//!   get, create (409 AlreadyExists; 404 in a missing namespace), replace
//!   (409 Conflict on a stale resourceVersion), patch
//!   (`application/merge-patch+json`, `application/strategic-merge-patch+json`,
//!   `application/apply-patch+yaml` with `fieldManager`, `force`), delete
//!   and deletecollection with `propagationPolicy` (dependents found by
//!   ownerReferences are deleted, or orphaned), `dryRun=All` on writes.
//! - Defaulting done by the real server where callers rely on it:
//!   `spec.replicas` = 1 on scalable workloads, Secret `stringData` moved
//!   into `data`; `status` is ignored on main-resource writes of types with
//!   a status subresource. DeleteOptions `preconditions` are checked.
//! - Subresources: `status` (GET/PUT/PATCH), `scale` (autoscaling/v1
//!   `Scale`, GET/PUT/PATCH) for Deployments, StatefulSets and ReplicaSets,
//!   `pods/{name}/log` with `container`, `tailLines`, `sinceSeconds`,
//!   `limitBytes`.
//! - A controller (`controller.rs`) that runs Pods for Deployments,
//!   StatefulSets, DaemonSets and Jobs and keeps their status up to date.
//! - Fault switches ([`Faults`], also `POST /sim/faults`) and a request log
//!   ([`SimHandle::requests`]).
//!
//! # What it does NOT emulate
//!
//! - No TLS, no authentication (any bearer token is accepted), no RBAC except
//!   the `forbid_namespace` switch, no admission (webhooks, defaulting,
//!   schema validation; CRD schemas are ignored), no quotas or limits.
//! - No protobuf, no `/openapi/v2` or `/openapi/v3`, no aggregated
//!   discovery (`Discovery::run_aggregated` fails; use `run`), no Table
//!   output, no JSON patch (`application/json-patch+json` answers 415).
//! - Server-side apply is a recursive merge (lists of items with a `name`
//!   merge by name, other lists replace); `managedFields` records the
//!   manager but there is no per-field ownership, so there are never apply
//!   conflicts, `force` changes nothing, and a field left out of a later
//!   apply is kept rather than removed. A `metadata.resourceVersion` in any
//!   patch is checked as a precondition (409 Conflict). Strategic merge knows no
//!   `$patch` directives or per-field merge keys other than `name`.
//! - Deletion is immediate: no finalizers, no `deletionTimestamp`, no
//!   graceful termination; Foreground and Background both delete dependents
//!   at once; deleting a Namespace deletes its objects at once.
//! - No scheduler, kubelet or networking: Pods are assigned to the fake
//!   nodes round-robin and turn Ready after [`SimOptions::ready_delay`].
//!   A container whose image contains `crash` (e.g. `busybox:crash`) never
//!   turns Ready: it shows `CrashLoopBackOff` with restarts (a Job's Pod
//!   fails and the Job gets a `Failed` condition) — a switch for failure
//!   paths. Pods never change state after that; no restarts happen over time.
//!   Deployments own their Pods directly (no ReplicaSets); a new pod
//!   template replaces every Pod at once (no rolling update, no
//!   maxSurge/maxUnavailable). DaemonSets get one Pod per fake node.
//!   ReplicaSets are stored but not reconciled. Logs are a few fixed lines per container; `follow` is ignored.
//! - One resourceVersion counter for all types; watch history is bounded by
//!   [`SimOptions::watch_history`]; `resourceVersionMatch` and
//!   `sendInitialEvents` are ignored.

mod api;
mod controller;
mod discovery;
mod faults;
mod http;
mod logs;
mod patch;
mod resources;
mod selector;
mod status;
mod store;
mod watch;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{FailNext, FaultRequest, Faults, RequestRecord};
pub use resources::{ResourceType, Subresource};
pub use status::ApiError;

use faults::RequestLog;
use resources::Registry;
use store::Store;

/// Settings for one simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// `gitVersion` reported by `/version`.
    pub kubernetes_version: String,
    /// How long a new Pod stays Pending before it is Running and Ready.
    pub ready_delay: Duration,
    /// Namespaces created at start (besides `default`, `kube-system`,
    /// `kube-public` and `consonant-system`).
    pub extra_namespaces: Vec<String>,
    /// Names of the fake nodes.
    pub node_names: Vec<String>,
    /// How many past events watches can resume from.
    pub watch_history: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            port: 0,
            kubernetes_version: "v1.32.3".into(),
            ready_delay: Duration::from_millis(200),
            extra_namespaces: Vec::new(),
            node_names: vec!["sim-node-1".into(), "sim-node-2".into()],
            watch_history: 10_000,
        }
    }
}

/// Errors starting the simulator or building a client for it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listener could not bind.
    #[error("could not bind the simulated API server to 127.0.0.1:{port}: {source}; pick another port or 0")]
    Bind {
        /// Requested port.
        port: u16,
        /// Cause.
        source: std::io::Error,
    },
    /// Seeding the initial objects failed (a bug).
    #[error("could not seed the simulated cluster: {0}")]
    Seed(ApiError),
    /// `kube::Client` construction failed.
    #[error("could not build a kube client for the simulated API server at {url}: {source}")]
    Client {
        /// Server url.
        url: String,
        /// Cause.
        source: kube::Error,
    },
    /// Writing the kubeconfig failed.
    #[error("could not write the simulator kubeconfig to {path}: {source}")]
    Kubeconfig {
        /// Target path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// State shared by the HTTP handlers, the watches and the controller.
pub(crate) struct SimState {
    registry: Registry,
    store: Store,
    faults: Faults,
    requests: RequestLog,
    options: SimOptions,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl SimState {
    fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The resource type stored under `key` (`group/plural`).
    fn type_for_key(&self, key: &str) -> Option<ResourceType> {
        let (group, plural) = key.split_once('/')?;
        self.registry.lookup_any_version(group, plural)
    }
}

/// Starts simulated clusters.
pub struct SimCluster;

impl SimCluster {
    /// Binds the listener, seeds namespaces, nodes and the kagent CRD, and
    /// starts serving and the controller on the current tokio runtime.
    pub async fn start(options: SimOptions) -> Result<SimHandle, SimError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
            .await
            .map_err(|source| SimError::Bind {
                port: options.port,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            port: options.port,
            source,
        })?;
        let state = Arc::new(SimState {
            registry: Registry::with_builtins(),
            store: Store::new(options.watch_history),
            faults: Faults::default(),
            requests: RequestLog::default(),
            options,
            addr,
            shutdown: CancellationToken::new(),
        });
        seed(&state).map_err(SimError::Seed)?;
        let controller = tokio::spawn(controller::run(state.clone()));
        let app = http::router(state.clone());
        let token = state.shutdown.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        tracing::debug!(%addr, "simulated Kubernetes API server listening");
        Ok(SimHandle {
            state,
            tasks: vec![server, controller],
        })
    }
}

fn seed(state: &SimState) -> Result<(), ApiError> {
    let lookup = |g: &str, p: &str| {
        state
            .registry
            .lookup_any_version(g, p)
            .expect("built-in type")
    };
    let (ns_rt, node_rt, crd_rt) = (
        lookup("", "namespaces"),
        lookup("", "nodes"),
        lookup("apiextensions.k8s.io", "customresourcedefinitions"),
    );
    let mut namespaces: Vec<String> = ["default", "kube-system", "kube-public", "consonant-system"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    namespaces.extend(state.options.extra_namespaces.iter().cloned());
    let q = api::Params::default();
    for ns in namespaces {
        let body = json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}});
        api::create(state, &ns_rt, "", body.to_string().as_bytes(), &q)?;
    }
    for (i, node) in state.options.node_names.iter().enumerate() {
        let node_obj = json!({
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64"}},
            "spec": {"podCIDR": format!("10.244.{i}.0/24")},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status", "lastHeartbeatTime": store::now_rfc3339(),
                                "lastTransitionTime": store::now_rfc3339()}],
                "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", i + 2)},
                              {"type": "Hostname", "address": node}],
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "nodeInfo": {"kubeletVersion": state.options.kubernetes_version, "kubeProxyVersion": state.options.kubernetes_version,
                             "containerRuntimeVersion": "containerd://1.7.0", "operatingSystem": "linux",
                             "architecture": "amd64", "osImage": "Simulated Linux", "kernelVersion": "6.1.0",
                             "machineID": "", "systemUUID": "", "bootID": ""},
            },
        });
        state.store.create(&node_rt, "", node_obj, false)?;
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "agents.kagent.dev"},
        "spec": {
            "group": "kagent.dev",
            "scope": "Namespaced",
            "names": {"plural": "agents", "singular": "agent", "kind": "Agent", "listKind": "AgentList"},
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                          "subresources": {"status": {}}}],
        },
    });
    api::create(state, &crd_rt, "", crd.to_string().as_bytes(), &q)?;
    Ok(())
}

/// A running simulator. Dropping it stops the server and the controller.
pub struct SimHandle {
    state: Arc<SimState>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// A `kube::Config` for this server, default namespace `default`.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("valid url"));
        config.default_namespace = "default".into();
        config
    }

    /// An unmodified `kube::Client` talking to this server.
    pub fn client(&self) -> Result<kube::Client, SimError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        kube::Client::try_from(self.config()).map_err(|source| SimError::Client {
            url: self.url(),
            source,
        })
    }

    /// A kubeconfig (context `consonant-sim`, namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: consonant-sim\n  cluster:\n    server: {url}\n\
             contexts:\n- name: consonant-sim\n  context:\n    cluster: consonant-sim\n    user: consonant-sim\n    namespace: default\n\
             current-context: consonant-sim\nusers:\n- name: consonant-sim\n  user:\n    token: sim-token\n",
            url = self.url()
        )
    }

    /// Writes [`SimHandle::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| SimError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// The fault switches (shared with `POST /sim/faults`).
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Every request in `namespace` answers 403 Forbidden.
    pub fn forbid_namespace(&self, namespace: &str) {
        self.state.faults.forbid_namespace(namespace);
    }

    /// The next `count` requests answer `code` (e.g. 503).
    pub fn fail_next(&self, count: u32, code: u16) {
        self.state.faults.fail_next(count, code);
    }

    /// Adds `latency` to every request.
    pub fn latency(&self, latency: Duration) {
        self.state.faults.latency(latency);
    }

    /// Turns every fault switch off.
    pub fn clear(&self) {
        self.state.faults.clear();
    }

    /// Recent requests (method, path, query), oldest first, up to 1000.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests.snapshot()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.requests.clear();
    }

    /// Stops serving: ends watches, stops the controller and the server.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The sample workload the demo applies and scales (and the tests use).
pub const SAMPLE_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    app.kubernetes.io/managed-by: consonant
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
        app.kubernetes.io/managed-by: consonant
    spec:
      containers:
        - name: web
          image: nginx:1.27
"#;
