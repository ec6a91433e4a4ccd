//! Cluster credentials from registration to rotation, end to end with the
//! reference backend and the real Kubernetes control plane
//! (`consonant-kube-testenv`, one namespace per test): `register` writes
//! the Secret by server-side apply, the relayer runs on it, the backend
//! rotates the token, the relayer writes it back to the Secret (a JSON merge
//! patch that keeps `clusterId` and the labels) and reconnects with it, and
//! the old token is refused afterwards. Also: a failed write-back keeps the
//! token in memory and is counted, and — at `trace` level, text and JSON —
//! no token ever appears in any output.

mod common;

use std::path::Path;
use std::time::Duration;

use common::register::*;
use common::*;
use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_relayer::credentials::Secret;
use serde_json::{json, Value};

const CLUSTER_SECRET: &str = "relayer-cluster";

struct World {
    ns: TestNamespace,
    backend: DevBackendHandle,
    files: RegisterFiles,
}

/// The reference backend (accepting only `BOOTSTRAP`), a namespace of this
/// test's own, and a register config pointing at both.
async fn world(logging: &str) -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ns = TestNamespace::new("credentials").await;
    let backend = devbackend::start(DevBackendOptions {
        grpc_listen: free_addr(),
        http_listen: free_addr(),
        bootstrap_tokens: vec![Secret::new(BOOTSTRAP)],
        ..Default::default()
    })
    .await
    .unwrap();
    let files = RegisterFiles::new(
        &ns,
        &format!(
            "url = \"{}\"\ngrpc_endpoint = \"{}\"",
            backend.http_url(),
            backend.grpc_url()
        ),
        logging,
    );
    World { ns, backend, files }
}

impl World {
    async fn register(&self, env: &[(&str, &str)]) -> Run {
        let run = run_binary(&self.files.chart_args(), env).await;
        assert_eq!(run.code, 0, "{}", run.output());
        run
    }

    async fn secret(&self) -> (String, String) {
        let secret = self
            .ns
            .secret(CLUSTER_SECRET)
            .await
            .expect("cluster Secret");
        (
            secret_key(&secret, "clusterId"),
            secret_key(&secret, "clusterToken"),
        )
    }

    /// A relayer whose credential files hold what the Secret holds (as
    /// kubelet would mount it), with write-back to that Secret.
    async fn relayer(&self, level: &str, env: &[(&str, &str)]) -> Relayer {
        let (cluster_id, token) = self.secret().await;
        let kubeconfig = self.files.path("kubeconfig");
        let mut options = RelayerOptions::new(&self.backend).kubernetes(&kubeconfig, false);
        options.cluster_id = cluster_id;
        options.token = token;
        options.credentials_extra = format!(
            "secret_name = \"{CLUSTER_SECRET}\"\nsecret_namespace = \"{}\"",
            self.ns.name
        );
        options.level = level.to_string();
        options.connection =
            "heartbeat_interval = \"1s\"\nbackoff_base = \"50ms\"\nbackoff_max = \"500ms\"\n"
                .into();
        for (key, value) in env {
            options = options.env(key, value);
        }
        Relayer::start(options)
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> Value {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.backend.http_url()))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// The session ids the backend holds for `cluster_id` now.
    async fn sessions(&self, cluster_id: &str) -> Vec<String> {
        let clusters = self.admin(reqwest::Method::GET, "/api/v1/clusters").await;
        clusters
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["cluster_id"] == cluster_id)
            .flat_map(|c| c["sessions"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["session_id"].as_str().map(str::to_string))
            .collect()
    }

