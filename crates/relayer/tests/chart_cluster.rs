//! The Helm chart (`charts/consonant-relayer`) on the real API server
//! (`consonant-kube-testenv`: kube-apiserver with the RBAC authorizer and the
//! PodSecurity admission plugin, kube-controller-manager, etcd, and the
//! stand-in kubelet).
//!
//! - Every case the chart tests render (`tests/chart.rs`: the seed README's
//!   quick start and every `ci/*.yaml`) is rendered by `helm template` into a
//!   fresh namespace labelled `pod-security.kubernetes.io/enforce=restricted`
//!   and applied server-side in Helm's install order (pre-install hooks by
//!   weight, waiting for the hook Job to complete, then the release, then the
//!   `helm test` hooks). The namespaces `ci/namespaced-rbac-values.yaml`
//!   lists become fresh ones (`--set commands.allowedNamespaces`), and the
//!   ServiceMonitor CRD is a stand-in with an open schema (no Prometheus
//!   Operator here). Every object must be accepted, and every pod the
//!   controllers make from the chart's Deployments, DaemonSet and Job must
//!   pass real Pod Security admission: the pods exist and run, and no
//!   FailedCreate event is recorded. A control case (`otelCollector.hostPort`,
//!   which values.yaml says breaks "restricted") proves that a rejected pod
//!   is caught.
//! - Least privilege, for each `rbac.scope` (cluster; namespaced with
//!   `["*"]`, i.e. the release namespace; namespaced with listed
//!   namespaces, as `ci/namespaced-rbac-values.yaml`): the relayer binary
//!   runs with a TokenRequest token of the chart's own ServiceAccount and the
//!   chart's rendered `relayer.toml` (only the backend address, the mounted
//!   files' paths and the listen addresses changed), and a table of commands
//!   sent through the reference backend must each succeed, be REJECTED by
//!   the relayer's own `[commands]` policy (naming the key), or FAIL with
//!   FORBIDDEN from the real RBAC authorizer (naming the ServiceAccount).
//!   The same token is then checked directly against the API server
//!   (SelfSubjectAccessReview and plain requests), so the rendered RBAC
//!   itself is proven, not only the relayer's mapping of it; and what the
//!   relayer needs beyond commands (its leader Lease, the rotated token's
//!   write-back into its own Secret, cluster-event watches) works with it:
//!   the audit log shows no refusal of that ServiceAccount beyond the rows.
//!   With `commands.deniedKinds` emptied, RBAC alone refuses every Secret
//!   but the relayer's own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use common::{backend, eventually, eventually_async, free_addr, run_command, CLUSTER_ID, TOKEN};
use consonant_kube_testenv::ControlPlane;
use consonant_relayer::proto::{
    command, command_result::Status, error::Code, ApplyManifest, Command, CommandResult,
    DeleteResource, GetClusterInfo, GetLogs, GetResource, ListResources, ObjectRef,
    RestartWorkload, ScaleWorkload,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = "charts/consonant-relayer";
/// The release name the chart tests use (`tests/chart.rs`). Cluster-scoped
/// names are `<namespace>-<fullname>-…`, so a fresh namespace per test
/// makes them unique on the shared control plane.
const RELEASE: &str = "consonant-relayer";
const FIELD_MANAGER: &str = "helm-template-test";
const RESTRICTED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "restricted");
/// How long controllers and the stand-in kubelet get to act on what was applied.
const SETTLE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------- helm

fn repo() -> PathBuf {
    common::chart_tools::repo()
}

/// Pinned helm from `scripts/install-chart-tools`.
fn helm() -> &'static Path {
    &common::chart_tools::chart_tools().helm
}

fn set(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|pair| ["--set".to_string(), pair.to_string()])
        .collect()
}

fn values_file(name: &str) -> Vec<String> {
    vec![
        "-f".into(),
        repo()
            .join(CHART)
            .join("ci")
            .join(name)
            .display()
            .to_string(),
    ]
}

/// The seed README's quick-start `--set` line, as `tests/chart.rs` renders it.
fn quick_start() -> Vec<String> {
    set(&[
        "cluster.name=production-us-east-1",
        "backend.url=https://backend.company.com",
        "auth.bearerToken=R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB",
    ])
}

/// Every case `tests/chart.rs` renders: the quick start and each `ci/` file.
const CI_FILES: &[&str] = &[
    "seed-production-values.yaml",
    "seed-dev-values.yaml",
    "existing-secret-values.yaml",
    "namespaced-rbac-values.yaml",
    "minimal-values.yaml",
];

/// `helm template` of the chart into `namespace`, hooks and test pod
/// included, as JSON documents.
fn render(namespace: &str, args: &[String]) -> Vec<Value> {
    let out = Process::new(helm())
        .args(["template", RELEASE])
        .arg(repo().join(CHART))
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("helm output is YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().expect("metadata.name")
}

fn describe(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
        name_of(doc)
    )
}

