//! Commands against Kubernetes end to end: the relayer binary and the
//! reference backend on loopback, against the real control plane
//! (kube-apiserver, kube-controller-manager, etcd; `scripts/kube-testenv`)
//! and the stand-in kubelet, one namespace per test. Each action's happy
//! path, error mapping from real answers (RBAC, not found, field-ownership
//! conflicts, validation), policy denials, deadlines, cancel, cluster events
//! from real controllers, and leader election on a real Lease.

mod common;

use std::time::Duration;

use common::*;
use consonant_kube_testenv::kubelet::LOG_DELAY_MS;
use consonant_kube_testenv::ControlPlane;
use consonant_relayer::proto::{command, command_result::Status, error::Code, Command, ObjectRef};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

/// The demo's sample Deployment (labelled `app.kubernetes.io/managed-by: consonant`).
const WEB: &str = consonant_kube_sim::SAMPLE_DEPLOYMENT;

struct Env {
    plane: &'static ControlPlane,
    /// This test's namespace.
    ns: String,
    backend: consonant_dev_backend::DevBackendHandle,
    relayer: Relayer,
}

/// A relayer with the admin kubeconfig and a fresh namespace; `configure`
/// sees the namespace's name.
async fn env_with(configure: impl FnOnce(RelayerOptions, &str) -> RelayerOptions) -> Env {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("relayer").await;
    let backend = backend().await;
    let options = configure(
        RelayerOptions::new(&backend).kubernetes(&plane.kubeconfig, false),
        &ns,
    );
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    Env {
        plane,
        ns,
        backend,
        relayer,
    }
}

async fn env() -> Env {
    env_with(|options, _| options).await
}

impl Env {
    async fn deployments(&self) -> kube::Api<Deployment> {
        kube::Api::namespaced(self.plane.client().await, &self.ns)
    }

    fn target(&self, kind: &str, name: &str) -> Option<ObjectRef> {
        target(&self.ns, kind, name)
    }

    fn apply(&self, manifest: &str) -> Command {
        apply(&self.ns, manifest)
    }
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn cmd(action: command::Action) -> Command {
    Command {
        command_id: id(),
        action: Some(action),
        ..Default::default()
    }
}

fn target(namespace: &str, kind: &str, name: &str) -> Option<ObjectRef> {
    let api_version = if kind == "Pod" || kind == "Secret" {
        "v1"
    } else {
        "apps/v1"
    };
    Some(ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        uid: String::new(),
    })
}

fn apply(namespace: &str, manifest: &str) -> Command {
    cmd(command::Action::Apply(
        consonant_relayer::proto::ApplyManifest {
            manifest: manifest.as_bytes().to_vec().into(),
            namespace: namespace.into(),
            ..Default::default()
        },
    ))
}

fn output(result: &consonant_relayer::proto::CommandResult) -> Value {
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    serde_json::from_slice(&result.output_json).unwrap()
}

async fn run(env: &Env, command: Command) -> consonant_relayer::proto::CommandResult {
    run_command(&env.backend, command).await
}