    async fn wait_new_session(&self, cluster_id: &str, old: &[String]) -> String {
        let mut last = Vec::new();
        for _ in 0..300 {
            last = self.sessions(cluster_id).await;
            if let [only] = last.as_slice() {
                if !old.contains(only) {
                    return only.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new session for {cluster_id}; sessions {last:?}, before {old:?}");
    }

    async fn wait_secret_token_change(&self, from: &str) -> String {
        for _ in 0..300 {
            let (_, token) = self.secret().await;
            if token != from {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the Secret still holds the old token");
    }
}

/// Replaces a credential file atomically, as kubelet's `..data` swap does.
fn kubelet_sync(creds: &Path, token: &str) {
    let tmp = creds.join(".clusterToken.tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, creds.join("clusterToken")).unwrap();
}

/// A relayer with only `token` in its files: is it refused?
async fn refused_with(world: &World, cluster_id: &str, token: &str) -> String {
    let mut options = RelayerOptions::new(&world.backend);
    options.cluster_id = cluster_id.to_string();
    options.token = token.to_string();
    let probe = Relayer::start(options);
    let health = probe
        .wait_health(Duration::from_secs(15), |h| {
            h["grpc"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("refused the cluster credentials"))
        })
        .await;
    health["grpc"]["lastError"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_end_to_end_writes_the_secret_and_the_next_session_uses_it() {
    let world = world("").await;
    world.register(&[]).await;
    let (cluster_id, first_token) = world.secret().await;
    assert!(cluster_id.starts_with("cls_"), "{cluster_id}");

    let relayer = world.relayer("info", &[]).await;
    relayer.wait_connected().await;
    let first_session = world.wait_new_session(&cluster_id, &[]).await;

    world
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster_id}/rotate"),
        )
        .await;
    let rotated = world.wait_secret_token_change(&first_token).await;
    let (id_after, _) = world.secret().await;
    assert_eq!(id_after, cluster_id, "clusterId is kept");
    let secret = world.ns.secret(CLUSTER_SECRET).await.unwrap();
    assert_eq!(
        secret["metadata"]["labels"],
        json!({
            "app.kubernetes.io/name": "consonant-relayer",
            "app.kubernetes.io/instance": "relayer",
            "app.kubernetes.io/component": "credentials",
        }),
        "the labels are kept: {secret}"
    );
    assert_eq!(secret["data"].as_object().unwrap().len(), 2, "{secret}");
    // The real managedFields: register's server-side apply still owns
    // clusterId and the labels; the write-back (a merge patch, operation
    // Update, same field manager) took over clusterToken alone.
    assert_eq!(
        managers(&secret),
        [
            (FIELD_MANAGER.to_string(), "Apply".to_string()),
            (FIELD_MANAGER.to_string(), "Update".to_string()),
        ],
        "{secret}"
    );
    assert_eq!(
        owned_fields(&secret, FIELD_MANAGER, "Apply"),
        json!({
            "f:data": {"f:clusterId": {}},
            "f:metadata": {"f:labels": {
                "f:app.kubernetes.io/component": {},
                "f:app.kubernetes.io/instance": {},
                "f:app.kubernetes.io/name": {},
            }},
        }),
        "{secret}"
    );
    assert_eq!(
        owned_fields(&secret, FIELD_MANAGER, "Update"),
        json!({"f:data": {"f:clusterToken": {}}}),
        "{secret}"
    );

    // The relayer reconnects with the rotated token: a new session, and the
    // old token is refused from then on.
    let second_session = world
        .wait_new_session(&cluster_id, std::slice::from_ref(&first_session))
        .await;
    relayer.wait_connected().await;
    let refusal = refused_with(&world, &cluster_id, &first_token).await;
    assert!(
        refusal.contains("PermissionDenied") || refusal.contains("Unauthenticated"),
        "{refusal}"
    );
    assert_eq!(
        relayer
            .metric("consonant_relayer_credentials_writebacks_total", "")
            .await,
        1.0
    );
    assert_eq!(
        relayer
            .metric("consonant_relayer_credentials_writeback_failures_total", "")
            .await,
        0.0
    );

    // Before kubelet syncs the mount the files still hold the old token: a
    // reconnect must keep the rotated one.
    world
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster_id}/drain"),
        )
        .await;
    let third_session = world
        .wait_new_session(
            &cluster_id,
            &[first_session.clone(), second_session.clone()],
        )
        .await;
    relayer.wait_connected().await;

    // kubelet syncs the Secret: the files now agree, and a reconnect still works.
    kubelet_sync(&relayer.creds_dir(), &format!("{rotated}\n"));
    world
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster_id}/drain"),
        )
        .await;
    world
        .wait_new_session(&cluster_id, &[first_session, second_session, third_session])
        .await;
    relayer.wait_connected().await;
    assert_no_secret(&relayer.output(), &[&first_token, &rotated, BOOTSTRAP]);
}

/// Why the write-back is a merge patch: on a real API server, a server-side
/// apply of `clusterToken` alone by the manager that applied the whole
/// Secret at registration removes what it no longer applies — `clusterId`
/// and the labels. (The simulator kept them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_of_the_token_alone_would_drop_cluster_id_and_the_labels() {
    use k8s_openapi::api::core::v1::Secret as KubeSecret;
    use kube::api::{Api, Patch, PatchParams};
    let world = world("").await;
    world.register(&[]).await;
    let (cluster_id, _) = world.secret().await;
    assert!(cluster_id.starts_with("cls_"), "{cluster_id}");
    let api: Api<KubeSecret> = Api::namespaced(world.ns.client.clone(), &world.ns.name);
    let token_only = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CLUSTER_SECRET},
        "data": {"clusterToken": "cm90YXRlZA=="},
    });
    // A dry run: what the apply would leave.
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = true;
    let would = api
        .patch(CLUSTER_SECRET, &params, &Patch::Apply(&token_only))
        .await
        .unwrap();
    let would = serde_json::to_value(would).unwrap();
    assert_eq!(secret_key(&would, "clusterToken"), "rotated");
    assert!(would["data"].get("clusterId").is_none(), "{would}");
    assert!(
        would["metadata"]["labels"]
            .as_object()
            .is_none_or(|labels| labels.is_empty()),
        "{would}"
    );
    // The Secret itself is untouched.
    assert_eq!(world.secret().await.0, cluster_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_back_keeps_the_token_in_memory_and_counts_it() {
    let world = world("").await;
    world.register(&[]).await;
    let (cluster_id, first_token) = world.secret().await;
    // Point write-back at a Secret that does not exist: the patch fails (404).
    let mut options =
        RelayerOptions::new(&world.backend).kubernetes(&world.files.path("kubeconfig"), false);
    options.cluster_id = cluster_id.clone();
    options.token = first_token.clone();
    options.credentials_extra = format!(
        "secret_name = \"missing-cluster\"\nsecret_namespace = \"{}\"",
        world.ns.name
    );
    let relayer = Relayer::start(options);
    relayer.wait_connected().await;
    let first_session = world.wait_new_session(&cluster_id, &[]).await;

    world
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster_id}/rotate"),
        )
        .await;
    world.wait_new_session(&cluster_id, &[first_session]).await;
    relayer.wait_connected().await;
    assert!(
        eventually(Duration::from_secs(10), || relayer
            .output()
            .contains("could not write the cluster token"))
        .await,
        "{}",
        relayer.output()
    );
    assert_eq!(
        relayer
            .metric("consonant_relayer_credentials_writeback_failures_total", "")
            .await,
        1.0
    );
    let actors = relayer.json("/debug/actors").await.unwrap();
    let writer = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "CredentialWriter")
        .expect("CredentialWriter in /debug/actors")
        .clone();
    assert_eq!(writer["state"], "Failed", "{writer}");
    assert!(
        writer["last_error"].as_str().unwrap().contains("404"),
        "{writer}"
    );
    // The Secret keeps the first token; the relayer lives on the rotated one.
    assert_eq!(world.secret().await.1, first_token);
    refused_with(&world, &cluster_id, &first_token).await;
}

