//! The cluster lock (protocol.md "Signed commands") over real sockets: the
//! reference backend sends what a backend would — unsigned, signed by a
//! trusted key, by a rogue one, for another cluster, stale, replayed — to
//! the real relayer binary, and every answer is checked on its code and
//! message. With keys set, state-changing commands run only signed (shown
//! on the real control plane: the Deployment's replicas move only for the
//! signed scale); without keys a signed command runs unverified.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use consonant_kube_testenv::ControlPlane;
use consonant_relayer::clock::now_unix_ms;
use consonant_relayer::proto::signing::{generate, Signer};
use consonant_relayer::proto::{
    command, command_result::Status, error::Code, Command, CommandResult, ObjectRef, ScaleWorkload,
};
use k8s_openapi::api::apps::v1::Deployment;

fn signer(key_id: &str) -> Signer {
    Signer::from_pem(key_id, generate().unwrap().0.as_bytes()).unwrap()
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A ping with a deadline `ahead_ms` from now (0 = none).
fn ping_due(ahead_ms: i64) -> Command {
    Command {
        deadline_unix_ms: if ahead_ms == 0 {
            0
        } else {
            now_unix_ms() + ahead_ms
        },
        ..ping(&id(), b"hi")
    }
}

/// `[commands]` of a relayer locked with these signers' keys.
fn locked(signers: &[&Signer], extra: &str) -> String {
    let keys: Vec<String> = signers
        .iter()
        .map(|s| format!("\"{}\" = \"{}\"", s.key_id(), s.public_key()))
        .collect();
    format!("verify_keys = {{ {} }}\n{extra}", keys.join(", "))
}

fn assert_refused(result: &CommandResult, code: Code, mentions: &str, case: &str) {
    let error = result
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("{case}: {result:?}"));
    assert_eq!(result.status, Status::Rejected as i32, "{case}: {result:?}");
    assert_eq!(error.code, code as i32, "{case}: {error:?}");
    assert!(!error.retryable, "{case}: {error:?}");
    assert!(
        error.message.contains(mentions),
        "{case}: {:?} should mention {mentions:?}",
        error.message
    );
}

async fn send(
    backend: &consonant_dev_backend::DevBackendHandle,
    command: Command,
) -> CommandResult {
    let result = run_command(backend, command.clone()).await;
    assert_eq!(
        result.command_id, command.command_id,
        "answered with the outer id"
    );
    result
}