#[tokio::test]
async fn apply_get_scale_logs_and_delete_work_against_the_api() {
    let env = env().await;
    // A server-side dry run answers like an apply and changes nothing.
    let mut dry = env.apply(WEB);
    if let Some(command::Action::Apply(apply)) = dry.action.as_mut() {
        apply.dry_run = true;
    }
    let dry = output(&run(&env, dry).await);
    assert_eq!(dry["applied"][0]["name"], "web", "{dry}");
    assert!(
        env.deployments()
            .await
            .get_opt("web")
            .await
            .unwrap()
            .is_none(),
        "a dry run creates nothing"
    );
    let applied = output(&run(&env, env.apply(WEB)).await);
    assert_eq!(applied["applied"][0]["name"], "web");
    assert_eq!(applied["applied"][0]["namespace"], env.ns.as_str());

    let got = output(
        &run(
            &env,
            cmd(command::Action::Get(
                consonant_relayer::proto::GetResource {
                    target: env.target("Deployment", "web"),
                },
            )),
        )
        .await,
    );
    assert_eq!(got["object"]["spec"]["replicas"], 1);
    assert!(got["object"]["metadata"].get("managedFields").is_none());

    let scaled = output(
        &run(
            &env,
            cmd(command::Action::Scale(
                consonant_relayer::proto::ScaleWorkload {
                    target: env.target("Deployment", "web"),
                    replicas: 3,
                },
            )),
        )
        .await,
    );
    assert_eq!(
        scaled,
        serde_json::json!({"replicas": 3, "previous_replicas": 1})
    );
    let api = env.deployments().await;
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(3),
        "the cluster holds the new count"
    );

    // A rollout restart through the relayer: the pod template gets the
    // command's id, and the real controller rolls new pods out.
    let restart = cmd(command::Action::Restart(
        consonant_relayer::proto::RestartWorkload {
            target: env.target("Deployment", "web"),
        },
    ));
    let restart_id = restart.command_id.clone();
    let restarted = output(&run(&env, restart).await);
    assert_eq!(restarted["changed"], true, "{restarted}");
    let template = api.get("web").await.unwrap().spec.unwrap().template;
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["consonant.xyz/restartedAt"],
        restart_id
    );

    // Pods appear and become ready; read one's logs.
    let mut pod_name = String::new();
    for _ in 0..100 {
        let listed = output(
            &run(
                &env,
                cmd(command::Action::List(
                    consonant_relayer::proto::ListResources {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        namespace: env.ns.clone(),
                        label_selector: "app=web".into(),
                        limit: 10,
                    },
                )),
            )
            .await,
        );
        let running = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        if listed["count"] == 3 && running == 3 {
            pod_name = listed["items"][0]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pod_name.is_empty(), "three running pods after scaling");
    let logs = output(
        &run(
            &env,
            cmd(command::Action::Logs(consonant_relayer::proto::GetLogs {
                namespace: env.ns.clone(),
                pod: pod_name.clone(),
                tail_lines: 2,
                ..Default::default()
            })),
        )
        .await,
    );
    assert!(
        logs["lines"].as_u64().unwrap() <= 2 && logs["lines"].as_u64().unwrap() >= 1,
        "{logs}"
    );
    assert_eq!(logs["pod"], pod_name.as_str());

    let info = output(&run(&env, cmd(command::Action::ClusterInfo(Default::default()))).await);
    assert_eq!(info["nodes"], 1, "the stand-in kubelet's Node: {info}");
    assert_eq!(info["kubernetes_version"], env.plane.version.as_str());
    assert!(
        env.plane.version.starts_with("v1."),
        "{}",
        env.plane.version
    );
    assert_eq!(info["relayer_version"], env!("CARGO_PKG_VERSION"));

    let deleted = output(
        &run(
            &env,
            cmd(command::Action::Delete(
                consonant_relayer::proto::DeleteResource {
                    target: env.target("Deployment", "web"),
                    propagation: "Background".into(),
                },
            )),
        )
        .await,
    );
    assert_eq!(deleted["deleted"], true);
    let again = output(
        &run(
            &env,
            cmd(command::Action::Delete(
                consonant_relayer::proto::DeleteResource {
                    target: env.target("Deployment", "web"),
                    propagation: String::new(),
                },
            )),
        )
        .await,
    );
    assert_eq!(
        again["deleted"], false,
        "deleting a missing object succeeds"
    );
}

#[tokio::test]
async fn kubernetes_errors_map_to_protocol_codes() {
    let env = env().await;
    let missing = run(
        &env,
        cmd(command::Action::Get(
            consonant_relayer::proto::GetResource {
                target: env.target("Deployment", "nope"),
            },
        )),
    )
    .await;
    assert_eq!(missing.status, Status::Failed as i32);
    assert_eq!(missing.error.as_ref().unwrap().code, Code::NotFound as i32);

    // 409: another field manager owns spec.replicas, so the relayer's apply
    // of a different count conflicts; with `force` it takes the field over.
    let api = env.deployments().await;
    let mut theirs: Value = serde_yaml_ng::from_str(WEB).unwrap();
    theirs["spec"]["replicas"] = 5.into();
    api.patch(
        "web",
        &kube::api::PatchParams::apply("someone-else"),
        &kube::api::Patch::Apply(&theirs),
    )
    .await
    .unwrap();
    let conflict = run(&env, env.apply(WEB)).await;
    assert_eq!(conflict.status, Status::Failed as i32, "{conflict:?}");
    let error = conflict.error.unwrap();
    assert_eq!(error.code, Code::Conflict as i32);
    assert!(error.message.contains("someone-else"), "{}", error.message);
    let mut forced = env.apply(WEB);
    if let Some(command::Action::Apply(apply)) = forced.action.as_mut() {
        apply.force = true;
    }
    output(&run(&env, forced).await);
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(1),
        "force took spec.replicas over"
    );

    // 422: the API server's validation.
    let invalid = run(&env, env.apply(&WEB.replace("replicas: 1", "replicas: -1"))).await;
    assert_eq!(invalid.status, Status::Failed as i32, "{invalid:?}");
    let error = invalid.error.unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(error.message.contains("replicas"), "{}", error.message);

    let unknown_kind = run(
        &env,
        cmd(command::Action::Get(
            consonant_relayer::proto::GetResource {
                target: Some(ObjectRef {
                    api_version: "example.com/v1".into(),
                    kind: "Widget".into(),
                    namespace: env.ns.clone(),
                    name: "w".into(),
                    uid: String::new(),
                }),
            },
        )),
    )
    .await;
    assert_eq!(unknown_kind.error.unwrap().code, Code::NotFound as i32);
}

