//! Commands against Kubernetes end to end: the relayer binary, the reference
//! backend and the in-memory Kubernetes API, all on loopback. Each action's
//! happy path and error mapping, policy denials, deadlines, and cluster
//! events.

mod common;

use std::time::Duration;

use common::*;
use consonant_kube_sim::{SimCluster, SimHandle, SimOptions};
use consonant_relayer::proto::{command, command_result::Status, error::Code, Command, ObjectRef};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

/// The demo's sample Deployment (labelled `app.kubernetes.io/managed-by: consonant`).
const WEB: &str = consonant_kube_sim::SAMPLE_DEPLOYMENT;

struct Env {
    sim: SimHandle,
    backend: consonant_dev_backend::DevBackendHandle,
    relayer: Relayer,
    _dir: tempfile::TempDir,
}

async fn env_with(configure: impl FnOnce(RelayerOptions) -> RelayerOptions) -> Env {
    let sim = SimCluster::start(SimOptions::default())
        .await
        .expect("start the in-memory Kubernetes API");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let backend = backend().await;
    let options = configure(RelayerOptions::new(&backend).kubernetes(&kubeconfig, false));
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    Env {
        sim,
        backend,
        relayer,
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(|options| options).await
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

fn target(kind: &str, name: &str) -> Option<ObjectRef> {
    let api_version = if kind == "Pod" || kind == "Secret" {
        "v1"
    } else {
        "apps/v1"
    };
    Some(ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: "default".into(),
        name: name.into(),
        uid: String::new(),
    })
}

fn apply(manifest: &str) -> Command {
    cmd(command::Action::Apply(
        consonant_relayer::proto::ApplyManifest {
            manifest: manifest.as_bytes().to_vec().into(),
            namespace: "default".into(),
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
    let applied = output(&run(&env, apply(WEB)).await);
    assert_eq!(applied["applied"][0]["name"], "web");
    assert_eq!(applied["applied"][0]["namespace"], "default");

    let got = output(
        &run(
            &env,
            cmd(command::Action::Get(
                consonant_relayer::proto::GetResource {
                    target: target("Deployment", "web"),
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
                    target: target("Deployment", "web"),
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
    let api: kube::Api<Deployment> = kube::Api::namespaced(env.sim.client().unwrap(), "default");
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(3),
        "the cluster holds the new count"
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
                        namespace: "default".into(),
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
                namespace: "default".into(),
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
    assert_eq!(info["nodes"], 2);
    assert!(info["kubernetes_version"]
        .as_str()
        .unwrap()
        .starts_with("v1.32"));
    assert_eq!(info["relayer_version"], env!("CARGO_PKG_VERSION"));

    let deleted = output(
        &run(
            &env,
            cmd(command::Action::Delete(
                consonant_relayer::proto::DeleteResource {
                    target: target("Deployment", "web"),
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
                    target: target("Deployment", "web"),
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
                target: target("Deployment", "nope"),
            },
        )),
    )
    .await;
    assert_eq!(missing.status, Status::Failed as i32);
    assert_eq!(missing.error.as_ref().unwrap().code, Code::NotFound as i32);

    env.sim.forbid_namespace("default");
    let forbidden = run(&env, apply(WEB)).await;
    assert_eq!(forbidden.status, Status::Failed as i32);
    let error = forbidden.error.unwrap();
    assert_eq!(error.code, Code::Forbidden as i32);
    assert!(error.message.contains("RBAC"), "{}", error.message);
    env.sim.clear();

    env.sim.fail_next(1, 500);
    let unavailable = run(&env, cmd(command::Action::ClusterInfo(Default::default()))).await;
    assert_eq!(unavailable.status, Status::Failed as i32);
    let error = unavailable.error.unwrap();
    assert_eq!(error.code, Code::Unavailable as i32);
    assert!(error.retryable);

    let unknown_kind = run(
        &env,
        cmd(command::Action::Get(
            consonant_relayer::proto::GetResource {
                target: Some(ObjectRef {
                    api_version: "example.com/v1".into(),
                    kind: "Widget".into(),
                    namespace: "default".into(),
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
async fn policy_denials_come_before_kubernetes() {
    let env = env_with(|options| options.commands("allowed_namespaces = [\"default\"]")).await;
    let with_secret = format!("{WEB}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2\n");
    let result = run(&env, apply(&with_secret)).await;
    assert_eq!(result.status, Status::Rejected as i32);
    let error = result.error.unwrap();
    assert_eq!(error.code, Code::Forbidden as i32);
    assert!(error.message.contains("denied_kinds"), "{}", error.message);
    assert!(
        !error.message.contains("hunter2"),
        "never echo manifest contents"
    );

    let mut elsewhere = apply(WEB);
    if let Some(command::Action::Apply(a)) = elsewhere.action.as_mut() {
        a.namespace = "kube-system".into();
    }
    let result = run(&env, elsewhere).await;
    assert_eq!(result.status, Status::Rejected as i32);
    assert!(result.error.unwrap().message.contains("allowed_namespaces"));
    let api: kube::Api<Deployment> = kube::Api::namespaced(env.sim.client().unwrap(), "default");
    assert!(
        api.get_opt("web").await.unwrap().is_none(),
        "nothing was applied"
    );

    let bad = run(
        &env,
        apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: [oops\n"),
    )
    .await;
    assert_eq!(bad.status, Status::Rejected as i32);
    let message = bad.error.unwrap().message;
    assert!(message.contains("document 2"), "{message}");
}

#[tokio::test]
async fn a_deadline_that_passes_while_running_times_out() {
    let env = env().await;
    env.sim.latency(Duration::from_millis(1500));
    let mut slow = cmd(command::Action::ClusterInfo(Default::default()));
    slow.deadline_unix_ms = consonant_relayer::clock::now_unix_ms() + 300;
    let result = run(&env, slow).await;
    assert_eq!(result.status, Status::TimedOut as i32, "{result:?}");
    assert_eq!(result.error.unwrap().code, Code::DeadlineExceeded as i32);
}

#[tokio::test]
async fn restart_with_the_same_command_id_changes_the_template_once() {
    let sim = SimCluster::start(SimOptions::default()).await.unwrap();
    let client = sim.client().unwrap();
    let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_yaml_ng::from_str(WEB).unwrap();
    api.create(&Default::default(), &deployment).await.unwrap();
    let executor = consonant_relayer::kube::actions::Executor::new(client, true);
    let web = consonant_relayer::commands::validate::Target {
        api_version: consonant_relayer::commands::validate::parse_api_version("apps/v1").unwrap(),
        kind: "Deployment".into(),
        namespace: Some("default".into()),
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
    let env = env_with(|options| options.commands("rate_per_second = 50\nburst = 100")).await;
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
async fn a_deployment_becoming_ready_and_a_crashing_pod_are_reported() {
    let env = env().await;
    output(&run(&env, apply(WEB)).await);
    let crash = WEB
        .replace("name: web", "name: broken")
        .replace("app: web", "app: broken")
        .replace("nginx:1.27", "crash:latest");
    output(&run(&env, apply(&crash)).await);
    let found = eventually(Duration::from_secs(15), || {
        let events = env.backend.state().events(CLUSTER_ID, 100).unwrap();
        let ready = events.iter().any(|e| {
            e.kind == "workload.status"
                && e.object.as_ref().is_some_and(|o| o.name == "web")
                && serde_json::from_slice::<Value>(&e.payload_json)
                    .is_ok_and(|p| p["ready"] == true)
        });
        let failed = events.iter().any(|e| {
            e.kind == "pod.failed"
                && e.object
                    .as_ref()
                    .is_some_and(|o| o.name.starts_with("broken"))
        });
        ready && failed
    })
    .await;
    let kinds: Vec<_> = env
        .backend
        .state()
        .events(CLUSTER_ID, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.object.map(|o| o.name)))
        .collect();
    assert!(found, "events seen: {kinds:?}\n{}", env.relayer.output());
}

#[tokio::test]
async fn cancel_stops_a_running_command() {
    let env = env().await;
    env.sim.latency(Duration::from_secs(3));
    let slow = cmd(command::Action::ClusterInfo(Default::default()));
    let id = slow.command_id.clone();
    let waiter = env
        .backend
        .state()
        .submit_command(CLUSTER_ID, slow)
        .unwrap();
    // Cancel once the relayer has accepted it (it is running against the slow API).
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
    let result = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("cancelled well before the slow call ends")
        .unwrap();
    assert_eq!(result.status, Status::Cancelled as i32, "{result:?}");
    assert_eq!(result.error.unwrap().code, Code::Cancelled as i32);
}

#[tokio::test]
async fn a_command_resent_after_a_reconnect_runs_once() {
    let env = env().await;
    env.sim.latency(Duration::from_millis(1500));
    let slow = cmd(command::Action::Scale(
        consonant_relayer::proto::ScaleWorkload {
            target: target("Deployment", "web"),
            replicas: 2,
        },
    ));
    let id = slow.command_id.clone();
    env.sim.latency(Duration::ZERO);
    output(&run(&env, apply(WEB)).await);
    env.sim.latency(Duration::from_millis(1500));
    env.sim.clear_requests();
    let first = env
        .backend
        .state()
        .submit_command(CLUSTER_ID, slow.clone())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stream dies while the scale runs, and the backend sends the same
    // command again on the next session (as one that lost the CommandAccepted would).
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
    drop(first);
    env.backend.state().forget_command(CLUSTER_ID, &id);
    let again = env
        .backend
        .state()
        .submit_command(CLUSTER_ID, slow)
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), again)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output(&result)["replicas"], 2);
    let scale_patches = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/web/scale"))
        .count();
    assert_eq!(
        scale_patches,
        1,
        "the scale ran once: {:?}",
        env.sim.requests()
    );
}

#[tokio::test]
async fn only_the_leader_sends_events_and_a_standby_takes_over() {
    let sim = SimCluster::start(SimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let backend = backend().await;
    let replica = |name: &str| {
        Relayer::start(
            RelayerOptions::new(&backend)
                .kubernetes(&kubeconfig, true)
                .env("POD_NAME", name),
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
    let web = run_command(env_backend, apply(WEB)).await;
    output(&web);
    let ready_events = |backend: &consonant_dev_backend::DevBackendHandle| {
        backend
            .state()
            .events(CLUSTER_ID, 1000)
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.kind == "workload.status" && e.object.as_ref().is_some_and(|o| o.name == "web")
            })
            .filter(|e| {
                serde_json::from_slice::<Value>(&e.payload_json).is_ok_and(|p| p["ready"] == true)
            })
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
                    target: target("Deployment", "web"),
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
