//! `consonant-relayer register` as the chart's hook runs it: the real binary
//! against a scripted HTTPS backend (private CA from rcgen) and the real
//! Kubernetes control plane (`consonant-kube-testenv`), one namespace per
//! test. Success writes the Secret by server-side apply; a second run is a
//! no-op; 401/403/409/422 each have their own message and exit code; 503s
//! are retried; TLS failures name the CA, the name or the protocol; the
//! bootstrap Secret is deleted when asked; missing RBAC (the real
//! authorizer) fails before the token is spent; no token is ever printed.

mod common;

use std::time::Duration;

use common::register::*;
use common::{eventually, eventually_async};
use consonant_relayer::register::error::exit;
use serde_json::json;

/// A scripted backend whose certificate names `localhost`, trusted through
/// `backend.ca_file`, and a fresh namespace for the Secret.
async fn trusted(answers: Vec<Answer>) -> (TestNamespace, ScriptedBackend, RegisterFiles) {
    let ns = TestNamespace::new("register").await;
    let pki = pki("consonant test CA", &["localhost"]);
    let backend = ScriptedBackend::start(&pki, answers).await;
    let files = RegisterFiles::new(&ns, "", "");
    let ca = files.write_ca(&pki.ca_pem);
    files.rewrite_backend(&format!(
        "url = \"{}\"\nca_file = \"{}\"",
        backend.url(),
        ca.display()
    ));
    (ns, backend, files)
}

fn assert_clean(run: &Run) {
    assert_no_secret(&run.output(), &[BOOTSTRAP, SCRIPTED_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_writes_the_secret_with_data_and_labels() {
    let (ns, backend, files) = trusted(vec![]).await;
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout.contains("registered as cls_scripted"),
        "{}",
        run.output()
    );
    assert_clean(&run);

    let calls = backend.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization, format!("Bearer {BOOTSTRAP}"));
    let body = &calls[0].body;
    assert_eq!(body["name"], "prod-east-1");
    assert_eq!(body["region"], "us-east-1");
    assert_eq!(body["environment"], "production");
    assert_eq!(body["labels"], serde_json::json!({"team": "relay"}));
    assert_eq!(
        body["kubernetes_version"],
        ns.plane.version.as_str(),
        "from the API server's /version"
    );
    assert!(ns.plane.version.starts_with("v1."), "{}", ns.plane.version);
    assert_eq!(body["relayer_version"], env!("CARGO_PKG_VERSION"));

    // What the API server was asked, in order: the idempotency check, the
    // RBAC dry run (before the token was spent), then the apply.
    let expected = requests(&[
        ("get", SECRET, false, 404),
        ("patch", SECRET, true, 201),
        ("patch", SECRET, false, 201),
    ]);
    assert!(
        eventually(Duration::from_secs(10), || ns.secret_requests("")
            == expected)
        .await,
        "{:?}",
        ns.secret_requests("")
    );

    let secret = ns.secret(SECRET).await.expect("Secret written");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_eq!(secret_key(&secret, "clusterToken"), SCRIPTED_TOKEN);
    assert_eq!(
        secret["data"].as_object().unwrap().len(),
        2,
        "only clusterId and clusterToken; never the bootstrap token: {secret}"
    );
    assert_eq!(secret["type"], "Opaque", "defaulted by the API server");
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "consonant-relayer");
    assert_eq!(labels["app.kubernetes.io/instance"], "relayer");
    assert_eq!(labels["app.kubernetes.io/component"], "credentials");
    // Server-side apply by `consonant-relayer`: one manager, and it owns
    // both keys and every label it applied (the dry run left nothing).
    assert_eq!(
        managers(&secret),
        [(FIELD_MANAGER.to_string(), "Apply".to_string())],
        "{secret}"
    );
    let owned = owned_fields(&secret, FIELD_MANAGER, "Apply");
    assert_eq!(
        owned,
        json!({
            "f:data": {"f:clusterId": {}, "f:clusterToken": {}},
            "f:metadata": {"f:labels": {
                "f:app.kubernetes.io/component": {},
                "f:app.kubernetes.io/instance": {},
                "f:app.kubernetes.io/name": {},
            }},
        }),
        "{secret}"
    );
}