#[tokio::test]
async fn a_service_account_without_rbac_gets_forbidden_from_the_real_authorizer() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("rbac").await;
    let token = plane.service_account_token(&ns, "nobody").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    plane.write_kubeconfig_for_token(&token, &ns, &kubeconfig);
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend).kubernetes(&kubeconfig, false));
    relayer.wait_connected().await;
    let forbidden = run_command(&backend, apply(&ns, WEB)).await;
    assert_eq!(forbidden.status, Status::Failed as i32, "{forbidden:?}");
    let error = forbidden.error.unwrap();
    assert_eq!(error.code, Code::Forbidden as i32);
    assert!(error.message.contains("RBAC"), "{}", error.message);
    assert!(
        error
            .message
            .contains(&format!("system:serviceaccount:{ns}:nobody")),
        "the API server names who was refused: {}",
        error.message
    );
}

#[tokio::test]
async fn policy_denials_come_before_kubernetes() {
    let env =
        env_with(|options, ns| options.commands(&format!("allowed_namespaces = [\"{ns}\"]"))).await;
    let with_secret = format!("{WEB}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2\n");
    let result = run(&env, env.apply(&with_secret)).await;
    assert_eq!(result.status, Status::Rejected as i32);
    let error = result.error.unwrap();
    assert_eq!(error.code, Code::Forbidden as i32);
    assert!(error.message.contains("denied_kinds"), "{}", error.message);
    assert!(
        !error.message.contains("hunter2"),
        "never echo manifest contents"
    );

    let mut elsewhere = env.apply(WEB);
    if let Some(command::Action::Apply(a)) = elsewhere.action.as_mut() {
        a.namespace = "kube-system".into();
    }
    let result = run(&env, elsewhere).await;
    assert_eq!(result.status, Status::Rejected as i32);
    assert!(result.error.unwrap().message.contains("allowed_namespaces"));
    let api = env.deployments().await;
    assert!(
        api.get_opt("web").await.unwrap().is_none(),
        "nothing was applied"
    );

    let bad = run(
        &env,
        env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: [oops\n"),
    )
    .await;
    assert_eq!(bad.status, Status::Rejected as i32);
    let message = bad.error.unwrap().message;
    assert!(message.contains("document 2"), "{message}");
}

/// A Running pod whose node answers log requests only after `delay_ms`: a
/// slow call through the real API server's kubelet proxy.
async fn slow_logs_pod(env: &Env, delay_ms: u64) -> String {
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\n  annotations:\n    {LOG_DELAY_MS}: \"{delay_ms}\"\nspec:\n  containers:\n    - name: app\n      image: nginx:1.27\n"
    );
    output(&run(env, env.apply(&pod)).await);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.plane.client().await, &env.ns);
    let running = eventually_async(Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            pods.get("slow")
                .await
                .ok()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Running")
        }
    })
    .await;
    assert!(running, "the stand-in kubelet started the pod");
    "slow".to_string()
}

fn logs(env: &Env, pod: &str) -> Command {
    cmd(command::Action::Logs(consonant_relayer::proto::GetLogs {
        namespace: env.ns.clone(),
        pod: pod.into(),
        ..Default::default()
    }))
}

#[tokio::test]
async fn a_deadline_that_passes_while_running_times_out() {
    let env = env().await;
    let pod = slow_logs_pod(&env, 3000).await;
    let mut slow = logs(&env, &pod);
    slow.deadline_unix_ms = consonant_relayer::clock::now_unix_ms() + 500;
    let result = run(&env, slow).await;
    assert_eq!(result.status, Status::TimedOut as i32, "{result:?}");
    assert_eq!(result.error.unwrap().code, Code::DeadlineExceeded as i32);
}