/// Runs register and run at trace level in `format`, rotates, drains, and
/// greps every line either printed for the bootstrap token and both cluster
/// tokens (plain and base64).
async fn no_token_in_any_output(format: &str) {
    let logging = format!("[logging]\nlevel = \"trace\"\nformat = \"{format}\"");
    let world = world(&logging).await;
    let register = world.register(&[]).await;
    assert!(
        register.output().lines().count() > 20,
        "register really logged at trace: {}",
        register.output()
    );
    let (cluster_id, first_token) = world.secret().await;

    let relayer = world
        .relayer("trace", &[("CONSONANT_RELAYER__LOGGING__FORMAT", format)])
        .await;
    relayer.wait_connected().await;
    let first_session = world.wait_new_session(&cluster_id, &[]).await;
    world
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/clusters/{cluster_id}/rotate"),
        )
        .await;
    let rotated = world.wait_secret_token_change(&first_token).await;
    world.wait_new_session(&cluster_id, &[first_session]).await;
    relayer.wait_connected().await;
    assert!(
        eventually(Duration::from_secs(10), || relayer
            .output()
            .contains("cluster token written to the Secret"))
        .await,
        "{}",
        relayer.output()
    );
    let output = relayer.output();
    assert!(
        output.contains("TRACE") || output.contains("\"level\":\"TRACE\""),
        "relayer really logged at trace"
    );
    if format == "json" {
        assert!(
            output
                .lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.starts_with('{')),
            "JSON lines only"
        );
    }

    // The same again for register over HTTPS (rustls and hyper traces).
    let pki = pki("consonant test CA", &["localhost"]);
    let https = ScriptedBackend::start(&pki, vec![]).await;
    let ca = world.files.write_ca(&pki.ca_pem);
    let config = world.files.path("relayer.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"{}\"", world.backend.http_url()),
        &format!("url = \"{}\"\nca_file = \"{}\"", https.url(), ca.display()),
    );
    std::fs::write(&config, text).unwrap();
    let mut args: Vec<String> = world
        .files
        .chart_args()
        .into_iter()
        .map(|a| {
            if a == SECRET {
                "https-cluster".to_string()
            } else {
                a
            }
        })
        .collect();
    args.push("--force".into());
    let over_tls = run_binary(&args, &[]).await;
    assert_eq!(over_tls.code, 0, "{}", over_tls.output());
    assert!(
        over_tls.output().contains("rustls"),
        "rustls traced: {}",
        over_tls.output()
    );

    let all = format!("{}{}{}", register.output(), output, over_tls.output());
    assert_no_secret(&all, &[BOOTSTRAP, &first_token, &rotated, SCRIPTED_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_output_at_trace_text() {
    no_token_in_any_output("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_output_at_trace_json() {
    no_token_in_any_output("json").await;
}
