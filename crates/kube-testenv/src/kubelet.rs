//! The stand-in kubelet: what a control plane alone cannot do, done through
//! the real API server so that everything the relayer sees went through it.
//!
//! - registers the Node [`crate::NODE_NAME`] (Ready, InternalIP 127.0.0.1,
//!   its kubelet port) and lifts its `not-ready` taint, as the node
//!   lifecycle controller would, so DaemonSets get pods;
//! - binds every unscheduled pod to it (`pods/binding`: there is no
//!   scheduler);
//! - moves each bound pod's status once: Running and Ready; or, on cue from
//!   the container image's name, `crash` → CrashLoopBackOff (3 restarts),
//!   `oom` → CrashLoopBackOff after OOMKilled, `fail` → phase Failed (its
//!   container exited 1 and is not restarted), `pending` → left Pending; a
//!   Job's pod runs to Succeeded (or Failed when it crashes);
//! - finishes deleting terminating pods (as a kubelet confirms a pod's
//!   containers stopped), so scale-downs and rollouts complete;
//! - runs pods of the images a test registered as real processes, each in
//!   its own network and mount namespace (`pods.rs`);
//! - serves container logs on its HTTPS port (a process pod's real output), so `pods/log` goes through the
//!   API server's kubelet proxy: `line <n> from <pod>/<container>`, count
//!   from the pod annotation [`LOG_LINES`] (default 4), answered after the
//!   delay in [`LOG_DELAY_MS`] (a slow node, for deadline and cancel tests),
//!   honouring `tailLines` and `limitBytes`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::{json, Value};

use crate::time::now_rfc3339;

/// Pod annotation: how many log lines each container has (default 4).
pub const LOG_LINES: &str = "kubelet.testenv.consonant.dev/log-lines";
/// Pod annotation: milliseconds the node waits before answering a log request.
pub const LOG_DELAY_MS: &str = "kubelet.testenv.consonant.dev/log-delay-ms";

/// Starts the stand-in kubelet on its own thread and runtime for the rest of
/// the process. Returns once the Node is registered.
pub(crate) fn spawn(kubeconfig: PathBuf, dir: PathBuf, node: &'static str) -> Result<(), String> {
    let api_port = api_port(&kubeconfig)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("stand-in-kubelet".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(err.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(err) = crate::pods::init(&dir, tokio::runtime::Handle::current()) {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
                let client = crate::client_for(&kubeconfig).await;
                let port = match serve_logs(client.clone()).await {
                    Ok(addr) => addr.port(),
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("kubelet port: {err}")));
                        return;
                    }
                };
                if let Err(err) = register_node(&client, node, port).await {
                    let _ = ready_tx.send(Err(format!("register Node {node}: {err}")));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                run_pods(client, node, api_port).await;
            });
        })
        .map_err(|err| err.to_string())?;
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the stand-in kubelet did not start within 60 s".to_string())?
}

/// The API server's port, from the kubeconfig's `server:` line.
fn api_port(kubeconfig: &std::path::Path) -> Result<u16, String> {
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "no https://127.0.0.1:<port> server in {}",
                kubeconfig.display()
            )
        })
}

async fn register_node(client: &kube::Client, node: &str, port: u16) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(json!({
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
        }
    }))
    .expect("a Node object");
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(err),
    }
    let now = now_rfc3339();
    let resources =
        json!({"cpu": "8", "memory": "32Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "stand-in kubelet (tests)",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": node},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "capacity": resources,
        "allocatable": resources,
        "nodeInfo": {
            "machineID": "testenv", "systemUUID": "testenv", "bootID": "testenv",
            "kernelVersion": "", "osImage": "stand-in kubelet",
            "containerRuntimeVersion": "none://0", "kubeletVersion": "v0.0.0-testenv",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // The API server's TaintNodesByCondition admission taints every new
    // Node `node.kubernetes.io/not-ready:NoSchedule`; the node lifecycle
    // controller (not run here: no kubelet heartbeats) lifts it once the
    // Node is Ready. Without that the DaemonSet controller makes no pods.
    let taints: Vec<Value> = nodes
        .get(node)
        .await?
        .spec
        .and_then(|spec| spec.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|taint| taint.key != "node.kubernetes.io/not-ready")
        .map(|taint| serde_json::to_value(taint).expect("a taint is JSON"))
        .collect();
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

/// Binds, starts and finishes deleting pods until the process exits.
async fn run_pods(client: kube::Client, node: &'static str, api_port: u16) {
    let all: Api<Pod> = Api::all(client.clone());
    let events = watcher::watcher(all, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    loop {
        match events.try_next().await {
            Ok(Some(Event::Apply(pod) | Event::InitApply(pod))) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(&client, node, api_port, &pod).await {
                        tracing::debug!(error = %err, "stand-in kubelet: pod update failed (retried on the next event)");
                    }
                });
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(err) => tracing::debug!(error = %err, "stand-in kubelet: watch error"),
        }
    }
}

async fn handle(
    client: &kube::Client,
    node: &str,
    api_port: u16,
    pod: &Pod,
) -> Result<(), kube::Error> {
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return Ok(());
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let bound_to = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
    if pod.metadata.deletion_timestamp.is_some() {
        if bound_to.is_none_or(|bound| bound == node) {
            if let Some(uid) = &pod.metadata.uid {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .clamp(0, 30) as u64;
                crate::pods::stop(uid, Duration::from_secs(grace)).await;
            }
            // The containers stopped: confirm the deletion.
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                Err(err) => return Err(err),
            }
        }
        return Ok(());
    }
    match bound_to {
        None => {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            match pods
                .create_subresource::<_, Value>("binding", name, &PostParams::default(), &binding)
                .await
            {
                Ok(_) => {}
                // Already bound (a second event for the same pod).
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => return Err(err),
            }
        }
        Some(bound) if bound == node => {
            let started = pod
                .status
                .as_ref()
                .is_some_and(|status| status.start_time.is_some());
            let runs_here = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.containers.first())
                .and_then(crate::pods::binary_for)
                .is_some();
            if runs_here {
                crate::pods::start(client, pod, api_port).await;
            } else if !started {
                if let Some(status) = started_status(pod, node) {
                    pods.patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({ "status": status })),
                    )
                    .await?;
                }
            }
        }
        Some(_) => {}
    }
    Ok(())
}

