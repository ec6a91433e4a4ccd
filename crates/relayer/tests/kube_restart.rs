//! The relayer's watches survive a real kube-apiserver restart: the
//! restarted server's watch cache starts afresh, so the relayer's watches,
//! resumed from an older resourceVersion, get 410 Gone (expired); they
//! re-list and go on, and a workload that was already reported is not
//! reported again. Its own test binary: restarting the API server would
//! disturb the other tests sharing a control plane.

mod common;

use std::time::Duration;

use common::*;
use consonant_kube_testenv::ControlPlane;
use consonant_relayer::proto::command_result::Status;
use k8s_openapi::api::core::v1::ConfigMap;

const WEB: &str = consonant_kube_sim::SAMPLE_DEPLOYMENT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_the_api_server_restarts_and_their_version_expired() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("restart").await;
    let backend = backend().await;
    let relayer =
        Relayer::start(RelayerOptions::new(&backend).kubernetes(&plane.kubeconfig, false));
    relayer.wait_connected().await;
    let ready_events = |name: &str| {
        readiness_reported(&backend, &ns, name)
            .into_iter()
            .filter(|ready| *ready)
            .count()
    };
    let result = run_command(&backend, apply_manifest(&ns, WEB)).await;
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    assert!(
        eventually(Duration::from_secs(20), || ready_events("web") == 1).await,
        "web reported ready before the restart"
    );

    // Writes the relayer's watches do not see move etcd's revision on.
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(plane.client().await, &ns);
    for i in 0..20 {
        let map: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("churn-{i}")}}))
                .unwrap();
        maps.create(&Default::default(), &map).await.unwrap();
    }
    plane.restart("kube-apiserver");

    let web2 = WEB
        .replace("name: web", "name: web2")
        .replace("app: web", "app: web2");
    let result = run_command(&backend, apply_manifest(&ns, &web2)).await;
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    assert!(
        eventually(Duration::from_secs(60), || ready_events("web2") == 1).await,
        "a workload made after the restart is reported: {:?}\n{}",
        backend.state().events(CLUSTER_ID, 1000).unwrap(),
        relayer.output()
    );
    assert_eq!(
        ready_events("web"),
        1,
        "the re-list does not report web again"
    );
    // kube-runtime's words for the API server's 410: the watch expired.
    let output = relayer.output();
    assert!(
        output
            .lines()
            .any(|line| line.contains("watch failed") && line.contains("too old resource version")),
        "the resumed watch expired (410) and the relayer re-listed:\n{output}"
    );
}
