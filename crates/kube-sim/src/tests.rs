//! Tests through an unmodified `kube::Client` against a running simulator.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};

use super::{SimCluster, SimHandle, SimOptions};

async fn start() -> (SimHandle, Client) {
    let sim = SimCluster::start(SimOptions {
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .expect("sim starts");
    let client = sim.client().expect("client builds");
    (sim, client)
}

fn deployment_json(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "tier": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}},
        },
    })
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(deployment_json(name, replicas)).unwrap()
}

fn api_code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `check` until it returns Some, for up to 5 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..100 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn ready_replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

async fn pod_names(client: &Client, app: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn discovery_finds_builtin_and_crd_kinds() {
    let (sim, client) = start().await;
    let version = client.apiserver_version().await.unwrap();
    assert!(
        version.git_version.starts_with("v1.32."),
        "{}",
        version.git_version
    );
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let apps = discovery.get("apps").expect("apps group");
    let (deploy, caps) = apps.recommended_kind("Deployment").expect("Deployment");
    assert_eq!(deploy.plural, "deployments");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps
        .subresources
        .iter()
        .any(|(r, _)| r.plural == "deployments/scale" || r.plural == "scale"));
    let kagent = discovery.get("kagent.dev").expect("kagent.dev group");
    let (agent, _) = kagent.recommended_kind("Agent").expect("Agent");
    assert_eq!(agent.version, "v1alpha2");

    // DynamicObject with the discovered ApiResource.
    let agents: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &agent);
    let mut obj = DynamicObject::new("helper", &agent);
    obj.data = json!({"spec": {"description": "test agent"}});
    agents.create(&PostParams::default(), &obj).await.unwrap();
    let fetched = agents.get("helper").await.unwrap();
    assert_eq!(fetched.data["spec"]["description"], "test agent");
    assert_eq!(
        agents
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"consonant-system".to_string()), "{names:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn deployment_crud_with_selectors_and_pagination() {
    let (sim, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    let mut other = deployment("db", 1);
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "data".into());
    api.create(&PostParams::default(), &other).await.unwrap();

    let again = api
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap_err();
    assert_eq!(api_code(again), 409);

    let web = api.get("web").await.unwrap();
    assert_eq!(web.metadata.generation, Some(1));
    assert!(web.metadata.uid.is_some() && web.metadata.resource_version.is_some());

    let by_tier = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(by_tier.items.len(), 1);
    let by_set = api
        .list(&ListParams::default().labels("tier in (web,data),!canary"))
        .await
        .unwrap();
    assert_eq!(by_set.items.len(), 2);
    let first_page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(first_page.items.len(), 1);
    let token = first_page
        .metadata
        .continue_
        .clone()
        .expect("continue token");
    let second = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_ne!(
        first_page.items[0].metadata.name,
        second.items[0].metadata.name
    );
    let all: Api<Deployment> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    assert_eq!(api_code(api.get("missing").await.unwrap_err()), 404);

    // Pods appear, then go away with the deployment.
    eventually("two web pods", || async {
        (pod_names(&client, "web").await.len() == 2).then_some(())
    })
    .await;
    api.delete("web", &DeleteParams::background())
        .await
        .unwrap();
    eventually("web pods deleted", || async {
        pod_names(&client, "web").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(api_code(api.get("web").await.unwrap_err()), 404);

    // Orphan keeps the pods and strips the owner reference.
    eventually("db pod", || async {
        (pod_names(&client, "db").await.len() == 1).then_some(())
    })
    .await;
    api.delete("db", &DeleteParams::orphan()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let orphan = pods
        .list(&ListParams::default().labels("app=db"))
        .await
        .unwrap();
    assert_eq!(orphan.items.len(), 1);
    assert!(orphan.items[0]
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty()));

    // A namespaced object in a missing namespace is 404.
    let elsewhere: Api<ConfigMap> = Api::namespaced(client, "nope");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    assert_eq!(
        api_code(
            elsewhere
                .create(&PostParams::default(), &cm)
                .await
                .unwrap_err()
        ),
        404
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_dry_run_stores_nothing() {
    let (sim, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let pp = PatchParams::apply("consonant-relayer").force();
    let created = api
        .patch("api", &pp, &Patch::Apply(&deployment_json("api", 1)))
        .await
        .unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(1));
    let managers: Vec<String> = created
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["consonant-relayer".to_string()]);

    let mut changed = deployment_json("api", 3);
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    let updated = api
        .patch("api", &pp, &Patch::Apply(&changed))
        .await
        .unwrap();
    assert_eq!(updated.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(updated.metadata.generation, Some(2));

    let dry = PatchParams::apply("consonant-relayer").force().dry_run();
    api.patch("ghost", &dry, &Patch::Apply(&deployment_json("ghost", 1)))
        .await
        .unwrap();
    assert_eq!(api_code(api.get("ghost").await.unwrap_err()), 404);

    // Merge and strategic merge patches.
    let merged = api
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.metadata.labels.unwrap()["x"], "y");
    let sidecar = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "envoy"}]}}}});
    let strategic = api
        .patch("api", &PatchParams::default(), &Patch::Strategic(sidecar))
        .await
        .unwrap();
    assert_eq!(
        strategic
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers
            .len(),
        2
    );
    let requests = sim.requests();
    assert!(requests
        .iter()
        .any(|r| r.method == "PATCH" && r.query.contains("fieldManager=consonant-relayer")));
    sim.shutdown().await;
}