fn hook(doc: &Value) -> &str {
    doc["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .unwrap_or_default()
}

/// Helm's install order of kinds (`releaseutil.InstallOrder`); kinds it
/// does not list go last.
fn kind_rank(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "PriorityClass",
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodSecurityPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "SecretList",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleList",
        "ClusterRoleBinding",
        "ClusterRoleBindingList",
        "Role",
        "RoleList",
        "RoleBinding",
        "RoleBindingList",
        "Service",
        "DaemonSet",
        "Pod",
        "ReplicationController",
        "ReplicaSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "Job",
        "CronJob",
        "IngressClass",
        "Ingress",
        "APIService",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

/// The release in Helm's install order: pre-install hooks (by weight, then
/// kind), the release's objects (by kind), the `helm test` hooks.
fn install_phases(docs: &[Value]) -> [Vec<&Value>; 3] {
    let by_kind = |a: &&Value, b: &&Value| {
        kind_rank(a["kind"].as_str().unwrap_or_default())
            .cmp(&kind_rank(b["kind"].as_str().unwrap_or_default()))
            .then_with(|| name_of(a).cmp(name_of(b)))
    };
    let weight = |doc: &Value| -> i64 {
        doc["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    let mut pre: Vec<&Value> = docs
        .iter()
        .filter(|d| hook(d).contains("pre-install"))
        .collect();
    pre.sort_by(|a, b| weight(a).cmp(&weight(b)).then_with(|| by_kind(a, b)));
    let mut main: Vec<&Value> = docs.iter().filter(|d| hook(d).is_empty()).collect();
    main.sort_by(by_kind);
    let mut tests: Vec<&Value> = docs
        .iter()
        .filter(|d| hook(d).split(',').any(|h| h == "test"))
        .collect();
    tests.sort_by(by_kind);
    assert_eq!(
        pre.len() + main.len() + tests.len(),
        docs.len(),
        "every rendered object is in one install phase: {:?}",
        docs.iter().map(describe).collect::<Vec<_>>()
    );
    [pre, main, tests]
}

// ---------------------------------------------------------------- applying

/// Discovery, cached per test: apiVersion/kind → resource and scope.
#[derive(Default)]
struct Discovery(BTreeMap<(String, String), (ApiResource, bool)>);

impl Discovery {
    async fn resolve(&mut self, client: &kube::Client, doc: &Value) -> (ApiResource, bool) {
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let kind = doc["kind"].as_str().expect("kind");
        let key = (api_version.to_string(), kind.to_string());
        if let Some(hit) = self.0.get(&key) {
            return hit.clone();
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|err| panic!("{api_version} {kind} is not served: {err}"));
        let resolved = (resource, caps.scope == Scope::Namespaced);
        self.0.insert(key, resolved.clone());
        resolved
    }
}

/// Server-side apply of one rendered object with the admin client; the
/// error is the API server's refusal.
async fn apply_object(
    client: &kube::Client,
    discovery: &mut Discovery,
    doc: &Value,
) -> Result<(), kube::Error> {
    let (resource, namespaced) = discovery.resolve(client, doc).await;
    let api: Api<DynamicObject> = if namespaced {
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: helm template set no namespace", describe(doc)));
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    api.patch(
        name_of(doc),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .map(|_| ())
}

/// The ServiceMonitor CRD, as the Prometheus Operator installs it (here a
/// stand-in with an open schema: the API server then checks the object's
/// envelope, not its fields). Idempotent; waits until it is served.
async fn ensure_service_monitor_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {
                "kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                "plural": "servicemonitors", "singular": "servicemonitor",
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    }))
    .expect("a CRD");
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => panic!("create the ServiceMonitor CRD: {err}"),
    }
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    let served = eventually_async(Duration::from_secs(30), || async {
        kube::discovery::pinned_kind(client, &gvk).await.is_ok()
    })
    .await;
    assert!(served, "the ServiceMonitor CRD is served within 30 s");
}

/// Applies the rendered release as `helm install` would: the pre-install
/// hooks, waiting for the hook Job(s) to complete; the release; the test
/// hooks. Panics naming every object the API server refused.
async fn install(client: &kube::Client, docs: &[Value]) {
    if docs.iter().any(|d| d["kind"] == "ServiceMonitor") {
        ensure_service_monitor_crd(client).await;
    }
    let mut discovery = Discovery::default();
    let [pre, main, tests] = install_phases(docs);
    let mut refused = Vec::new();
    for doc in &pre {
        if let Err(err) = apply_object(client, &mut discovery, doc).await {
            refused.push(format!("{} (pre-install hook): {err}", describe(doc)));
        }
    }
    assert!(
        refused.is_empty(),
        "the API server refused:\n{}",
        refused.join("\n")
    );
    for job in pre.iter().filter(|d| d["kind"] == "Job") {
        wait_job(client, job).await;
    }
    for doc in main.iter().chain(&tests) {
        if let Err(err) = apply_object(client, &mut discovery, doc).await {
            refused.push(format!("{}: {err}", describe(doc)));
        }
    }
    assert!(
        refused.is_empty(),
        "the API server refused:\n{}",
        refused.join("\n")
    );
}

/// The namespace's FailedCreate events and ReplicaSet failure conditions:
/// what a controller records when admission refuses its pod.
async fn pod_refusals(client: &kube::Client, namespace: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut refusals: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| {
            format!(
                "event FailedCreate on {} {}: {}",
                e.involved_object.kind.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    for set in sets
        .list(&ListParams::default())
        .await
        .expect("list ReplicaSets")
        .items
    {
        for condition in set
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        {
            refusals.push(format!(
                "ReplicaSet {} ReplicaFailure: {}",
                set.metadata.name.clone().unwrap_or_default(),
                condition.message.unwrap_or_default()
            ));
        }
    }
    refusals
}

async fn wait_job(client: &kube::Client, doc: &Value) {
    let namespace = doc["metadata"]["namespace"].as_str().unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let name = name_of(doc);
    let done = eventually_async(SETTLE, || async {
        jobs.get(name)
            .await
            .ok()
            .and_then(|job| job.status)
            .and_then(|status| status.succeeded)
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert!(
        done,
        "hook Job {namespace}/{name} did not complete: {:?}\n{:#?}",
        pod_refusals(client, namespace).await,
        jobs.get(name).await.ok().and_then(|job| job.status)
    );
}

/// Waits until each Deployment and DaemonSet of the release has all its
/// pods created and ready and the test pod exists, then checks that no pod
/// was refused on the way.
async fn wait_workloads(client: &kube::Client, namespace: &str, docs: &[Value]) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for doc in docs {
        let name = name_of(doc);
        let ready = match doc["kind"].as_str().unwrap_or_default() {
            "Deployment" => {
                let want = doc["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
                eventually_async(SETTLE, || async {
                    deployments
                        .get(name)
                        .await
                        .ok()
                        .and_then(|d| d.status)
                        .is_some_and(|s| s.replicas == Some(want) && s.ready_replicas == Some(want))
                })
                .await
            }
            "DaemonSet" => {
                eventually_async(SETTLE, || async {
                    daemonsets
                        .get(name)
                        .await
                        .ok()
                        .and_then(|d| d.status)
                        .is_some_and(|s| {
                            s.desired_number_scheduled >= 1
                                && s.current_number_scheduled == s.desired_number_scheduled
                                && s.number_ready == s.desired_number_scheduled
                        })
                })
                .await
            }
            "Pod" => pods.get_opt(name).await.expect("get pod").is_some(),
            _ => continue,
        };
        if !ready {
            let node = Api::<Node>::all(client.clone())
                .get(consonant_kube_testenv::NODE_NAME)
                .await
                .ok()
                .and_then(|node| node.spec);
            let status = match doc["kind"].as_str() {
                Some("Deployment") => {
                    format!("{:?}", deployments.get(name).await.map(|d| d.status))
                }
                Some("DaemonSet") => format!("{:?}", daemonsets.get(name).await.map(|d| d.status)),
                _ => String::new(),
            };
            panic!(
                "{} did not get all its pods: refusals {:?}\nstatus {status}\nNode spec {node:?}",
                describe(doc),
                pod_refusals(client, namespace).await
            );
        }
    }
    let refusals = pod_refusals(client, namespace).await;
    assert!(refusals.is_empty(), "pods were refused: {refusals:#?}");
}

/// A fresh namespace with Pod Security "restricted" enforced.
async fn restricted_namespace(plane: &ControlPlane, prefix: &str) -> String {
    plane.namespace_with_labels(prefix, &[RESTRICTED]).await
}

/// Renders `args` into a fresh restricted namespace, installs it, and checks
/// every object and pod is admitted. For `namespaced-rbac-values.yaml`, the
/// namespaces it lists (team-a, team-b) become fresh ones too.
async fn installs_under_restricted(args: Vec<String>) {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = restricted_namespace(plane, "chart").await;
    let mut args = args;
    if args
        .iter()
        .any(|a| a.ends_with("namespaced-rbac-values.yaml"))
    {
        let a = restricted_namespace(plane, "team-a").await;
        let b = restricted_namespace(plane, "team-b").await;
        args.extend(set(&[&format!("commands.allowedNamespaces={{{a},{b}}}")]));
    }
    let docs = render(&namespace, &args);
    install(&client, &docs).await;
    wait_workloads(&client, &namespace, &docs).await;
    // Every rendered Deployment, DaemonSet, Job and Pod has a pod here.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pods.list(&ListParams::default()).await.unwrap().items;
    for kind in ["Deployment", "DaemonSet", "Job", "Pod"] {
        for doc in docs.iter().filter(|d| d["kind"] == kind) {
            let component = &doc["metadata"]["labels"]["app.kubernetes.io/component"];
            let made = listed.iter().any(|pod| {
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/component"))
                    .is_some_and(|c| component == c.as_str())
            });
            assert!(made, "no pod of {}", describe(doc));
        }
    }
}

#[test]
fn every_case_of_the_chart_tests_is_installed() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo().join(CHART).join("ci"))
        .expect("read ci/")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = CI_FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        listed, on_disk,
        "every ci/*.yaml needs an install test here"
    );
}

#[tokio::test]
async fn seed_quick_start_installs_under_pod_security_restricted() {
    installs_under_restricted(quick_start()).await;
}

#[tokio::test]
async fn seed_production_values_install_under_pod_security_restricted() {
    installs_under_restricted(values_file(CI_FILES[0])).await;
}

#[tokio::test]
async fn seed_dev_values_install_under_pod_security_restricted() {
    installs_under_restricted(values_file(CI_FILES[1])).await;
}

#[tokio::test]
async fn existing_secret_values_install_under_pod_security_restricted() {
    installs_under_restricted(values_file(CI_FILES[2])).await;
}

#[tokio::test]
async fn namespaced_rbac_values_install_under_pod_security_restricted() {
    installs_under_restricted(values_file(CI_FILES[3])).await;
}

#[tokio::test]
async fn minimal_values_install_under_pod_security_restricted() {
    installs_under_restricted(values_file(CI_FILES[4])).await;
}

/// The control: `otelCollector.hostPort=true` (values.yaml: "Breaks Pod
/// Security baseline and restricted") is applied like any other case, and
/// the refusal of the collector's pods is seen — so the install tests'
/// "no pod refused" is a real check.
#[tokio::test]
async fn a_pod_template_that_breaks_restricted_is_caught() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = restricted_namespace(plane, "hostport").await;
    let mut args = quick_start();
    args.extend(set(&["otelCollector.hostPort=true"]));
    let docs = render(&namespace, &args);
    install(&client, &docs).await;
    let otel = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .map(name_of)
        .expect("the collector DaemonSet");
    let deadline = std::time::Instant::now() + SETTLE;
    let caught = |refusals: &[String]| {
        refusals
            .iter()
            .any(|r| r.contains(otel) && r.contains("PodSecurity") && r.contains("hostPort"))
    };
    let mut seen = pod_refusals(&client, &namespace).await;
    while !caught(&seen) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = pod_refusals(&client, &namespace).await;
    }
    assert!(
        caught(&seen),
        "the DaemonSet's pods are refused by PodSecurity: {seen:#?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let collector_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=otel-collector"))
        .await
        .unwrap()
        .items;
    assert!(collector_pods.is_empty(), "{collector_pods:?}");
}

