//! Faults on purpose (issue 17), the control-plane part: the real
//! kube-apiserver and etcd restarted while Kubernetes actions run. Its own
//! test binary: restarting the API server would disturb the other tests
//! sharing its control plane (and truncates the audit log they count
//! writes from). Short version in the test command; `scripts/soak` runs it
//! with the rest.

mod common;

use std::time::Duration;

use common::fault_rig::{report, results_per_command};
use common::*;

const CONNECTION: &str = r#"
heartbeat_interval = "500ms"
backoff_base = "100ms"
backoff_max = "2s"
breaker_open_duration = "2s"
"#;

/// Rollout restarts of one Deployment flow while the real kube-apiserver is
/// restarted and then etcd is: each command has exactly one result, and
/// the Deployment's generation moved once per restart that took effect —
/// at least once per command that succeeded, never more than once per
/// command (a restart writes its command id into the pod template, so even
/// a re-run could not move it twice; a command that failed because the API
/// server went away mid-request may or may not have been applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarts_mid_command_apply_no_action_twice() {
    use consonant_kube_testenv::ControlPlane;
    use consonant_relayer::proto::{command, command_result::Status, Command};
    use k8s_openapi::api::apps::v1::Deployment;
    const RESTARTS: usize = 30;
    let plane = ControlPlane::shared();
    let ns = plane.namespace("faults").await;
    let backend = backend().await;
    let relayer = Relayer::start(
        RelayerOptions::new(&backend)
            .connection(CONNECTION)
            .kubernetes(&plane.kubeconfig, false),
    );
    relayer.wait_connected().await;
    let apply = Command {
        command_id: "apply-web".into(),
        ..apply_manifest(&ns, consonant_kube_sim::SAMPLE_DEPLOYMENT)
    };
    let applied = run_command(&backend, apply).await;
    assert_eq!(applied.status, Status::Succeeded as i32, "{applied:?}");
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(plane.client().await, &ns);
    let generation = |d: Deployment| d.metadata.generation.unwrap_or_default();
    let before = generation(deployments.get("web").await.unwrap());

    let state = backend.state().clone();
    let target_ns = ns.clone();
    let driver = tokio::spawn(async move {
        let mut waiters = Vec::new();
        for i in 0..RESTARTS {
            let command = Command {
                command_id: format!("restart-{i}"),
                action: Some(command::Action::Restart(
                    consonant_relayer::proto::RestartWorkload {
                        target: Some(consonant_relayer::proto::ObjectRef {
                            api_version: "apps/v1".into(),
                            kind: "Deployment".into(),
                            namespace: target_ns.clone(),
                            name: "web".into(),
                            uid: String::new(),
                        }),
                    },
                )),
                ..Default::default()
            };
            waiters.push(state.submit_command(CLUSTER_ID, command).expect("submit"));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        waiters
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::spawn_blocking(|| ControlPlane::shared().restart("kube-apiserver"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| ControlPlane::shared().restart("etcd"))
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for waiter in driver.await.unwrap() {
        let result = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("every restart is answered")
            .expect("result sender kept");
        statuses.push(result.status);
    }
    let succeeded = statuses
        .iter()
        .filter(|s| **s == Status::Succeeded as i32)
        .count() as i64;
    let counts = results_per_command(&backend.http_url()).await;
    for i in 0..RESTARTS {
        assert_eq!(
            counts.get(&format!("restart-{i}")),
            Some(&1),
            "restart-{i}: {counts:?}"
        );
    }
    // The API server answers again (etcd may take a moment after its restart).
    let mut after = None;
    for _ in 0..60 {
        if let Ok(d) = deployments.get("web").await {
            after = Some(generation(d));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let moved = after.expect("the API server answers after the restarts") - before;
    assert!(
        moved >= succeeded && moved <= RESTARTS as i64,
        "generation moved {moved} times for {RESTARTS} restart commands, {succeeded} succeeded"
    );
    eprintln!(
        "API server and etcd restarts: {RESTARTS} restart commands, {succeeded} succeeded, generation moved {moved}"
    );
    report(
        "kube-apiserver, then etcd restarted under rollout restarts",
        RESTARTS,
        counts.len() - 1,
        0,
        relayer.rss_kib(),
        "—",
        "—",
        &format!("{succeeded} succeeded; generation moved {moved}"),
    );
}