/// Every refusal of the spec, each REJECTED with the check that failed
/// named, never with key or signature bytes, and none cached: the same id
/// sent again properly signed runs. Both keys run commands (a rotation
/// adds the new key first). `Hello.labels` say what must be signed, and
/// the audit line names the key.
#[tokio::test]
async fn a_locked_relayer_runs_only_what_a_trusted_key_signed_for_it() {
    let ops = signer("ops");
    let kms = signer("kms-2027");
    let rogue = signer("ops"); // a trusted id, another key
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend).commands(&locked(
        &[&ops, &kms],
        "signed_actions = [\"ping\", \"scale\"]\ndedup_retention = \"60s\"",
    )));
    relayer.wait_connected().await;

    let hello = backend.state().last_hello(CLUSTER_ID).expect("a Hello");
    assert_eq!(hello.labels["consonant.signature-keys"], "kms-2027,ops");
    assert_eq!(hello.labels["consonant.signed-actions"], "ping,scale");

    // Signed by either key: runs.
    for key in [&ops, &kms] {
        let result = send(&backend, key.sign(&ping_due(30_000), CLUSTER_ID)).await;
        assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    }

    // Every refusal, and what each must say.
    let mut beside = ops.sign(&ping_due(30_000), CLUSTER_ID);
    beside.action = Some(command::Action::Ping(Default::default()));
    let twice = ops.sign(&ops.sign(&ping_due(30_000), CLUSTER_ID), CLUSTER_ID);
    let mut other_id = ops.sign(&ping_due(30_000), CLUSTER_ID);
    other_id.command_id = id();
    let mut unknown = ops.sign(&ping_due(30_000), CLUSTER_ID);
    unknown.signed.as_mut().unwrap().key_id = "retired".into();
    let scale = Command {
        command_id: id(),
        deadline_unix_ms: now_unix_ms() + 30_000,
        action: Some(command::Action::Scale(ScaleWorkload {
            target: Some(ObjectRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "default".into(),
                name: "web".into(),
                uid: String::new(),
            }),
            replicas: 2,
        })),
        ..Default::default()
    };
    let cases: Vec<(&str, Command, Code, &str)> = vec![
        (
            "unsigned ping",
            ping_due(30_000),
            Code::SignatureInvalid,
            "must be signed",
        ),
        (
            "unsigned scale",
            scale.clone(),
            Code::SignatureInvalid,
            "must be signed",
        ),
        (
            "unknown key id",
            unknown,
            Code::SignatureInvalid,
            "\"retired\" is not one of this relayer's commands.verify_keys (kms-2027, ops)",
        ),
        (
            "another key under a trusted id",
            rogue.sign(&ping_due(30_000), CLUSTER_ID),
            Code::SignatureInvalid,
            "does not verify with key \"ops\"",
        ),
        (
            "signed for another cluster",
            ops.sign(&ping_due(30_000), "cls_elsewhere"),
            Code::SignatureInvalid,
            "for another cluster",
        ),
        (
            "no deadline",
            ops.sign(&ping_due(0), CLUSTER_ID),
            Code::SignatureInvalid,
            "no deadline_unix_ms",
        ),
        (
            "deadline beyond dedup_retention",
            ops.sign(&ping_due(120_000), CLUSTER_ID),
            Code::SignatureInvalid,
            "more than commands.dedup_retention (1m)",
        ),
        (
            "expired",
            ops.sign(&ping_due(-1_000), CLUSTER_ID),
            Code::SignatureInvalid,
            "expired",
        ),
        (
            "an action beside signed",
            beside,
            Code::InvalidArgument,
            "outer action",
        ),
        (
            "signed twice",
            twice,
            Code::InvalidArgument,
            "itself signed",
        ),
        (
            "differing ids",
            other_id,
            Code::InvalidArgument,
            "differs from the outer command_id",
        ),
    ];
    for (case, command, code, mentions) in cases {
        let secret_bytes: Vec<String> = command
            .signed
            .iter()
            .map(|s| STANDARD.encode(&s.signature))
            .chain([ops.public_key(), kms.public_key()])
            .collect();
        let result = send(&backend, command).await;
        assert_refused(&result, code, mentions, case);
        let message = &result.error.as_ref().unwrap().message;
        for bytes in &secret_bytes {
            assert!(
                !message.contains(bytes.trim_start_matches("ed25519:")),
                "{case}: {message}"
            );
        }
    }

    // Not cached: the refused id runs once it comes properly signed.
    let unsigned = ping_due(30_000);
    assert_refused(
        &send(&backend, unsigned.clone()).await,
        Code::SignatureInvalid,
        "must be signed",
        "unsigned",
    );
    backend
        .state()
        .forget_command(CLUSTER_ID, &unsigned.command_id);
    let result = send(&backend, ops.sign(&unsigned, CLUSTER_ID)).await;
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");

    // The audit line names the key that verified a command.
    assert!(
        eventually(Duration::from_secs(5), || relayer.output().lines().any(
            |l| l.contains(&unsigned.command_id)
                && l.contains("key_id=\"ops\"")
                && l.contains("succeeded")
        ))
        .await,
        "{}",
        relayer.output()
    );
    // Signature refusals are counted like any refusal.
    assert!(
        relayer
            .metric(
                "consonant_relayer_commands_total",
                "action=\"signed\",status=\"rejected\""
            )
            .await
            >= 7.0
    );
}

/// A signed command never runs twice in one incarnation: within its
/// deadline the dedup cache answers a replay with the first result — and
/// when the cache has evicted it (a backend flooding it), the replay guard
/// refuses it; after its deadline the replay is refused as expired.
#[tokio::test]
async fn a_signed_command_never_runs_twice() {
    let ops = signer("ops");
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend).commands(&locked(
        &[&ops],
        "signed_actions = [\"ping\"]\ndedup_retention = \"60s\"\ndedup_max_bytes = \"64KiB\"",
    )));
    relayer.wait_connected().await;
    let replay = |command: &Command| {
        // The reference backend dedups its own submissions: forget the
        // first so the very same frame goes out again.
        backend
            .state()
            .forget_command(CLUSTER_ID, &command.command_id);
        command.clone()
    };

    let first = ops.sign(&ping_due(2_500), CLUSTER_ID);
    let ran = send(&backend, first.clone()).await;
    assert_eq!(ran.status, Status::Succeeded as i32, "{ran:?}");
    let again = send(&backend, replay(&first)).await;
    assert_eq!(
        again, ran,
        "dedup answers a replay within the deadline with the first result"
    );

    // Evict it from the dedup cache (64 KiB holds a few hundred results).
    let second = ops.sign(&ping_due(20_000), CLUSTER_ID);
    assert_eq!(
        send(&backend, second.clone()).await.status,
        Status::Succeeded as i32
    );
    for _ in 0..600 {
        let filler = ops.sign(&ping_due(20_000), CLUSTER_ID);
        assert_eq!(
            send(&backend, filler).await.status,
            Status::Succeeded as i32
        );
    }
    assert!(
        relayer
            .metric("consonant_relayer_dedup_evictions", "")
            .await
            > 0.0
    );
    assert_refused(
        &send(&backend, replay(&second)).await,
        Code::SignatureInvalid,
        "replay: a signed command with this command_id already ran",
        "replay after eviction",
    );

    // After the deadline: refused as expired, however it is re-sent.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert_refused(
        &send(&backend, replay(&first)).await,
        Code::SignatureInvalid,
        "expired",
        "replay after the deadline",
    );
}

