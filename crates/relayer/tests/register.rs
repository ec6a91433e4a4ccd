//! `consonant-relayer register` as the chart's hook runs it: the real binary
//! against a scripted HTTPS backend (private CA from rcgen) and the
//! in-memory Kubernetes API. Success writes the Secret; a second run is a
//! no-op; 401/403/409/422 each have their own message and exit code; 503s
//! are retried; TLS failures name the CA, the name or the protocol; the
//! bootstrap Secret is deleted when asked; no token is ever printed.

mod common;

use common::register::*;
use consonant_kube_sim::{SimCluster, SimHandle, SimOptions};
use consonant_relayer::register::error::exit;

async fn sim() -> SimHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    SimCluster::start(SimOptions::default()).await.unwrap()
}

/// A scripted backend whose certificate names `localhost`, trusted through
/// `backend.ca_file`.
async fn trusted(answers: Vec<Answer>) -> (SimHandle, ScriptedBackend, RegisterFiles) {
    let sim = sim().await;
    let pki = pki("consonant test CA", &["localhost"]);
    let backend = ScriptedBackend::start(&pki, answers).await;
    let files = RegisterFiles::new(&sim, "", "");
    let ca = files.write_ca(&pki.ca_pem);
    let files = RegisterFiles {
        dir: rewrite_backend(
            files.dir,
            &format!(
                "url = \"{}\"\nca_file = \"{}\"",
                backend.url(),
                ca.display()
            ),
        ),
    };
    (sim, backend, files)
}

/// Replaces the `[backend]` section's body in the config file.
fn rewrite_backend(dir: tempfile::TempDir, backend_toml: &str) -> tempfile::TempDir {
    let path = dir.path().join("relayer.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[backend]\n", &format!("[backend]\n{backend_toml}\n")),
    )
    .unwrap();
    dir
}