// ---------------------------------------------------------------- least privilege

/// The chart's `rbac.scope` variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RbacScope {
    /// `rbac.scope=cluster`: ClusterRole(Binding)s.
    Cluster,
    /// The default (`rbac.scope=namespaced` with `allowedNamespaces:
    /// ["*"]`): a Role in the release namespace.
    NamespacedRelease,
    /// `ci/namespaced-rbac-values.yaml`: Roles in two listed namespaces, no
    /// delete, no cluster_info, no cluster-wide watch.
    NamespacedListed,
}

/// What a row must come back as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Succeeds,
    /// REJECTED FORBIDDEN by the relayer's `[commands]` policy, naming this key.
    Rejected(&'static str),
    /// FAILED FORBIDDEN from the API server's RBAC authorizer, naming the
    /// ServiceAccount.
    RbacForbidden,
}

use Expect::{RbacForbidden as Rbac, Rejected, Succeeds as Ok_};

const ALLOWED_NAMESPACES: Expect = Rejected("allowed_namespaces");
const ALLOWED_ACTIONS: Expect = Rejected("allowed_actions");
const DENIED_KINDS: Expect = Rejected("denied_kinds");

/// Pick the expectation for `scope` from (cluster, namespaced release,
/// namespaced listed).
fn per_scope<T>(scope: RbacScope, [cluster, release, listed]: [T; 3]) -> T {
    match scope {
        RbacScope::Cluster => cluster,
        RbacScope::NamespacedRelease => release,
        RbacScope::NamespacedListed => listed,
    }
}