/// Without `verify_keys` a signed command is unwrapped and runs unverified
/// (whoever signed it, for whichever cluster), with the same consistency
/// checks; `Hello.labels` announce nothing to sign.
#[tokio::test]
async fn without_keys_a_signed_command_runs_unverified() {
    let stranger = signer("stranger");
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let hello = backend.state().last_hello(CLUSTER_ID).expect("a Hello");
    assert!(
        !hello.labels.contains_key("consonant.signature-keys"),
        "{:?}",
        hello.labels
    );
    assert!(!hello.labels.contains_key("consonant.signed-actions"));

    let result = send(
        &backend,
        stranger.sign(&ping(&id(), b"hello"), "cls_elsewhere"),
    )
    .await;
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    assert_eq!(result.output_json.as_ref(), br#"{"payload_len":5}"#);
    let mut beside = stranger.sign(&ping(&id(), b""), CLUSTER_ID);
    beside.action = Some(command::Action::Ping(Default::default()));
    assert_refused(
        &send(&backend, beside).await,
        Code::InvalidArgument,
        "outer action",
        "beside",
    );
}

/// On the real control plane, with the default `signed_actions`: the
/// unsigned scale changes nothing, the signed one moves the replicas, and
/// reads run signed or not.
#[tokio::test]
async fn on_a_real_cluster_only_the_signed_scale_changes_it() {
    let ops = signer("ops");
    let plane = ControlPlane::shared();
    let ns = plane.namespace("lock").await;
    let backend = backend().await;
    let relayer = Relayer::start(
        RelayerOptions::new(&backend)
            .kubernetes(&plane.kubeconfig, false)
            .commands(&locked(&[&ops], "")),
    );
    relayer.wait_connected().await;
    let due = || now_unix_ms() + 60_000;
    let target = || {
        Some(ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: ns.clone(),
            name: "web".into(),
            uid: String::new(),
        })
    };
    let apply = Command {
        command_id: id(),
        deadline_unix_ms: due(),
        action: Some(command::Action::Apply(
            consonant_relayer::proto::ApplyManifest {
                manifest: consonant_kube_sim::SAMPLE_DEPLOYMENT
                    .as_bytes()
                    .to_vec()
                    .into(),
                namespace: ns.clone(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let applied = send(&backend, ops.sign(&apply, CLUSTER_ID)).await;
    assert_eq!(applied.status, Status::Succeeded as i32, "{applied:?}");
    let scale = |replicas| Command {
        command_id: id(),
        deadline_unix_ms: due(),
        action: Some(command::Action::Scale(ScaleWorkload {
            target: target(),
            replicas,
        })),
        ..Default::default()
    };
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(plane.client().await, &ns);
    let replicas = || async {
        deployments
            .get("web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas
            .unwrap()
    };
    let before = replicas().await;

    assert_refused(
        &send(&backend, scale(5)).await,
        Code::SignatureInvalid,
        "must be signed",
        "unsigned scale",
    );
    assert_eq!(
        replicas().await,
        before,
        "the unsigned scale changed nothing"
    );

    let signed = send(&backend, ops.sign(&scale(5), CLUSTER_ID)).await;
    assert_eq!(signed.status, Status::Succeeded as i32, "{signed:?}");
    assert_eq!(replicas().await, 5);

    // Reads: unsigned as allowed, and signed (verified all the same).
    let get = |command_id: String| Command {
        command_id,
        deadline_unix_ms: due(),
        action: Some(command::Action::Get(
            consonant_relayer::proto::GetResource { target: target() },
        )),
        ..Default::default()
    };
    for (case, command) in [
        ("unsigned get", get(id())),
        ("signed get", ops.sign(&get(id()), CLUSTER_ID)),
    ] {
        let result = send(&backend, command).await;
        assert_eq!(
            result.status,
            Status::Succeeded as i32,
            "{case}: {result:?}"
        );
        let output: serde_json::Value = serde_json::from_slice(&result.output_json).unwrap();
        assert_eq!(output["object"]["spec"]["replicas"], 5, "{case}");
    }
}

/// The key holders' tools in the production binary, end to end: `keygen`
/// writes a 0600 private key and prints the public key; `sign` turns a
/// command (JSON on standard input, `--ttl`) into the signed outer command;
/// the reference backend's admin API takes that JSON as given; the locked
/// relayer runs it. The same command unsigned is refused.
#[tokio::test]
async fn keygen_and_sign_from_the_production_binary_unlock_one_command() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command as Process, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_consonant-relayer");
    let keygen = Process::new(binary)
        .args(["keygen", "--out"])
        .arg(dir.path().join("ops"))
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let public = String::from_utf8(keygen.stdout).unwrap().trim().to_string();
    assert!(public.starts_with("ed25519:"), "{public}");
    let key_file = dir.path().join("ops.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Process::new(binary)
        .args(["keygen", "--out"])
        .arg(dir.path().join("ops"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend).commands(&format!(
        "verify_keys = {{ ops = \"{public}\" }}\nsigned_actions = [\"ping\"]"
    )));
    relayer.wait_connected().await;
    let admin = format!(
        "{}/api/v1/clusters/{CLUSTER_ID}/commands?wait=true&timeout_ms=10000",
        backend.http_url()
    );
    let post = |body: String| {
        let admin = admin.clone();
        async move {
            let response = reqwest::Client::new()
                .post(&admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let command = r#"{"ping": {"payload": "aGVsbG8="}}"#;
    let refused = post(command.to_string()).await;
    assert_eq!(refused["status"], "REJECTED", "{refused}");
    assert_eq!(refused["error"]["code"], "SIGNATURE_INVALID", "{refused}");

    let mut sign = Process::new(binary)
        .args(["sign", "--key-file"])
        .arg(&key_file)
        .args([
            "--key-id",
            "ops",
            "--cluster-id",
            CLUSTER_ID,
            "--ttl",
            "2m",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sign.stdin
        .take()
        .unwrap()
        .write_all(command.as_bytes())
        .unwrap();
    let signed = sign.wait_with_output().unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let outer: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    assert_eq!(outer["signed"]["key_id"], "ops");
    assert!(outer.get("ping").is_none(), "the action is inside: {outer}");
    let ran = post(String::from_utf8(signed.stdout).unwrap()).await;
    assert_eq!(ran["status"], "SUCCEEDED", "{ran}");
    assert_eq!(ran["output"]["payload_len"], 5, "{ran}");
    assert_eq!(ran["command_id"], outer["command_id"]);

    // From a file: a missing one is refused, and a command with no
    // deadline and no --ttl is not signed.
    let sign_file = || {
        Process::new(binary)
            .args(["sign", "--key-file"])
            .arg(&key_file)
            .args(["--key-id", "ops", "--cluster-id", CLUSTER_ID])
            .arg(dir.path().join("command.json"))
            .output()
            .unwrap()
    };
    assert_eq!(sign_file().status.code(), Some(1));
    std::fs::write(dir.path().join("command.json"), command).unwrap();
    let no_ttl = sign_file();
    assert_eq!(no_ttl.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no_ttl.stderr).contains("no deadline_unix_ms: pass --ttl"),
        "{}",
        String::from_utf8_lossy(&no_ttl.stderr)
    );
}

/// The reference backend as a stand-in for an approval service
/// (`--signing-key`): what is submitted unsigned goes out signed for the
/// cluster it is sent to, and the locked relayer runs it.
#[tokio::test]
async fn the_reference_backend_signs_with_its_signing_key() {
    let ops = std::sync::Arc::new(signer("ops"));
    let backend = consonant_dev_backend::start(consonant_dev_backend::DevBackendOptions {
        clusters: vec![(
            CLUSTER_ID.to_string(),
            consonant_relayer::credentials::Secret::new(TOKEN),
        )],
        signer: Some(ops.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let relayer = Relayer::start(
        RelayerOptions::new(&backend).commands(&locked(&[&ops], "signed_actions = [\"ping\"]")),
    );
    relayer.wait_connected().await;
    let result = send(&backend, ping(&id(), b"hello")).await;
    assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
    assert!(
        eventually(Duration::from_secs(5), || relayer
            .output()
            .contains("key_id=\"ops\""))
        .await,
        "{}",
        relayer.output()
    );
}