#[tokio::test]
async fn scale_restart_and_logs() {
    let (sim, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    let scale = api.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    let scaled = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(3));
    eventually("3 ready replicas", || async {
        (ready_replicas(&api, "web").await == 3).then_some(())
    })
    .await;
    let before = pod_names(&client, "web").await;
    assert_eq!(before.len(), 3);
    assert_eq!(
        api.get_scale("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .selector
            .as_deref(),
        Some("app=web")
    );

    // Restart: the annotation in the pod template replaces every pod.
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"consonant.xyz/restartedAt": "cmd-1"}}}}});
    api.patch("web", &PatchParams::default(), &Patch::Strategic(restart))
        .await
        .unwrap();
    let after = eventually("replaced pods", || async {
        let names = pod_names(&client, "web").await;
        (names.len() == 3 && names.iter().all(|n| !before.contains(n))).then_some(names)
    })
    .await;
    eventually("ready after restart", || async {
        (ready_replicas(&api, "web").await == 3).then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let text = pods
        .logs(
            &after[0],
            &LogParams {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.trim_end().ends_with("ready"), "{text}");
    let all = pods.logs(&after[0], &LogParams::default()).await.unwrap();
    assert!(all.contains(&format!("{} started", after[0])), "{all}");
    let bad = pods
        .logs(
            &after[0],
            &LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await;
    let err = bad.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("app")),
        "{err:?}"
    );
    assert_eq!(
        api_code(
            pods.logs("missing", &LogParams::default())
                .await
                .unwrap_err()
        ),
        404
    );

    // Scale down removes pods.
    api.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("one pod", || async {
        (pod_names(&client, "web").await.len() == 1).then_some(())
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn watcher_sees_added_then_ready() {
    let (sim, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels("app=watched"),
    )
    .boxed();
    // Drain the initial (empty) listing.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitDone) => break,
            Some(_) => continue,
            None => panic!("watcher ended"),
        }
    }
    api.create(&PostParams::default(), &deployment("watched", 2))
        .await
        .unwrap();
    let mut seen_unready = false;
    let ready = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let watcher::Event::Apply(d) = event {
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                if ready == 2 {
                    return d;
                }
                seen_unready = true;
            }
        }
        panic!("watcher ended");
    })
    .await
    .expect("deployment became ready");
    assert!(
        seen_unready,
        "the first event shows the deployment before it is ready"
    );
    assert_eq!(ready.status.unwrap().observed_generation, Some(1));
    sim.shutdown().await;
}

