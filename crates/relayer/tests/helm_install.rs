//! `helm install` played through on the real control plane: the seed's
//! quick-start install (with the backend pointed at the reference backend
//! on loopback), pinned helm against the real kube-apiserver. The stand-in
//! kubelet runs every pod of the relayer image as a process of the release
//! binary (what the image ships; built here by `cargo build --release -p
//! consonant-relayer` into `target/helm-install/`, cached after the first
//! run) in its own network and mount namespace — args, env, ConfigMap and
//! Secret volumes and the projected ServiceAccount token materialised — so
//! the pre-install hook Job really registers, helm waits for it, the
//! credentials Secret appears, three replicas connect and one holds the
//! Lease; `helm upgrade` re-runs the hook as a no-op; `helm uninstall` leaves
//! the credentials Secret. Pods of other images (the collector) are only
//! marked running.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use consonant_dev_backend::{self as devbackend, DevBackendOptions};
use consonant_kube_testenv::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};

const BOOTSTRAP: &str = "R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB";
const RELEASE: &str = "consonant-relayer";
const IMAGE: &str = "ghcr.io/consonant/consonant-relayer";

fn repo() -> PathBuf {
    common::chart_tools::repo()
}

/// The production binary as the image builds it: the `production` profile
/// (release plus fat LTO), no test-only features. Built once into its own target directory (so this
/// test never waits on the build lock of the `cargo test` running it).
fn production_binary() -> PathBuf {
    let target = repo().join("target/helm-install");
    eprintln!(
        "building the production relayer for the helm test into {} (minutes the first time)",
        target.display()
    );
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--profile",
            "production",
            "--locked",
            "-p",
            "consonant-relayer",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(repo())
        .output()
        .expect("run cargo build --profile production");
    assert!(
        out.status.success(),
        "cargo build --profile production -p consonant-relayer failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("production/consonant-relayer")
}

fn helm_binary() -> PathBuf {
    common::chart_tools::chart_tools().helm.clone()
}

/// Every pod of `namespace` with its phase, message and logs: what a
/// failure shows.
async fn pods_report(plane: &ControlPlane, namespace: &str) -> String {
    let pods: kube::Api<Pod> = kube::Api::namespaced(plane.client().await, namespace);
    let mut report = String::new();
    for pod in pods
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let logs = pods
            .logs(&name, &Default::default())
            .await
            .unwrap_or_else(|err| format!("(no logs: {err})"));
        report.push_str(&format!(
            "--- pod {name}: {:?} {:?}\n{logs}\n",
            status.phase, status.message
        ));
    }
    report
}