/// A Deployment that passes Pod Security "restricted", labelled so the
/// relayer's cluster-event watches see it.
fn deployment(name: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
    app.kubernetes.io/managed-by: consonant
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
        app.kubernetes.io/managed-by: consonant
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: web
          image: nginx:1.27
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
"#
    )
}

fn cmd(action: command::Action) -> Command {
    Command {
        command_id: uuid::Uuid::new_v4().to_string(),
        action: Some(action),
        ..Default::default()
    }
}

fn object(api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        uid: String::new(),
    })
}

fn get(api_version: &str, kind: &str, namespace: &str, name: &str) -> Command {
    cmd(command::Action::Get(GetResource {
        target: object(api_version, kind, namespace, name),
    }))
}

fn list(api_version: &str, kind: &str, namespace: &str) -> Command {
    cmd(command::Action::List(ListResources {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        label_selector: String::new(),
        limit: 50,
    }))
}

fn apply(namespace: &str, manifest: &str) -> Command {
    cmd(command::Action::Apply(ApplyManifest {
        manifest: manifest.as_bytes().to_vec().into(),
        namespace: namespace.into(),
        ..Default::default()
    }))
}

fn scale(namespace: &str, name: &str, replicas: i32) -> Command {
    cmd(command::Action::Scale(ScaleWorkload {
        target: object("apps/v1", "Deployment", namespace, name),
        replicas,
    }))
}

fn restart(namespace: &str, name: &str) -> Command {
    cmd(command::Action::Restart(RestartWorkload {
        target: object("apps/v1", "Deployment", namespace, name),
    }))
}

fn delete(namespace: &str, name: &str) -> Command {
    cmd(command::Action::Delete(DeleteResource {
        target: object("apps/v1", "Deployment", namespace, name),
        propagation: "Background".into(),
    }))
}

fn logs(namespace: &str, pod: &str) -> Command {
    cmd(command::Action::Logs(GetLogs {
        namespace: namespace.into(),
        pod: pod.into(),
        tail_lines: 2,
        ..Default::default()
    }))
}

fn cluster_info() -> Command {
    cmd(command::Action::ClusterInfo(GetClusterInfo {}))
}

/// Who the API server says was refused.
fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// `None` when `result` is what `expect` says, else why not.
fn mismatch(result: &CommandResult, expect: Expect, user: &str) -> Option<String> {
    let status = Status::try_from(result.status).ok();
    let error = result.error.as_ref();
    let code = error.and_then(|e| Code::try_from(e.code).ok());
    let message = error.map(|e| e.message.as_str()).unwrap_or_default();
    let ok = match expect {
        Expect::Succeeds => status == Some(Status::Succeeded),
        Expect::Rejected(key) => {
            status == Some(Status::Rejected)
                && code == Some(Code::Forbidden)
                && message.contains(&format!("commands.{key}"))
        }
        Expect::RbacForbidden => {
            status == Some(Status::Failed)
                && code == Some(Code::Forbidden)
                && message.contains("RBAC")
                && message.contains(user)
        }
    };
    (!ok).then(|| format!("got {status:?} {code:?}: {message}"))
}

/// The relayer binary with the chart's rendered `relayer.toml`, run as the
/// chart's ServiceAccount (its token's kubeconfig standing in for the
/// in-cluster mount).
struct ChartRelayer {
    child: Child,
    dir: tempfile::TempDir,
}