#[tokio::test]
async fn lease_conflicts_and_fault_switches() {
    let (sim, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "consonant-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "relayer-leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut first = created.clone();
    first.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("relayer-leader", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created;
    stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = leases
        .replace("relayer-leader", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_code(err), 409);

    sim.forbid_namespace("consonant-system");
    assert_eq!(
        api_code(leases.get("relayer-leader").await.unwrap_err()),
        403
    );
    sim.clear();
    assert_eq!(
        leases
            .get("relayer-leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("b")
    );

    sim.fail_next(1, 500);
    assert_eq!(
        api_code(leases.get("relayer-leader").await.unwrap_err()),
        500
    );
    assert!(leases.get("relayer-leader").await.is_ok());
    // kube's default retry layer absorbs a single 503: two requests, one answer.
    sim.clear_requests();
    sim.fail_next(1, 503);
    assert!(leases.get("relayer-leader").await.is_ok());
    assert_eq!(sim.requests().len(), 2);

    // The HTTP switch works too.
    let url = format!("{}/sim/faults", sim.url());
    let http = reqwest::Client::new();
    let response = http
        .post(&url)
        .json(&json!({"forbid_namespace": "default"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    assert_eq!(
        api_code(cms.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    http.post(&url)
        .json(&json!({"clear": true}))
        .send()
        .await
        .unwrap();
    assert!(cms.list(&ListParams::default()).await.is_ok());
    sim.shutdown().await;
}

#[tokio::test]
async fn kubeconfig_client_and_jobs() {
    let (sim, _) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::default_namespaced(client);
    let job = serde_json::from_value(
        json!({"metadata": {"name": "once"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually("job complete", || async {
        let status = jobs.get("once").await.unwrap().status?;
        (status.succeeded == Some(1)).then_some(())
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn raw_watch_follows_label_changes_and_reports_gone() {
    let sim = SimCluster::start(SimOptions {
        watch_history: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = sim.client().unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c", "labels": {"team": "a"}}}))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv = created.metadata.resource_version.unwrap();
    let wp = kube::api::WatchParams::default()
        .labels("team=a")
        .timeout(5);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match stream.try_next().await.unwrap().expect("event") {
            kube::api::WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            kube::api::WatchEvent::Deleted(_) => kinds.push("DELETED"),
            kube::api::WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        kinds,
        ["MODIFIED", "DELETED"],
        "relabeling out of the selector reads as DELETED"
    );

    // Push the first events out of the 3-event history: a watch from there is 410.
    for i in 0..4 {
        let extra: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("x{i}")}})).unwrap();
        cms.create(&PostParams::default(), &extra).await.unwrap();
    }
    let mut old = cms
        .watch(&kube::api::WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap().expect("event") {
        kube::api::WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn preconditions_and_conflicts() {
    let (sim, client) = start().await;
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}))
            .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let take = |holder: &str| json!({"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": holder}});
    leases
        .patch("l", &PatchParams::default(), &Patch::Merge(take("b")))
        .await
        .unwrap();
    let err = leases
        .patch("l", &PatchParams::default(), &Patch::Merge(take("c")))
        .await
        .unwrap_err();
    assert_eq!(api_code(err), 409);
    let mut applied = take("d");
    applied["apiVersion"] = json!("coordination.k8s.io/v1");
    applied["kind"] = json!("Lease");
    applied["metadata"]["name"] = json!("l");
    let err = leases
        .patch(
            "l",
            &PatchParams::apply("x").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(
        api_code(err),
        409,
        "a stale resourceVersion in an apply is a conflict too"
    );

    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_code(leases.delete("l", &wrong).await.unwrap_err()), 409);
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    leases.delete("l", &right).await.unwrap();
    assert_eq!(api_code(leases.delete("l", &right).await.unwrap_err()), 404);

    // deletecollection with a selector.
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    for (name, team) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("team=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["c"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn statefulsets_daemonsets_status_and_secrets() {
    let (sim, client) = start().await;
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::default_namespaced(client.clone());
    let mut body = deployment_json("store", 1);
    body["kind"] = json!("StatefulSet");
    body["spec"]["serviceName"] = json!("store");
    sts.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap();
    sts.patch_scale(
        "store",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    eventually("statefulset ready", || async {
        let ready = sts.get("store").await.unwrap().status?.ready_replicas?;
        (ready == 2).then_some(())
    })
    .await;

    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::default_namespaced(client.clone());
    let mut body = deployment_json("agent", 1);
    body["kind"] = json!("DaemonSet");
    body["spec"].as_object_mut().unwrap().remove("replicas");
    ds.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap();
    eventually("one pod per node", || async {
        let status = ds.get("agent").await.unwrap().status?;
        (status.number_ready == 2 && status.desired_number_scheduled == 2).then_some(())
    })
    .await;

    // Status subresource: only status changes, generation stays.
    let deploys: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut no_replicas = deployment_json("plain", 1);
    no_replicas["spec"]
        .as_object_mut()
        .unwrap()
        .remove("replicas");
    let created = deploys
        .create(
            &PostParams::default(),
            &serde_json::from_value(no_replicas).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().replicas,
        Some(1),
        "replicas defaults to 1"
    );
    let patched = deploys
        .patch_status(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 7}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().observed_generation, Some(7));
    assert_eq!(patched.spec.unwrap().replicas, Some(1));

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client, "consonant-system");
    let secret = serde_json::from_value(json!({"metadata": {"name": "consonant-relayer-cluster"},
        "stringData": {"clusterId": "cls_1"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let stored = secrets.get("consonant-relayer-cluster").await.unwrap();
    assert_eq!(stored.data.unwrap()["clusterId"].0, b"cls_1");
    sim.shutdown().await;
}

#[tokio::test]
async fn crds_created_at_run_time_are_served_and_latency_applies() {
    let (sim, client) = start().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]}}))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (widget, caps) = discovery
        .get("example.com")
        .unwrap()
        .recommended_kind("Widget")
        .unwrap();
    assert_eq!(caps.scope, Scope::Cluster);
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &widget);
    let applied = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}});
    widgets
        .patch(
            "w",
            &PatchParams::apply("consonant-relayer"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 3);
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_code(widgets.get("w").await.unwrap_err()), 404);

    sim.latency(Duration::from_millis(150));
    let started = std::time::Instant::now();
    client.apiserver_version().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.shutdown().await;
}

#[tokio::test]
async fn crashing_images_never_turn_ready() {
    let (sim, client) = start().await;
    let api: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut body = deployment_json("broken", 1);
    body["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:crash");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod = eventually("crash-looping pod", || async {
        let pod = pods
            .list(&ListParams::default().labels("app=broken"))
            .await
            .unwrap()
            .items
            .pop()?;
        let waiting = pod.status.as_ref()?.container_statuses.as_ref()?[0]
            .state
            .as_ref()?
            .waiting
            .clone()?;
        (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then_some(pod)
    })
    .await;
    assert_eq!(ready_replicas(&api, "broken").await, 0);
    let text = pods
        .logs(pod.metadata.name.as_deref().unwrap(), &LogParams::default())
        .await
        .unwrap();
    assert!(text.contains("exited with code 1"), "{text}");

    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::default_namespaced(client);
    let job = serde_json::from_value(
        json!({"metadata": {"name": "fails"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:crash"}]}}}}),
    )
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually("job failed", || async {
        let status = jobs.get("fails").await.unwrap().status?;
        (status.failed == Some(1)).then_some(())
    })
    .await;
    sim.shutdown().await;
}