/// `(verb, name, dry run, status)` rows as [`TestNamespace::secret_requests`] gives them.
fn requests(rows: &[(&str, &str, bool, i64)]) -> Vec<(String, String, bool, i64)> {
    rows.iter()
        .map(|(verb, name, dry_run, code)| (verb.to_string(), name.to_string(), *dry_run, *code))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_is_a_no_op_and_force_registers_again() {
    let (ns, backend, files) = trusted(vec![]).await;
    assert_eq!(run_binary(&files.chart_args(), &[]).await.code, 0);
    let again = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(
        again.stdout.contains("already registered as cls_scripted"),
        "{}",
        again.output()
    );
    assert_eq!(backend.calls().len(), 1, "the backend is not called again");
    assert_clean(&again);
    // The second run only read the Secret.
    let expected = requests(&[
        ("get", SECRET, false, 404),
        ("patch", SECRET, true, 201),
        ("patch", SECRET, false, 201),
        ("get", SECRET, false, 200),
    ]);
    assert!(
        eventually(Duration::from_secs(10), || ns.secret_requests("")
            == expected)
        .await,
        "{:?}",
        ns.secret_requests("")
    );

    let mut forced = files.chart_args();
    forced.push("--force".into());
    let run = run_binary(&forced, &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(backend.calls().len(), 2, "--force registers again");
    let secret = ns.secret(SECRET).await.expect("the Secret");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_eq!(
        managers(&secret),
        [(FIELD_MANAGER.to_string(), "Apply".to_string())],
        "the same manager applied again: {secret}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_end_at_once_with_their_own_message_and_exit_code() {
    let cases: [(u16, u8, &[&str]); 4] = [
        (
            401,
            exit::TOKEN_REFUSED,
            &["refused the bootstrap token (401", "auth.existingSecret"],
        ),
        (
            403,
            exit::TOKEN_FORBIDDEN,
            &["(403", "single-use", "issue a new bootstrap token"],
        ),
        (
            409,
            exit::NAME_TAKEN,
            &["another cluster named \"prod-east-1\" (409", "cluster.name"],
        ),
        (422, exit::INVALID_REQUEST, &["as invalid (422", "DNS-1123"]),
    ];
    for (status, code, needles) in cases {
        let (ns, backend, files) = trusted(vec![Answer::status(status)]).await;
        let run = run_binary(&files.chart_args(), &[]).await;
        assert_eq!(run.code, i32::from(code), "{status}: {}", run.output());
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .expect("an error line");
        for needle in needles {
            assert!(line.contains(needle), "{status}: {line:?} lacks {needle:?}");
        }
        assert!(
            line.contains(&format!("scripted {status}")),
            "the backend's message: {line}"
        );
        assert_eq!(backend.calls().len(), 1, "{status} is not retried");
        assert!(ns.secret(SECRET).await.is_none());
        assert_clean(&run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_twice_then_created_succeeds() {
    let mut retry_later = Answer::status(503);
    retry_later.retry_after = Some("1".into());
    let (ns, backend, files) = trusted(vec![Answer::status(503), retry_later]).await;
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(backend.calls().len(), 3);
    assert_eq!(
        run.output()
            .matches("registration attempt failed; retrying")
            .count(),
        2,
        "{}",
        run.output()
    );
    let secret = ns.secret(SECRET).await.unwrap();
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_timeout_budget_is_spent() {
    let (ns, backend, files) = trusted((0..100).map(|_| Answer::status(500)).collect()).await;
    let mut args = files.chart_args();
    args.extend(["--timeout".into(), "2s".into()]);
    let run = run_binary(&args, &[]).await;
    assert_eq!(run.code, i32::from(exit::UNREACHABLE), "{}", run.output());
    assert!(run.stderr.contains("within --timeout 2s"), "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 500"), "{}", run.stderr);
    assert!(backend.calls().len() >= 2, "retried");
    assert!(ns.secret(SECRET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_names_the_ca_and_ca_file() {
    let ns = TestNamespace::new("register").await;
    let served = pki("the server's CA", &["localhost"]);
    let other = pki("some other CA", &["localhost"]);
    let backend = ScriptedBackend::start(&served, vec![]).await;
    let files = RegisterFiles::new(&ns, "", "");
    let ca = files.write_ca(&other.ca_pem);
    files.rewrite_backend(&format!(
        "url = \"{}\"\nca_file = \"{}\"",
        backend.url(),
        ca.display()
    ));
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::TLS), "{}", run.output());
    for needle in [
        "failed: the CA",
        "UnknownIssuer",
        "backend.caFile",
        "backend.ca_file",
        "backend.tlsVerify",
    ] {
        assert!(
            run.stderr.contains(needle),
            "lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(backend.calls().is_empty());
    assert!(ns.secret(SECRET).await.is_none());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_names_the_host() {
    let ns = TestNamespace::new("register").await;
    let pki = pki("consonant test CA", &["backend.example.com"]);
    let backend = ScriptedBackend::start(&pki, vec![]).await;
    let files = RegisterFiles::new(&ns, "", "");
    let ca = files.write_ca(&pki.ca_pem);
    files.rewrite_backend(&format!(
        "url = \"{}\"\nca_file = \"{}\"",
        backend.url(),
        ca.display()
    ));
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::TLS), "{}", run.output());
    for needle in [
        "failed: the name",
        "\"localhost\"",
        "only valid for",
        "backend.tlsVerify",
    ] {
        assert!(
            run.stderr.contains(needle),
            "lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(backend.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_https_port_is_a_protocol_failure() {
    let ns = TestNamespace::new("register").await;
    // A plain-HTTP server on loopback: an https:// url to it fails the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/api/v1/clusters",
            axum::routing::post(|| async { "plain HTTP" }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("https://127.0.0.1:{port}");
    let files = RegisterFiles::new(&ns, "", "");
    files.rewrite_backend(&format!("url = \"{url}\""));
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::TLS), "{}", run.output());
    assert!(
        run.stderr.contains("failed: the protocol"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("backend.caFile / backend.tlsVerify"),
        "{}",
        run.stderr
    );
    plain.abort();
    assert!(ns.secret(SECRET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_false_registers_with_a_loud_warning() {
    let ns = TestNamespace::new("register").await;
    let pki = pki("untrusted CA", &["backend.example.com"]);
    let backend = ScriptedBackend::start(&pki, vec![]).await;
    let files = RegisterFiles::new(&ns, "", "");
    files.rewrite_backend(&format!("url = \"{}\"\ntls_verify = false", backend.url()));
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.output().contains("NOT verified"), "{}", run.output());
    assert!(
        run.output().contains("backend.tlsVerify=true"),
        "{}",
        run.output()
    );
    assert_eq!(backend.calls().len(), 1);
    assert!(ns.secret(SECRET).await.is_some());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_secret_is_deleted_when_asked() {
    let (ns, _backend, files) = trusted(vec![]).await;
    create_secret(
        &ns.client,
        &ns.name,
        "relayer-bootstrap",
        &[("token", BOOTSTRAP)],
    )
    .await;
    let mut args = files.chart_args();
    args.extend([
        "--delete-bootstrap-secret".into(),
        "relayer-bootstrap".into(),
    ]);
    let run = run_binary(&args, &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(ns.secret("relayer-bootstrap").await.is_none(), "deleted");
    assert!(ns.secret(SECRET).await.is_some());
    // A re-run (helm upgrade) finds it gone and still succeeds.
    let again = run_binary(&args, &[]).await;
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(
        again.stdout.contains("already registered"),
        "{}",
        again.output()
    );
    assert_clean(&run);
    let deletes = |ns: &TestNamespace| {
        ns.secret_requests("")
            .into_iter()
            .filter(|(verb, name, _, _)| verb == "delete" && name == "relayer-bootstrap")
            .map(|(_, _, _, code)| code)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), || deletes(&ns) == [200, 404]).await,
        "deleted once, then found gone: {:?}",
        deletes(&ns)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_the_environment_and_namespace_from_pod_namespace() {
    let (ns, backend, files) = trusted(vec![]).await;
    // Another namespace of this test's own, named only by POD_NAMESPACE.
    let pod_namespace = ns.plane.namespace("pod").await;
    let args: Vec<String> = [
        "register",
        "--config",
        &files.path("relayer.toml").display().to_string(),
        "--secret-name",
        "env-cluster",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = run_binary(
        &args,
        &[
            ("CONSONANT_BOOTSTRAP_TOKEN", BOOTSTRAP),
            ("POD_NAMESPACE", &pod_namespace),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout
            .contains(&format!("Secret {pod_namespace}/env-cluster")),
        "{}",
        run.output()
    );
    assert_eq!(
        backend.calls()[0].authorization,
        format!("Bearer {BOOTSTRAP}")
    );
    let secret = get_secret(&ns.client, &pod_namespace, "env-cluster")
        .await
        .expect("the Secret in POD_NAMESPACE");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert!(ns.secret("env-cluster").await.is_none());
    assert!(get_secret(&ns.client, "default", "env-cluster")
        .await
        .is_none());
}

/// Grants the ServiceAccount `account` the Role `rules` in `ns`.
async fn grant(ns: &TestNamespace, account: &str, rules: serde_json::Value) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": account},
        "rules": rules,
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns.name}],
    }))
    .unwrap();
    let params = kube::api::PatchParams::apply("register-test").force();
    kube::Api::<Role>::namespaced(ns.client.clone(), &ns.name)
        .patch(account, &params, &kube::api::Patch::Apply(&role))
        .await
        .unwrap();
    kube::Api::<RoleBinding>::namespaced(ns.client.clone(), &ns.name)
        .patch(account, &params, &kube::api::Patch::Apply(&binding))
        .await
        .unwrap();
}

/// Waits until the audit log holds `expected` (the requests of `user` on
/// this namespace's Secrets, in order) and nothing else.
async fn assert_requests(ns: &TestNamespace, user: &str, expected: &[(&str, &str, bool, i64)]) {
    let expected = requests(expected);
    assert!(
        eventually(Duration::from_secs(10), || ns.secret_requests(user)
            == expected)
        .await,
        "{user}'s requests: {:?}, expected {expected:?}",
        ns.secret_requests(user)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_rbac_fails_before_the_token_is_spent() {
    let (ns, backend, files) = trusted(vec![]).await;
    // The hook's identity: a ServiceAccount with no Role at all, so the real
    // authorizer refuses its first request (the idempotency GET).
    ns.service_account_kubeconfig("nobody", &files.path("kubeconfig"))
        .await;
    let user = format!("system:serviceaccount:{}:nobody", ns.name);
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::KUBERNETES), "{}", run.output());
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(
        run.stderr.contains("get and patch on this Secret"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("User \"{user}\"")),
        "the API server names who was refused: {}",
        run.stderr
    );
    assert!(
        backend.calls().is_empty(),
        "the bootstrap token was not spent"
    );
    assert_requests(&ns, &user, &[("get", SECRET, false, 403)]).await;
    assert!(ns.secret(SECRET).await.is_none());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_the_dry_run_fails_before_the_token_is_spent() {
    let (ns, backend, files) = trusted(vec![]).await;
    ns.service_account_kubeconfig("register", &files.path("kubeconfig"))
        .await;
    let user = format!("system:serviceaccount:{}:register", ns.name);
    // get and patch on the Secret by name, but no create: an apply that
    // creates the Secret needs create, and only the dry run can tell.
    grant(
        &ns,
        "register",
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "patch"]}]),
    )
    .await;
    // RBAC takes effect when the authorizer's informer sees the binding.
    let args = files.chart_args();
    let granted = eventually_async(Duration::from_secs(20), || {
        let args = args.clone();
        async move {
            let probe = run_binary(&args, &[]).await;
            probe.stderr.contains("server-side dry run")
        }
    })
    .await;
    assert!(granted, "{:?}", ns.secret_requests(&user));
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::KUBERNETES), "{}", run.output());
    for needle in [
        "cannot write (server-side dry run of) Secret",
        "403",
        "cannot create resource \"secrets\"",
        "create on secrets",
    ] {
        assert!(
            run.stderr.contains(needle),
            "lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(
        backend.calls().is_empty(),
        "the bootstrap token was not spent"
    );
    assert!(
        ns.secret(SECRET).await.is_none(),
        "the dry run wrote nothing"
    );

    // The rules docs/register.md and the chart's hook Role give: it works.
    grant(
        &ns,
        "register",
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ]),
    )
    .await;
    let registered = eventually_async(Duration::from_secs(20), || {
        let args = args.clone();
        async move { run_binary(&args, &[]).await.code == 0 }
    })
    .await;
    assert!(registered, "{:?}", ns.secret_requests(&user));
    assert_eq!(backend.calls().len(), 1, "the token was spent once");
    let secret = ns.secret(SECRET).await.expect("the Secret");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_eq!(
        managers(&secret),
        [(FIELD_MANAGER.to_string(), "Apply".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let (_ns, backend, files) = trusted(vec![]).await;
    let mut args = files.chart_args();
    let at = args
        .iter()
        .position(|a| a == "--bootstrap-token-file")
        .unwrap();
    args.drain(at..at + 2);
    let run = run_binary(&args, &[]).await;
    assert_eq!(run.code, 2, "{}", run.output());
    assert!(run.stderr.contains("no bootstrap token"), "{}", run.stderr);

    let short = files.path("short-token");
    write_file(&short, "too-short");
    args.extend(["--bootstrap-token-file".into(), short.display().to_string()]);
    let run = run_binary(&args, &[]).await;
    assert_eq!(run.code, 2, "{}", run.output());
    assert!(run.stderr.contains("at least 16"), "{}", run.stderr);
    assert!(backend.calls().is_empty());
}

/// `register` through an HTTP CONNECT proxy (the real tinyproxy), chosen
/// from the environment as the stream chooses it: the proxy's log holds the
/// CONNECT to the backend, TLS inside it still checks the backend's name
/// against the private CA, and the Secret is written. The API server stays
/// direct (NO_PROXY). A proxy that wants credentials the URL lacks fails
/// registration with the proxy's answer named, before the token is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_through_the_proxy_from_the_environment() {
    use common::proxy::Tinyproxy;

    let (ns, backend, files) = trusted(vec![]).await;
    let target = format!("localhost:{}", backend.addr.port());

    let guarded = Tinyproxy::with_basic_auth("relay", "proxy-pass-7");
    let refused = run_binary(
        &files.chart_args(),
        &[("HTTPS_PROXY", &guarded.url()), ("NO_PROXY", "127.0.0.1")],
    )
    .await;
    assert_eq!(
        refused.code,
        i32::from(exit::UNREACHABLE),
        "{}",
        refused.output()
    );
    assert!(
        refused.output().contains(&format!(
            "the proxy {} answered 407 Proxy Authentication Required to CONNECT {target}",
            guarded.url()
        )),
        "{}",
        refused.output()
    );
    assert!(backend.calls().is_empty(), "the token was never sent");

    let proxy = Tinyproxy::start();
    let run = run_binary(
        &files.chart_args(),
        &[("HTTPS_PROXY", &proxy.url()), ("NO_PROXY", "127.0.0.1")],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_clean(&run);
    assert_eq!(proxy.connects(), [target]);
    assert_eq!(backend.calls().len(), 1);
    let secret = ns.secret(SECRET).await.expect("Secret written");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
}