impl ChartRelayer {
    fn start(
        toml: &str,
        backend: &consonant_dev_backend::DevBackendHandle,
        kubeconfig: &Path,
        namespace: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The Deployment mounts the credentials Secret's keys here.
        let credentials = dir.path().join("credentials");
        std::fs::create_dir_all(&credentials).unwrap();
        std::fs::write(credentials.join("clusterId"), CLUSTER_ID).unwrap();
        std::fs::write(credentials.join("clusterToken"), TOKEN).unwrap();
        let config = toml.replace(
            "/var/run/secrets/consonant/",
            &format!("{}/", credentials.display()),
        );
        assert_ne!(config, toml, "the rendered config names the mounted files");
        let config_path = dir.path().join("relayer.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let mut process = Process::new(env!("CARGO_BIN_EXE_consonant-relayer"));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CONSONANT_RELAYER__") || key.starts_with("KUBERNETES_SERVICE") {
                process.env_remove(key);
            }
        }
        process
            // The args of the chart's Deployment, with the config's path.
            .args(["run", "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", "consonant-relayer-test-0")
            // The reference backend on loopback instead of backend.url.
            .env("CONSONANT_RELAYER__BACKEND__URL", backend.http_url())
            .env(
                "CONSONANT_RELAYER__BACKEND__GRPC_ENDPOINT",
                backend.grpc_url(),
            )
            .env("CONSONANT_RELAYER__BACKEND__TLS_VERIFY", "false")
            // Loopback ports instead of the pod's 0.0.0.0:8080/4317/4318.
            .env("CONSONANT_RELAYER__HEALTH__LISTEN", free_addr().to_string())
            .env(
                "CONSONANT_RELAYER__TELEMETRY__OTLP_GRPC_LISTEN",
                "127.0.0.1:0",
            )
            .env(
                "CONSONANT_RELAYER__TELEMETRY__OTLP_HTTP_LISTEN",
                "127.0.0.1:0",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = process.spawn().expect("spawn the relayer binary");
        Self { child, dir }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }
}

impl Drop for ChartRelayer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Running pod (Pod Security "restricted") to read logs from.
async fn probe_pod(client: &kube::Client, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "app", "image": "nginx:1.27",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|err| panic!("create pod {namespace}/probe: {err}"));
    let running = eventually_async(Duration::from_secs(30), || async {
        pods.get("probe")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .is_some_and(|phase| phase == "Running")
    })
    .await;
    assert!(running, "the stand-in kubelet runs {namespace}/probe");
    "probe".into()
}

async fn create_secret(client: &kube::Client, namespace: &str, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "credentials"}},
        "stringData": data,
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|err| panic!("create Secret {namespace}/{name}: {err}"));
}

async fn create_deployment(client: &kube::Client, namespace: &str, name: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let object: Deployment = serde_yaml_ng::from_str(&deployment(name)).unwrap();
    deployments
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("create Deployment {namespace}/{name}: {err}"));
}

/// SelfSubjectAccessReview: may the token's user do this?
async fn can(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "subresource": subresource,
            "namespace": namespace, "name": name,
        }}
    }))
    .unwrap();
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SelfSubjectAccessReview")
        .status
        .expect("a review status")
        .allowed
}

/// The 403 of a plain request, checked to come from RBAC and name `user`.
fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, user: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => assert!(
            status.message.contains(user) && status.message.contains("cannot"),
            "{what}: {}",
            status.message
        ),
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// One least-privilege setup: the chart installed with `scope` (plus
/// `extra` helm arguments) into a fresh restricted namespace, the objects
/// the rows act on, and the relayer running as the chart's ServiceAccount
/// with the rendered config, connected to the reference backend.
struct Setup {
    admin: kube::Client,
    /// The release namespace.
    own: String,
    /// A namespace outside the release (the chart grants workload rights
    /// there with rbac.scope=cluster only).
    other: String,
    /// Where the relayer's commands may act (the release namespace, or the
    /// first listed one), and the last allowed namespace.
    work: String,
    second: String,
    secret_name: String,
    /// `system:serviceaccount:<own>:<the chart's ServiceAccount>`.
    user: String,
    kubeconfig: PathBuf,
    probe: String,
    backend: consonant_dev_backend::DevBackendHandle,
    relayer: ChartRelayer,
    _dir: tempfile::TempDir,
}

async fn setup(scope: RbacScope, extra: &[String]) -> Setup {
    let plane = ControlPlane::shared();
    let admin = plane.client().await;
    let own = restricted_namespace(plane, "rbac").await;
    let other = plane.namespace("other").await;
    let (mut args, work, second) = match scope {
        RbacScope::Cluster => {
            let mut args = quick_start();
            args.extend(set(&["rbac.scope=cluster"]));
            (args, own.clone(), own.clone())
        }
        // The chart's defaults, as the quick start installs them.
        RbacScope::NamespacedRelease => (quick_start(), own.clone(), own.clone()),
        RbacScope::NamespacedListed => {
            let a = restricted_namespace(plane, "team-a").await;
            let b = restricted_namespace(plane, "team-b").await;
            let mut args = values_file("namespaced-rbac-values.yaml");
            args.extend(set(&[&format!("commands.allowedNamespaces={{{a},{b}}}")]));
            (args, a, b)
        }
    };
    args.extend(extra.iter().cloned());
    let docs = render(&own, &args);
    let toml = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && name_of(d) == RELEASE)
        .and_then(|d| d["data"]["relayer.toml"].as_str())
        .expect("the relayer ConfigMap's relayer.toml")
        .to_string();
    let config: toml::Value = toml::from_str(&toml).expect("the rendered config is TOML");
    let secret_name = config["credentials"]["secret_name"]
        .as_str()
        .expect("credentials.secret_name")
        .to_string();
    let account = docs
        .iter()
        .find(|d| {
            d["kind"] == "ServiceAccount"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "relayer"
        })
        .map(name_of)
        .expect("the relayer's ServiceAccount")
        .to_string();
    // The rows below assume this rendering of the policy.
    let allowed_namespaces: Vec<&str> = config["commands"]["allowed_namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected_namespaces = per_scope(
        scope,
        [
            vec!["*"],
            vec![own.as_str()],
            vec![work.as_str(), second.as_str()],
        ],
    );
    assert_eq!(allowed_namespaces, expected_namespaces, "{toml}");

    install(&admin, &docs).await;
    // The registration hook's result (the stand-in kubelet runs no
    // container): the credentials Secret the relayer may read and patch.
    create_secret(
        &admin,
        &own,
        &secret_name,
        json!({"clusterId": CLUSTER_ID, "clusterToken": TOKEN}),
    )
    .await;
    create_secret(&admin, &own, "unrelated", json!({"password": "hunter2"})).await;
    create_secret(&admin, &other, "elsewhere", json!({"password": "hunter2"})).await;
    create_deployment(&admin, &other, "theirs").await;
    create_deployment(&admin, &work, "watched").await;
    let probe = probe_pod(&admin, &work).await;

    // A token of the chart's own ServiceAccount (it exists: TokenRequest
    // creates none).
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &own);
    assert!(
        accounts.get_opt(&account).await.unwrap().is_some(),
        "the chart created ServiceAccount {own}/{account}"
    );
    let token = plane.service_account_token(&own, &account).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    plane.write_kubeconfig_for_token(&token, &own, &kubeconfig);
    let user = service_account_user(&own, &account);

    let backend = backend().await;
    let relayer = ChartRelayer::start(&toml, &backend, &kubeconfig, &own);
    let connected = eventually(Duration::from_secs(30), || {
        backend
            .state()
            .list_clusters()
            .iter()
            .any(|c| c.cluster_id == CLUSTER_ID && c.connected)
    })
    .await;
    assert!(
        connected,
        "the relayer connects with the chart's config:\n{}",
        relayer.output()
    );
    Setup {
        admin,
        own,
        other,
        work,
        second,
        secret_name,
        user,
        kubeconfig,
        probe,
        backend,
        relayer,
        _dir: dir,
    }
}