/// How a container of this image behaves on the stand-in node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Runs,
    Crashes,
    OomKilled,
    Fails,
}

fn fate(image: &str) -> Fate {
    if image.contains("crash") {
        Fate::Crashes
    } else if image.contains("oom") {
        Fate::OomKilled
    } else if image.contains("fail") {
        Fate::Fails
    } else {
        Fate::Runs
    }
}

/// The status a started pod gets, or `None` to leave it Pending.
fn started_status(pod: &Pod, node: &str) -> Option<Value> {
    let spec = pod.spec.as_ref()?;
    if spec
        .containers
        .iter()
        .any(|c| c.image.as_deref().is_some_and(|i| i.contains("pending")))
    {
        return None;
    }
    let job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Job");
    let now = now_rfc3339();
    let fates: Vec<Fate> = spec
        .containers
        .iter()
        .map(|c| fate(c.image.as_deref().unwrap_or_default()))
        .collect();
    let all_run = fates.iter().all(|f| *f == Fate::Runs);
    let fails = fates.contains(&Fate::Fails);
    let phase = match (job, all_run) {
        (true, true) => "Succeeded",
        (true, false) => "Failed",
        (false, _) if fails => "Failed",
        (false, _) => "Running",
    };
    let ready = if !job && all_run { "True" } else { "False" };
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .zip(&fates)
        .map(|(container, fate)| {
            let terminated = |code: i32, reason: &str| {
                json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}})
            };
            let (state, last, restarts) = match (job, fate) {
                (true, Fate::Runs) => (terminated(0, "Completed"), json!({}), 0),
                (true, _) => (terminated(1, "Error"), json!({}), 0),
                (false, Fate::Runs) => (json!({"running": {"startedAt": now}}), json!({}), 0),
                (false, Fate::Crashes) => (
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}),
                    terminated(1, "Error"),
                    3,
                ),
                (false, Fate::Fails) => (terminated(1, "Error"), json!({}), 0),
                (false, Fate::OomKilled) => (
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}),
                    terminated(137, "OOMKilled"),
                    1,
                ),
            };
            let up = !job && *fate == Fate::Runs;
            json!({
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "containerID": format!("testenv://{}", uuid::Uuid::new_v4().simple()),
                "ready": up,
                "started": up,
                "restartCount": restarts,
                "state": state,
                "lastState": last,
            })
        })
        .collect();
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastTransitionTime": now});
    Some(json!({
        "phase": phase,
        "conditions": [
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
        "containerStatuses": statuses,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "nominatedNodeName": null,
        "message": format!("started by the stand-in kubelet on {node}"),
        "reason": if fails { Value::from("Error") } else { Value::Null },
    }))
}

/// The kubelet's HTTPS port: container logs for the API server's proxy.
async fn serve_logs(client: kube::Client) -> std::io::Result<SocketAddr> {
    let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .and_then(|params| params.self_signed(&key))
        .map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(client);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    Ok(addr)
}

async fn container_logs(
    State(client): State<kube::Client>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let Ok(object) = pods.get(&pod).await else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} not found"),
        )
            .into_response();
    };
    let annotation = |key: &str| {
        object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(file) = object
        .metadata
        .uid
        .as_deref()
        .and_then(|uid| crate::pods::log_file(uid, &container))
    {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        if let Some(tail) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
            let skip = lines.len().saturating_sub(tail);
            lines.drain(..skip);
        }
        return lines.concat().into_response();
    }
    if let Some(delay) = annotation(LOG_DELAY_MS) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let count = annotation(LOG_LINES).unwrap_or(4) as usize;
    let mut lines: Vec<String> = (1..=count)
        .map(|n| format!("line {n} from {pod}/{container}\n"))
        .collect();
    if let Some(tail) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut body = lines.concat();
    if let Some(limit) = query
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.truncate(limit);
    }
    body.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_name_picks_the_fate() {
        for (image, expected) in [
            ("nginx:1.27", Fate::Runs),
            ("crash:latest", Fate::Crashes),
            ("busybox:oom", Fate::OomKilled),
            ("busybox:fail", Fate::Fails),
        ] {
            assert_eq!(fate(image), expected, "{image}");
        }
    }
}