#[tokio::test]
async fn restart_with_the_same_command_id_changes_the_template_once() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("restart").await;
    let client = plane.client().await;
    let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_yaml_ng::from_str(WEB).unwrap();
    api.create(&Default::default(), &deployment).await.unwrap();
    let executor = consonant_relayer::kube::actions::Executor::new(client, true);
    let web = consonant_relayer::commands::validate::Target {
        api_version: consonant_relayer::commands::validate::parse_api_version("apps/v1").unwrap(),
        kind: "Deployment".into(),
        namespace: Some(ns.clone()),
        name: "web".into(),
    };
    let generation = |d: Deployment| d.metadata.generation.unwrap_or(0);
    let before = generation(api.get("web").await.unwrap());
    let first = executor.restart(&web, "cmd-1").await.unwrap();
    let after_first = generation(api.get("web").await.unwrap());
    let second = executor.restart(&web, "cmd-1").await.unwrap();
    let after_second = generation(api.get("web").await.unwrap());
    assert_eq!(first["changed"], true);
    assert_eq!(second["changed"], false);
    assert_eq!(after_first, before + 1);
    assert_eq!(
        after_second, after_first,
        "the same command id changes nothing"
    );
    let annotations = api
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(annotations["consonant.xyz/restartedAt"], "cmd-1");
}

#[tokio::test]
async fn rate_limit_answers_every_command_once_and_refuses_the_excess() {
    let env = env_with(|options, _| options.commands("rate_per_second = 50\nburst = 100")).await;
    let waiters: Vec<_> = (0..400)
        .map(|i| {
            env.backend
                .state()
                .submit_command(CLUSTER_ID, ping(&format!("rl-{i}"), b""))
                .unwrap()
        })
        .collect();
    // The backend re-sends a retryable refusal; every command ends with one final result.
    for waiter in waiters {
        let result = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(
            result.status == Status::Succeeded as i32 || result.status == Status::Rejected as i32
        );
    }
    let limited = env
        .relayer
        .metric(
            "consonant_relayer_commands_total",
            "action=\"ping\",status=\"rejected\"",
        )
        .await;
    let succeeded = env
        .relayer
        .metric(
            "consonant_relayer_commands_total",
            "action=\"ping\",status=\"succeeded\"",
        )
        .await;
    assert!(limited > 0.0, "some pings were RATE_LIMITED");
    assert_eq!(succeeded, 400.0, "each command ran exactly once");
}

#[tokio::test]
async fn a_deployment_becoming_ready_and_failing_pods_are_reported() {
    let env = env().await;
    output(&run(&env, env.apply(WEB)).await);
    // Cues for the stand-in kubelet: the image name says how the container fares.
    let variant = |name: &str, image: &str| {
        WEB.replace("name: web", &format!("name: {name}"))
            .replace("app: web", &format!("app: {name}"))
            .replace("nginx:1.27", image)
    };
    output(&run(&env, env.apply(&variant("broken", "crash:latest"))).await);
    output(&run(&env, env.apply(&variant("hungry", "busybox:oom"))).await);
    let failing_pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\n  labels:\n    app.kubernetes.io/managed-by: consonant\nspec:\n  restartPolicy: Never\n  containers:\n    - name: job\n      image: busybox:fail\n";
    output(&run(&env, env.apply(failing_pod)).await);
    let pod_failed = |prefix: &str, reason: &str| {
        env.backend
            .state()
            .events(CLUSTER_ID, 1000)
            .unwrap()
            .iter()
            .any(|e| {
                e.kind == "pod.failed"
                    && e.object
                        .as_ref()
                        .is_some_and(|o| o.name.starts_with(prefix) && o.namespace == env.ns)
                    && serde_json::from_slice::<Value>(&e.payload_json)
                        .is_ok_and(|p| p["reason"] == reason)
            })
    };
    let found = eventually(Duration::from_secs(20), || {
        let events = env.backend.state().events(CLUSTER_ID, 1000).unwrap();
        let ready = events.iter().any(|e| {
            e.kind == "workload.status"
                && e.object
                    .as_ref()
                    .is_some_and(|o| o.name == "web" && o.namespace == env.ns)
                && serde_json::from_slice::<Value>(&e.payload_json)
                    .is_ok_and(|p| p["ready"] == true)
        });
        ready
            && pod_failed("broken", "CrashLoopBackOff")
            && pod_failed("hungry", "OOMKilled")
            && pod_failed("once", "Error")
    })
    .await;
    let seen: Vec<_> = env
        .backend
        .state()
        .events(CLUSTER_ID, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.object.as_ref().is_some_and(|o| o.namespace == env.ns))
        .map(|e| {
            (
                e.kind,
                e.object.map(|o| o.name),
                String::from_utf8_lossy(&e.payload_json).into_owned(),
            )
        })
        .collect();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.plane.client().await, &env.ns);
    let phases: Vec<_> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name,
                p.spec.and_then(|s| s.node_name),
                p.status.map(|s| (s.phase, s.reason)),
            )
        })
        .collect();
    assert!(
        found,
        "events seen: {seen:#?}\npods: {phases:#?}\n{}",
        env.relayer.output()
    );
}