fn assert_clean(run: &Run) {
    assert_no_secret(&run.output(), &[BOOTSTRAP, SCRIPTED_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_writes_the_secret_with_data_and_labels() {
    let (sim, backend, files) = trusted(vec![]).await;
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
        body["kubernetes_version"], "v1.32.3",
        "from the API server's /version"
    );
    assert_eq!(body["relayer_version"], env!("CARGO_PKG_VERSION"));

    let secret = get_secret(&sim, NAMESPACE, SECRET)
        .await
        .expect("Secret written");
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_eq!(secret_key(&secret, "clusterToken"), SCRIPTED_TOKEN);
    assert_eq!(
        secret["data"].as_object().unwrap().len(),
        2,
        "only clusterId and clusterToken; never the bootstrap token: {secret}"
    );
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "consonant-relayer");
    assert_eq!(labels["app.kubernetes.io/instance"], "relayer");
    assert_eq!(labels["app.kubernetes.io/component"], "credentials");
    let managers: Vec<_> = secret["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default(),
                m["operation"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("consonant-relayer", "Apply")),
        "{managers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_is_a_no_op_and_force_registers_again() {
    let (sim, backend, files) = trusted(vec![]).await;
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

    let mut forced = files.chart_args();
    forced.push("--force".into());
    let run = run_binary(&forced, &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(backend.calls().len(), 2, "--force registers again");
    assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_some());
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
        let (sim, backend, files) = trusted(vec![Answer::status(status)]).await;
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
        assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_none());
        assert_clean(&run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_twice_then_created_succeeds() {
    let mut retry_later = Answer::status(503);
    retry_later.retry_after = Some("1".into());
    let (sim, backend, files) = trusted(vec![Answer::status(503), retry_later]).await;
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
    let secret = get_secret(&sim, NAMESPACE, SECRET).await.unwrap();
    assert_eq!(secret_key(&secret, "clusterId"), SCRIPTED_ID);
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_timeout_budget_is_spent() {
    let (sim, backend, files) = trusted((0..100).map(|_| Answer::status(500)).collect()).await;
    let mut args = files.chart_args();
    args.extend(["--timeout".into(), "2s".into()]);
    let run = run_binary(&args, &[]).await;
    assert_eq!(run.code, i32::from(exit::UNREACHABLE), "{}", run.output());
    assert!(run.stderr.contains("within --timeout 2s"), "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 500"), "{}", run.stderr);
    assert!(backend.calls().len() >= 2, "retried");
    assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_names_the_ca_and_ca_file() {
    let sim = sim().await;
    let served = pki("the server's CA", &["localhost"]);
    let other = pki("some other CA", &["localhost"]);
    let backend = ScriptedBackend::start(&served, vec![]).await;
    let files = RegisterFiles::new(&sim, "", "");
    let ca = files.write_ca(&other.ca_pem);
    let files = RegisterFiles {
        dir: rewrite_backend(
            files.dir,
            &format!(
                "url = \"{}\"\nca_file = \"{}\"",
                backend.url(),
                ca.display()
            ),
        ),
    };
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
    assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_none());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_names_the_host() {
    let sim = sim().await;
    let pki = pki("consonant test CA", &["backend.example.com"]);
    let backend = ScriptedBackend::start(&pki, vec![]).await;
    let files = RegisterFiles::new(&sim, "", "");
    let ca = files.write_ca(&pki.ca_pem);
    let files = RegisterFiles {
        dir: rewrite_backend(
            files.dir,
            &format!(
                "url = \"{}\"\nca_file = \"{}\"",
                backend.url(),
                ca.display()
            ),
        ),
    };
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
    let sim = sim().await;
    // The simulator speaks plain HTTP: an https:// url to it fails the handshake.
    let url = format!("https://127.0.0.1:{}", sim.addr().port());
    let files = RegisterFiles::new(&sim, "", "");
    let files = RegisterFiles {
        dir: rewrite_backend(files.dir, &format!("url = \"{url}\"")),
    };
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_false_registers_with_a_loud_warning() {
    let sim = sim().await;
    let pki = pki("untrusted CA", &["backend.example.com"]);
    let backend = ScriptedBackend::start(&pki, vec![]).await;
    let files = RegisterFiles::new(&sim, "", "");
    let files = RegisterFiles {
        dir: rewrite_backend(
            files.dir,
            &format!("url = \"{}\"\ntls_verify = false", backend.url()),
        ),
    };
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.output().contains("NOT verified"), "{}", run.output());
    assert!(
        run.output().contains("backend.tlsVerify=true"),
        "{}",
        run.output()
    );
    assert_eq!(backend.calls().len(), 1);
    assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_some());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_secret_is_deleted_when_asked() {
    let (sim, _backend, files) = trusted(vec![]).await;
    create_secret(
        &sim,
        NAMESPACE,
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
    assert!(
        get_secret(&sim, NAMESPACE, "relayer-bootstrap")
            .await
            .is_none(),
        "deleted"
    );
    assert!(get_secret(&sim, NAMESPACE, SECRET).await.is_some());
    // A re-run (helm upgrade) finds it gone and still succeeds.
    let again = run_binary(&args, &[]).await;
    assert_eq!(again.code, 0, "{}", again.output());
    assert_clean(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_the_environment_and_namespace_from_pod_namespace() {
    let (sim, backend, files) = trusted(vec![]).await;
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
            ("POD_NAMESPACE", "kube-public"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(
        backend.calls()[0].authorization,
        format!("Bearer {BOOTSTRAP}")
    );
    assert!(get_secret(&sim, "kube-public", "env-cluster")
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_rbac_fails_before_the_token_is_spent() {
    let (sim, backend, files) = trusted(vec![]).await;
    sim.forbid_namespace(NAMESPACE);
    let run = run_binary(&files.chart_args(), &[]).await;
    assert_eq!(run.code, i32::from(exit::KUBERNETES), "{}", run.output());
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(
        run.stderr.contains("get and patch on this Secret"),
        "{}",
        run.stderr
    );
    assert!(
        backend.calls().is_empty(),
        "the bootstrap token was not spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let (_sim, backend, files) = trusted(vec![]).await;
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