/// Runs each row through the backend; panics listing every row that did
/// not come back as expected.
async fn check_rows(env: &Setup, what: &str, rows: Vec<(&str, Command, Expect)>) {
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (row, command, expect) in rows {
        let result = run_command(&env.backend, command).await;
        let line = format!("{row}: expect {expect:?}");
        if let Some(why) = mismatch(&result, expect, &env.user) {
            failures.push(format!("{line}, {why}"));
        }
        table.push(line);
    }
    assert!(
        failures.is_empty(),
        "{what}: rows that did not hold:\n{}\n\nall rows:\n{}\n--- relayer output ---\n{}",
        failures.join("\n"),
        table.join("\n"),
        env.relayer.output()
    );
}

/// Installs the chart with `scope`, runs the relayer as the chart's
/// ServiceAccount with the rendered config, and checks the table.
async fn least_privilege(scope: RbacScope) {
    let env = setup(scope, &[]).await;
    let Setup {
        admin,
        own,
        other,
        work,
        second,
        secret_name,
        user,
        kubeconfig,
        probe,
        backend,
        relayer,
        ..
    } = &env;
    let (own, other, work, second) = (own.as_str(), other.as_str(), work.as_str(), second.as_str());
    let secret_name = secret_name.as_str();
    let user = user.as_str();
    let web = deployment("web");
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: sneaky\nrules: []\n";
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: planted\nstringData:\n  a: b\n";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: planted\nspec:\n  serviceAccountName: default\n  containers:\n    - name: app\n      image: nginx:1.27\n";
    let account = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: planted\n";
    let namespace =
        |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    let escape = format!("escape-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let s = |expect: [Expect; 3]| per_scope(scope, expect);
    #[rustfmt::skip]
    let rows: Vec<(&str, Command, Expect)> = vec![
        // Its own workloads, where the policy and the rendered Role(s) put it.
        ("apply a Deployment where it works", apply(work, &web), Ok_),
        ("get that Deployment", get("apps/v1", "Deployment", work, "web"), Ok_),
        ("list Deployments where it works", list("apps/v1", "Deployment", work), Ok_),
        ("scale that Deployment", scale(work, "web", 2), Ok_),
        ("restart that Deployment", restart(work, "web"), Ok_),
        ("read a pod's logs where it works", logs(work, probe), Ok_),
        ("list ConfigMaps in the last allowed namespace", list("v1", "ConfigMap", second), Ok_),
        ("get the chart's ConfigMap in the release namespace",
            get("v1", "ConfigMap", own, RELEASE), s([Ok_, Ok_, ALLOWED_NAMESPACES])),
        ("cluster_info (counts Nodes and Namespaces)", cluster_info(), s([Ok_, Ok_, ALLOWED_ACTIONS])),
        // Another namespace: the cluster scope's ClusterRole grants it.
        ("get a Deployment in another namespace",
            get("apps/v1", "Deployment", other, "theirs"), s([Ok_, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        ("apply a Deployment in another namespace",
            apply(other, &deployment("planted")), s([Ok_, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        ("list Pods in all namespaces", list("v1", "Pod", ""), s([Ok_, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        // Secrets: refused by policy before Kubernetes, its own included.
        ("get its own credentials Secret", get("v1", "Secret", own, secret_name), DENIED_KINDS),
        ("get another Secret in the release namespace", get("v1", "Secret", own, "unrelated"), DENIED_KINDS),
        ("list Secrets in the release namespace", list("v1", "Secret", own), DENIED_KINDS),
        ("get a Secret in another namespace", get("v1", "Secret", other, "elsewhere"), DENIED_KINDS),
        ("apply a Secret where it works", apply(work, secret), DENIED_KINDS),
        // Kinds outside rbac.resources, where the policy lets them through:
        // a Pod or ServiceAccount could run as (or be) any identity of the
        // namespace, so they are not writable by default.
        ("apply a Pod where it works", apply(work, pod), Rbac),
        ("apply a ServiceAccount where it works", apply(work, account), Rbac),
        ("get a Pod where it works", get("v1", "Pod", work, probe), Ok_),
        ("apply a Role where it works", apply(work, role), Rbac),
        ("list Leases where it works", list("coordination.k8s.io/v1", "Lease", work), Rbac),
        // Cluster-scoped kinds.
        ("get a Node", get("v1", "Node", "", consonant_kube_testenv::NODE_NAME),
            s([Rbac, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        ("list Nodes (cluster_info's grant)", list("v1", "Node", ""),
            s([Ok_, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        ("list ClusterRoles", list("rbac.authorization.k8s.io/v1", "ClusterRole", ""),
            s([Rbac, ALLOWED_NAMESPACES, DENIED_KINDS])),
        ("apply a Namespace", apply("", &namespace(&escape)), s([Rbac, ALLOWED_NAMESPACES, ALLOWED_NAMESPACES])),
        // Deletes last.
        ("delete a Deployment in another namespace", delete(other, "theirs"),
            s([Ok_, ALLOWED_NAMESPACES, ALLOWED_ACTIONS])),
        ("delete the Deployment where it works", delete(work, "web"), s([Ok_, Ok_, ALLOWED_ACTIONS])),
    ];
    check_rows(&env, &format!("{scope:?}"), rows).await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    assert!(namespaces.get_opt(&escape).await.unwrap().is_none());

    // The same token straight against the API server: RBAC itself.
    let client = consonant_kube_testenv::client_for(kubeconfig).await;
    let lease = format!("{secret_name}-leader");
    #[rustfmt::skip]
    let reviews: Vec<(&str, &str, &str, &str, &str, bool)> = vec![
        ("get", "", "secrets", own, secret_name, true),
        ("patch", "", "secrets", own, secret_name, true),
        ("update", "", "secrets", own, secret_name, false),
        ("delete", "", "secrets", own, secret_name, false),
        ("get", "", "secrets", own, "unrelated", false),
        ("list", "", "secrets", own, "", false),
        ("watch", "", "secrets", own, "", false),
        ("create", "", "secrets", own, "", false),
        ("get", "", "secrets", other, "elsewhere", false),
        ("get", "", "secrets", other, secret_name, false),
        ("list", "", "secrets", "", "", false),
        ("get", "coordination.k8s.io", "leases", own, &lease, true),
        ("update", "coordination.k8s.io", "leases", own, &lease, true),
        ("get", "coordination.k8s.io", "leases", own, "someone-elses", false),
        ("delete", "coordination.k8s.io", "leases", own, &lease, false),
        ("get", "apps", "deployments", work, "web", true),
        ("patch", "apps", "deployments", work, "web", true),
        ("patch", "apps", "deployments/scale", work, "web", true),
        ("get", "", "pods/log", work, "probe", true),
        ("create", "", "pods/exec", work, "probe", false),
        // No Pods or ServiceAccounts are writable (rbac.podsAndServiceAccounts
        // is off): a Pod may run as any ServiceAccount of its namespace and
        // mount its Secrets. Pods stay readable.
        ("create", "", "pods", work, "", false),
        ("patch", "", "pods", work, "probe", false),
        ("create", "", "pods", "kube-system", "", false),
        ("get", "", "pods", work, "probe", true),
        ("create", "", "serviceaccounts", work, "", false),
        ("patch", "", "serviceaccounts", work, "default", false),
        // Workloads reach kube-system only with rbac.scope=cluster.
        ("create", "apps", "deployments", "kube-system", "", per_scope(scope, [true, false, false])),
        ("create", "", "serviceaccounts/token", work, "default", false),
        ("delete", "apps", "deployments", work, "web", per_scope(scope, [true, true, false])),
        ("get", "apps", "deployments", other, "theirs", per_scope(scope, [true, false, false])),
        ("patch", "apps", "deployments", other, "theirs", per_scope(scope, [true, false, false])),
        // Cluster events: cluster-wide list/watch unless clusterWideWatch=false.
        ("list", "apps", "deployments", other, "", per_scope(scope, [true, true, false])),
        ("watch", "", "pods", "", "", per_scope(scope, [true, true, false])),
        ("get", "", "configmaps", own, RELEASE, per_scope(scope, [true, true, false])),
        ("create", "rbac.authorization.k8s.io", "roles", work, "", false),
        ("create", "rbac.authorization.k8s.io", "rolebindings", work, "", false),
        ("list", "rbac.authorization.k8s.io", "clusterroles", "", "", false),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", false),
        ("get", "", "nodes", "", consonant_kube_testenv::NODE_NAME, false),
        ("list", "", "nodes", "", "", per_scope(scope, [true, true, false])),
        ("create", "", "namespaces", "", "", false),
        ("delete", "", "namespaces", "", other, false),
    ];
    let mut wrong = Vec::new();
    for (verb, group, resource, namespace, name, allowed) in &reviews {
        let got = can(&client, verb, group, resource, namespace, name).await;
        if got != *allowed {
            wrong.push(format!(
                "{verb} {group}/{resource} {namespace}/{name}: allowed {got}, expected {allowed}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{scope:?}: SelfSubjectAccessReview as {user}:\n{}",
        wrong.join("\n")
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), own);
    let mine = secrets.get(secret_name).await.expect("get its own Secret");
    assert_eq!(
        mine.data.unwrap()["clusterId"].0,
        CLUSTER_ID.as_bytes(),
        "its own Secret is readable"
    );
    secrets
        .patch(
            secret_name,
            &PatchParams::default(),
            &Patch::Merge(json!({})),
        )
        .await
        .expect("patch its own Secret");
    assert_forbidden("get another Secret", secrets.get("unrelated").await, user);
    assert_forbidden(
        "list Secrets",
        secrets.list(&ListParams::default()).await,
        user,
    );
    assert_forbidden(
        "get a Node",
        Api::<Node>::all(client.clone())
            .get(consonant_kube_testenv::NODE_NAME)
            .await,
        user,
    );
    assert_forbidden(
        "list ClusterRoles",
        Api::<ClusterRole>::all(client.clone())
            .list(&ListParams::default())
            .await,
        user,
    );
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": escape}})).unwrap();
    assert_forbidden(
        "create a Namespace",
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await,
        user,
    );

    // What the relayer needs beyond commands works with the chart's RBAC:
    // its leader Lease,
    let leases: Api<Lease> = Api::namespaced(admin.clone(), own);
    let leading = eventually_async(Duration::from_secs(30), || async {
        let holder = leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        let reported =
            backend.state().list_clusters().iter().any(|c| {
                c.cluster_id == CLUSTER_ID && c.sessions.iter().any(|session| session.leader)
            });
        holder.is_some_and(|h| h.starts_with("consonant-relayer-test-0")) && reported
    })
    .await;
    assert!(
        leading,
        "{scope:?}: the relayer holds Lease {own}/{lease}:\n{}",
        relayer.output()
    );
    // the rotated token written back into its own Secret,
    let (rotated, told) = backend.state().rotate(CLUSTER_ID).expect("rotate");
    assert_eq!(told, 1);
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), own);
    let written = eventually_async(Duration::from_secs(30), || async {
        admin_secrets
            .get(secret_name)
            .await
            .ok()
            .and_then(|s| s.data)
            .and_then(|d| d.get("clusterToken").cloned())
            .is_some_and(|t| t.0 == rotated.expose().as_bytes())
    })
    .await;
    assert!(
        written,
        "{scope:?}: the relayer patches the rotated token into {own}/{secret_name}:\n{}",
        relayer.output()
    );
    // and, where the chart grants the cluster-wide watches, cluster events.
    if scope != RbacScope::NamespacedListed {
        let reported = eventually(Duration::from_secs(30), || {
            backend
                .state()
                .events(CLUSTER_ID, 1000)
                .unwrap()
                .iter()
                .any(|e| {
                    e.kind == "workload.status"
                        && e.object
                            .as_ref()
                            .is_some_and(|o| o.name == "watched" && o.namespace == work)
                        && serde_json::from_slice::<Value>(&e.payload_json)
                            .is_ok_and(|p| p["ready"] == true)
                })
        })
        .await;
        assert!(
            reported,
            "{scope:?}: the leader reports {work}/watched ready:\n{}",
            relayer.output()
        );
    }

    // The API server's audit log: every request of this ServiceAccount it
    // refused was one the rows above asked for on purpose — the relayer's
    // own work (discovery, Lease, Secret write-back, watches) met no 403.
    // Only with rbac.clusterWideWatch=false do the leader's cluster-wide
    // watches fail, as values.yaml says ("no cluster events are reported").
    let mut expected: BTreeSet<&str> = [
        "patch pods",
        "patch serviceaccounts",
        "patch roles",
        "list leases",
        "get secrets",
        "list secrets",
        "get nodes",
        "list clusterroles",
        "create namespaces",
    ]
    .into();
    if scope == RbacScope::Cluster {
        expected.insert("patch namespaces");
    }
    if scope == RbacScope::NamespacedListed {
        expected.extend([
            "list deployments",
            "list statefulsets",
            "list jobs",
            "list pods",
        ]);
    }
    let refused = refused_requests(user);
    assert!(
        refused.is_subset(&expected.iter().map(|r| r.to_string()).collect()),
        "{scope:?}: the API server refused {user} more than the rows asked for: {refused:?}"
    );
}

/// `"<verb> <resource>"` of every request by `user` the API server refused
/// (403) so far, from its audit log.
fn refused_requests(user: &str) -> BTreeSet<String> {
    ControlPlane::shared()
        .audit_events()
        .iter()
        .filter(|event| event["user"]["username"] == user)
        .filter(|event| event["responseStatus"]["code"] == 403)
        .map(|event| {
            format!(
                "{} {}",
                event["verb"].as_str().unwrap_or_default(),
                event["objectRef"]["resource"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// With `commands.deniedKinds` emptied, the relayer's policy lets Secret
/// commands through: the rendered RBAC is then what refuses every Secret
/// but the relayer's own (which it may read, and patch only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_denied_kinds_rbac_still_refuses_other_secrets() {
    let env = setup(
        RbacScope::Cluster,
        &[
            "--set-json".to_string(),
            "commands.deniedKinds=[]".to_string(),
        ],
    )
    .await;
    let (own, other) = (env.own.as_str(), env.other.as_str());
    let own_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n  labels:\n    touched: \"yes\"\n",
        env.secret_name
    );
    let planted = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: planted\nstringData:\n  a: b\n";
    #[rustfmt::skip]
    let rows: Vec<(&str, Command, Expect)> = vec![
        ("get its own credentials Secret", get("v1", "Secret", own, &env.secret_name), Ok_),
        ("get another Secret in the release namespace", get("v1", "Secret", own, "unrelated"), Rbac),
        ("list Secrets in the release namespace", list("v1", "Secret", own), Rbac),
        ("list Secrets in all namespaces", list("v1", "Secret", ""), Rbac),
        ("get a Secret in another namespace", get("v1", "Secret", other, "elsewhere"), Rbac),
        // Server-side apply is a patch, which the Role grants on that name.
        ("apply its own credentials Secret", apply(own, &own_secret), Ok_),
        ("apply a new Secret", apply(own, planted), Rbac),
        ("delete its own credentials Secret",
            cmd(command::Action::Delete(DeleteResource {
                target: object("v1", "Secret", own, &env.secret_name),
                propagation: String::new(),
            })), Rbac),
    ];
    check_rows(&env, "Cluster without denied_kinds", rows).await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), own);
    let mine = secrets.get(&env.secret_name).await.unwrap();
    assert_eq!(
        mine.data.unwrap()["clusterToken"].0,
        TOKEN.as_bytes(),
        "the apply left the token alone"
    );
    assert!(secrets.get_opt("planted").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_with_rbac_scope_cluster() {
    least_privilege(RbacScope::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_with_rbac_scope_namespaced_release_namespace() {
    least_privilege(RbacScope::NamespacedRelease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_with_rbac_scope_namespaced_listed_namespaces() {
    least_privilege(RbacScope::NamespacedListed).await;
}