#[tokio::test]
async fn cancel_stops_a_running_command() {
    let env = env().await;
    let pod = slow_logs_pod(&env, 5000).await;
    let slow = logs(&env, &pod);
    let id = slow.command_id.clone();
    let waiter = env
        .backend
        .state()
        .submit_command(CLUSTER_ID, slow)
        .unwrap();
    // Cancel once the relayer has accepted it (it waits on the slow node).
    let accepted = eventually(Duration::from_secs(5), || {
        env.backend
            .state()
            .command(CLUSTER_ID, &id)
            .unwrap()
            .is_some_and(|c| format!("{:?}", c.state).contains("Accepted"))
    })
    .await;
    assert!(
        accepted,
        "{:?}",
        env.backend
            .state()
            .command(CLUSTER_ID, &id)
            .unwrap()
            .map(|c| c.state)
    );
    assert_eq!(env.backend.state().cancel(CLUSTER_ID, &id).unwrap(), 1);
    let result = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("cancelled well before the slow call ends")
        .unwrap();
    assert_eq!(result.status, Status::Cancelled as i32, "{result:?}");
    assert_eq!(result.error.unwrap().code, Code::Cancelled as i32);
}

#[tokio::test]
async fn a_command_resent_after_a_reconnect_runs_once() {
    let env = env().await;
    output(&run(&env, env.apply(WEB)).await);
    let scale = cmd(command::Action::Scale(
        consonant_relayer::proto::ScaleWorkload {
            target: env.target("Deployment", "web"),
            replicas: 2,
        },
    ));
    let id = scale.command_id.clone();
    let first = run(&env, scale.clone()).await;
    assert_eq!(output(&first)["replicas"], 2);
    // The stream dies, and the backend sends the same command again on the
    // next session (as one that lost the result would).
    env.backend
        .state()
        .set_faults(consonant_dev_backend::FaultsUpdate {
            end_streams: Some(true),
            ..Default::default()
        });
    assert!(
        eventually(Duration::from_secs(10), || env
            .backend
            .state()
            .stats()
            .sessions_started
            >= 2)
        .await
    );
    env.relayer.wait_connected().await;
    env.backend.state().forget_command(CLUSTER_ID, &id);
    let again = run(&env, scale).await;
    assert_eq!(output(&again)["replicas"], 2);
    assert_eq!(again.output_json, first.output_json, "the cached result");
    // The API server's audit log: what the relayer really sent.
    let scale_patches = env
        .plane
        .audit_events()
        .into_iter()
        .filter(|event| {
            event["verb"] == "patch"
                && event["objectRef"]["resource"] == "deployments"
                && event["objectRef"]["subresource"] == "scale"
                && event["objectRef"]["namespace"] == env.ns.as_str()
                && event["objectRef"]["name"] == "web"
        })
        .count();
    assert_eq!(scale_patches, 1, "the scale ran once");
}