/// Runs helm against the control plane; panics with its output and the
/// namespace's pods on failure.
async fn helm(plane: &ControlPlane, namespace: &str, args: &[String]) -> String {
    let helm = helm_binary();
    let kubeconfig = plane.kubeconfig.clone();
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(helm)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("HELM_CACHE_HOME", std::env::temp_dir().join("helm-cache"))
            .env("HELM_CONFIG_HOME", std::env::temp_dir().join("helm-config"))
            .env("HELM_DATA_HOME", std::env::temp_dir().join("helm-data"))
            .output()
            .expect("run helm")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        panic!(
            "helm failed ({}):\n{text}\n{}\n(hook pods are deleted by their hook policy: run with KUBE_TESTENV_KEEP_LOGS=DIR to keep every process pod's output)",
            out.status,
            pods_report(plane, namespace).await
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_on_the_real_api_server() {
    let plane = ControlPlane::shared();
    let binary = tokio::task::spawn_blocking(production_binary)
        .await
        .unwrap();
    plane.run_image_as(IMAGE, &binary);
    let backend = devbackend::start(DevBackendOptions {
        grpc_listen: free_addr(),
        http_listen: free_addr(),
        bootstrap_tokens: vec![consonant_relayer::credentials::Secret::new(BOOTSTRAP)],
        ..Default::default()
    })
    .await
    .unwrap();
    // Inside the pods the backend is on 127.0.0.1 at the same ports.
    let grpc_port = backend
        .grpc_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let http_port = backend
        .http_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    plane.expose_to_pods(grpc_port);
    plane.expose_to_pods(http_port);
    let namespace = format!(
        "consonant-system-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );

    // The API server's EndpointSlice, which this control plane (no endpoint
    // reconciler) does not write itself: the chart looks it up at install
    // time to give its NetworkPolicies' API-server rule a destination.
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(plane.client().await, "default");
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            // A documentation address (loopback is refused); nothing dials it:
        // without a CNI the policy is not enforced here.
        "endpoints": [{"addresses": ["192.0.2.10"]}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }))
        .unwrap();
    slices
        .create(&kube::api::PostParams::default(), &slice)
        .await
        .expect("create the kubernetes EndpointSlice");

    // The seed's quick-start line, with the backend on loopback (plain
    // HTTP, so tlsVerify=false as the schema demands) and three replicas.
    let install: Vec<String> = [
        "install",
        RELEASE,
        &repo()
            .join("charts/consonant-relayer")
            .display()
            .to_string(),
        "--create-namespace",
        "--namespace",
        &namespace,
        "--set",
        "cluster.name=production-us-east-1",
        "--set",
        &format!("backend.url={}", backend.http_url()),
        "--set",
        &format!("backend.grpcEndpoint={}", backend.grpc_url()),
        "--set",
        "backend.tlsVerify=false",
        "--set",
        &format!("auth.bearerToken={BOOTSTRAP}"),
        "--set",
        "relayer.replicas=3",
        "--wait",
        "--timeout",
        "4m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    helm(plane, &namespace, &install).await;

    // The hook registered: the credentials Secret exists with both keys.
    let client = plane.client().await;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
    let credentials = secrets
        .get(&format!("{RELEASE}-cluster"))
        .await
        .expect("the hook wrote the credentials Secret");
    let data = credentials.data.clone().unwrap_or_default();
    assert!(data.contains_key("clusterId") && data.contains_key("clusterToken"));
    let clusters = backend.state().list_clusters();
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(clusters[0].name, "production-us-east-1");

    // The API-server egress rule points at the looked-up address only.
    let policies: kube::Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        kube::Api::namespaced(client.clone(), &namespace);
    let policy = policies
        .get(RELEASE)
        .await
        .expect("the relayer's NetworkPolicy");
    let api_rule = serde_json::to_value(policy.spec.unwrap().egress.unwrap_or_default())
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["ports"].to_string().contains("6443"))
        .cloned()
        .expect("an API-server rule");
    assert_eq!(
        api_rule["to"],
        serde_json::json!([{"ipBlock": {"cidr": "192.0.2.10/32"}}]),
        "{api_rule}"
    );

    // Three replicas connect; exactly one leads, and it holds the Lease.
    let settled = eventually(Duration::from_secs(60), || {
        let clusters = backend.state().list_clusters();
        clusters[0].sessions.len() == 3
            && clusters[0].sessions.iter().filter(|s| s.leader).count() == 1
    })
    .await;
    assert!(settled, "{:?}", backend.state().list_clusters());
    let leader = backend.state().list_clusters()[0]
        .sessions
        .iter()
        .find(|s| s.leader)
        .unwrap()
        .instance_id
        .clone();
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &namespace);
    let lease = leases
        .get(&format!("{RELEASE}-cluster-leader"))
        .await
        .expect("the leader Lease");
    // The holder is the leading pod's name plus its incarnation.
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with(&format!("{leader}-")),
        "the Lease is held by {holder}, the backend's leader is {leader}"
    );
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &namespace);
    let relayer_pods: Vec<String> = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=relayer"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        relayer_pods.contains(&leader),
        "{leader} in {relayer_pods:?}"
    );

    // helm upgrade without the one-time token: the chart finds the
    // credentials Secret, renders no registration hook and asks for no token,
    // so no later revision keeps it.
    let token = format!("auth.bearerToken={BOOTSTRAP}");
    let mut upgrade: Vec<String> = Vec::new();
    for arg in &install {
        match arg.as_str() {
            "install" => upgrade.push("upgrade".to_string()),
            "--create-namespace" => {}
            _ if *arg == token => {
                upgrade.pop(); // its "--set"
            }
            _ => upgrade.push(arg.clone()),
        }
    }
    assert!(
        !upgrade.iter().any(|a| a.contains("bearerToken")),
        "{upgrade:?}"
    );
    let upgraded = helm(plane, &namespace, &upgrade).await;
    assert!(
        upgraded.contains("This cluster is already registered"),
        "{upgraded}"
    );
    assert_eq!(
        backend.state().list_clusters().len(),
        1,
        "no second registration"
    );
    let get = |what: &'static str| {
        let namespace = namespace.clone();
        async move {
            helm(
                plane,
                &namespace,
                &["get", what, RELEASE, "--namespace", &namespace]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .await
        }
    };
    let hooks = get("hooks").await;
    assert!(
        !hooks.contains("-register"),
        "the upgrade rendered the registration hook:\n{hooks}"
    );
    assert!(
        !get("values").await.contains(BOOTSTRAP),
        "the new revision keeps the token"
    );

    // helm uninstall leaves the credentials Secret (the chart's README says so).
    helm(
        plane,
        &namespace,
        &["uninstall", RELEASE, "--namespace", &namespace, "--wait"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(
        secrets
            .get_opt(&format!("{RELEASE}-cluster"))
            .await
            .unwrap()
            .is_some(),
        "the credentials Secret outlives the release"
    );
    let gone = eventually_async(Duration::from_secs(60), || {
        let backend = &backend;
        async move { backend.state().list_clusters()[0].sessions.is_empty() }
    })
    .await;
    assert!(
        gone,
        "the relayers stopped: {:?}",
        backend.state().list_clusters()
    );
}