#[tokio::test]
async fn only_the_leader_sends_events_and_a_standby_takes_over() {
    let plane = ControlPlane::shared();
    let ns = plane.namespace("leader").await;
    let backend = backend().await;
    // The Lease lives in the pod's namespace: this test's own.
    let replica = |name: &str| {
        Relayer::start(
            RelayerOptions::new(&backend)
                .kubernetes(&plane.kubeconfig, true)
                .env("POD_NAME", name)
                .env("POD_NAMESPACE", &ns),
        )
    };
    let first = replica("relayer-a");
    let second = replica("relayer-b");
    first.wait_connected().await;
    second.wait_connected().await;
    let leaders = |backend: &consonant_dev_backend::DevBackendHandle| -> Vec<String> {
        backend.state().list_clusters()[0]
            .sessions
            .iter()
            .filter(|s| s.leader)
            .map(|s| s.instance_id.clone())
            .collect()
    };
    let settled = eventually(Duration::from_secs(15), || {
        let sessions = backend.state().list_clusters()[0].sessions.len();
        sessions == 2 && leaders(&backend).len() == 1
    })
    .await;
    assert!(
        settled,
        "one leader among two sessions: {:?}",
        backend.state().list_clusters()
    );
    let leader = leaders(&backend)[0].clone();

    let env_backend = &backend;
    let web = run_command(env_backend, apply(&ns, WEB)).await;
    output(&web);
    let ready_events = |backend: &consonant_dev_backend::DevBackendHandle| {
        readiness_reported(backend, &ns, "web")
            .into_iter()
            .filter(|ready| *ready)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || ready_events(&backend) >= 1).await,
        "the leader reported web"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ready_events(&backend),
        1,
        "only one replica reports web ready"
    );

    // The leader stops (releasing its Lease); the standby takes over and reports.
    let mut replicas = vec![("relayer-a", first), ("relayer-b", second)];
    let index = replicas
        .iter()
        .position(|(name, _)| *name == leader)
        .expect("the leader is one of ours");
    let (_, mut stopping) = replicas.remove(index);
    let (standby, standing) = &replicas[0];
    let status = stopping
        .terminate(Duration::from_secs(15))
        .expect("the leader exits on SIGTERM");
    assert!(status.success());
    let took_over = eventually(Duration::from_secs(10), || {
        leaders(&backend) == vec![standby.to_string()]
    })
    .await;
    assert!(
        took_over,
        "{standby} leads now: {:?}\n{}",
        backend.state().list_clusters(),
        standing.output()
    );
    let before = ready_events(&backend);
    output(
        &run_command(
            &backend,
            cmd(command::Action::Scale(
                consonant_relayer::proto::ScaleWorkload {
                    target: target(&ns, "Deployment", "web"),
                    replicas: 2,
                },
            )),
        )
        .await,
    );
    assert!(
        eventually(Duration::from_secs(10), || ready_events(&backend) > before).await,
        "the new leader reports events"
    );
}

/// A cluster-scoped kind only discovery can name (a custom resource) while
/// `allowed_namespaces` is not `["*"]`: `list` used to return every object
/// cluster-wide and `get` came back FAILED and cached; both are REJECTED,
/// FORBIDDEN now (protocol.md, "Answers to edge cases").
#[tokio::test]
async fn a_cluster_scoped_custom_kind_is_rejected_through_get_and_list() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let env =
        env_with(|options, ns| options.commands(&format!("allowed_namespaces = [\"{ns}\"]"))).await;
    let group = format!("{}.example.com", env.ns);
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        }
    }))
    .unwrap();
    let client = env.plane.client().await;
    kube::Api::<CustomResourceDefinition>::all(client.clone())
        .create(&Default::default(), &crd)
        .await
        .unwrap();
    let resource = kube::discovery::ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client, &resource);
    let secret_widget: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "cluster-wide-secret"}, "spec": {"data": "not for this relayer"}
    }))
    .unwrap();
    let created = eventually_async(Duration::from_secs(20), || {
        let (widgets, object) = (widgets.clone(), secret_widget.clone());
        async move { widgets.create(&Default::default(), &object).await.is_ok() }
    })
    .await;
    assert!(created, "the CRD is served");

    let list = cmd(command::Action::List(
        consonant_relayer::proto::ListResources {
            api_version: format!("{group}/v1"),
            kind: "Widget".into(),
            namespace: env.ns.clone(),
            label_selector: String::new(),
            limit: 10,
        },
    ));
    let get = cmd(command::Action::Get(
        consonant_relayer::proto::GetResource {
            target: Some(ObjectRef {
                api_version: format!("{group}/v1"),
                kind: "Widget".into(),
                namespace: env.ns.clone(),
                name: "cluster-wide-secret".into(),
                uid: String::new(),
            }),
        },
    ));
    for command in [list, get] {
        let result = run(&env, command).await;
        assert_eq!(result.status, Status::Rejected as i32, "{result:?}");
        let error = result.error.unwrap();
        assert_eq!(error.code, Code::Forbidden as i32);
        assert!(
            error.message.contains("cluster-scoped"),
            "{}",
            error.message
        );
        assert!(
            result.output_json.is_empty(),
            "nothing of the object goes out"
        );
    }
}
