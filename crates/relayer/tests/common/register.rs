//! Harness for `register`: a private PKI (rcgen), a scripted HTTPS
//! registration backend on loopback, and the `register` binary run as a
//! real process against the real control plane (`consonant-kube-testenv`),
//! one namespace per test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use consonant_kube_testenv::ControlPlane;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

/// A bootstrap token as the chart's README advises (48 bytes of base64).
pub(crate) const BOOTSTRAP: &str =
    "UmVnaXN0ZXJCb290c3RyYXBUb2tlbkZvclRlc3RzMDEyMzQ1Njc4OWFiY2RlZmdo";
pub(crate) const SCRIPTED_ID: &str = "cls_scripted";
pub(crate) const SCRIPTED_TOKEN: &str = "scripted-cluster-token-5f1d9c0e7b2a4c68";
pub(crate) const SECRET: &str = "relayer-cluster";
/// The field manager of every write the relayer and `register` make.
pub(crate) const FIELD_MANAGER: &str = "consonant-relayer";

/// A namespace of its own on the shared control plane, with an admin client
/// (for the test's own reads and writes: the binaries use kubeconfigs).
pub(crate) struct TestNamespace {
    pub plane: &'static ControlPlane,
    pub name: String,
    pub client: kube::Client,
}

impl TestNamespace {
    pub(crate) async fn new(prefix: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plane = ControlPlane::shared();
        let name = plane.namespace(prefix).await;
        let client = plane.client().await;
        Self {
            plane,
            name,
            client,
        }
    }

    /// The Secret `name` in this namespace, as JSON (None when absent).
    pub(crate) async fn secret(&self, name: &str) -> Option<Value> {
        get_secret(&self.client, &self.name, name).await
    }

    /// A kubeconfig at `path` for the ServiceAccount `account` of this
    /// namespace (created if missing): no RBAC unless the test grants it.
    pub(crate) async fn service_account_kubeconfig(&self, account: &str, path: &Path) {
        let token = self.plane.service_account_token(&self.name, account).await;
        self.plane
            .write_kubeconfig_for_token(&token, &self.name, path);
    }

    /// The audit log's requests on Secrets in this namespace (by `user`, or
    /// by anyone when it is empty), in the order they completed:
    /// `(verb, name, dry run, HTTP status)`.
    pub(crate) fn secret_requests(&self, user: &str) -> Vec<(String, String, bool, i64)> {
        self.plane
            .audit_events()
            .into_iter()
            .filter(|event| {
                (user.is_empty() || event["user"]["username"] == user)
                    && event["objectRef"]["resource"] == "secrets"
                    && event["objectRef"]["namespace"] == self.name.as_str()
            })
            .map(|event| {
                (
                    event["verb"].as_str().unwrap_or_default().to_string(),
                    event["objectRef"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    event["requestURI"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("dryRun=All"),
                    event["responseStatus"]["code"].as_i64().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// A CA and a server certificate it signed for `names`.
pub(crate) struct Pki {
    pub ca_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

pub(crate) fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// Serves `app` over TLS with `pki`'s certificate (ALPN h2 and http/1.1,
/// so gRPC clients work too) on a free loopback port.
pub(crate) async fn serve_tls(pki: &Pki, app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A failed handshake is what the TLS tests provoke.
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
    (addr, task)
}

/// One scripted answer: status, JSON body, optional Retry-After.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            body: json!({"error": format!("scripted {status}")}),
            retry_after: None,
        }
    }
    pub(crate) fn created() -> Self {
        Self {
            status: 201,
            body: json!({"cluster_id": SCRIPTED_ID, "cluster_token": SCRIPTED_TOKEN}),
            retry_after: None,
        }
    }
}

/// A request the scripted backend received.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    calls: Mutex<Vec<Call>>,
}

/// An HTTPS server on 127.0.0.1 answering `POST /api/v1/clusters` from a
/// script (201 with `SCRIPTED_ID`/`SCRIPTED_TOKEN` once the script is empty).
pub(crate) struct ScriptedBackend {
    pub addr: SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    pub(crate) async fn start(pki: &Pki, answers: Vec<Answer>) -> Self {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            calls: Mutex::default(),
        });
        let app = Router::new()
            .route("/api/v1/clusters", post(answer))
            .with_state(script.clone());
        let (addr, task) = serve_tls(pki, app).await;
        Self { addr, script, task }
    }

    /// `https://localhost:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.script.calls.lock().unwrap().clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(script): State<Arc<Script>>, headers: HeaderMap, body: String) -> Response {
    script.calls.lock().unwrap().push(Call {
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    });
    let next = script
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(Answer::created);
    let mut response =
        (StatusCode::from_u16(next.status).unwrap(), Json(next.body)).into_response();
    if let Some(after) = next.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    response
}

/// A temp dir with the relayer config, the bootstrap token file, the CA and
/// a kubeconfig (the control plane's admin one, until a test replaces it),
/// for the Secret in `namespace`.
pub(crate) struct RegisterFiles {
    pub dir: tempfile::TempDir,
    /// The namespace `chart_args` passes (`--namespace`).
    pub namespace: String,
}

impl RegisterFiles {
    /// `backend_toml` is the body of `[backend]` (url included).
    pub(crate) fn new(ns: &TestNamespace, backend_toml: &str, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::copy(&ns.plane.kubeconfig, &kubeconfig).unwrap();
        std::fs::write(dir.path().join("bootstrap-token"), format!("{BOOTSTRAP}\n")).unwrap();
        let config = format!(
            r#"
[cluster]
name = "prod-east-1"
region = "us-east-1"
environment = "production"
labels = {{ team = "relay" }}

[backend]
{backend_toml}

[credentials]
cluster_id_file = "{creds}/clusterId"
cluster_token_file = "{creds}/clusterToken"

[kubernetes]
kubeconfig = "{kubeconfig}"

{extra_toml}
"#,
            creds = dir.path().display(),
            kubeconfig = kubeconfig.display(),
        );
        std::fs::write(dir.path().join("relayer.toml"), config).unwrap();
        Self {
            dir,
            namespace: ns.name.clone(),
        }
    }

    /// Replaces the `[backend]` section's body in the config file.
    pub(crate) fn rewrite_backend(&self, backend_toml: &str) {
        let path = self.path("relayer.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("[backend]\n", &format!("[backend]\n{backend_toml}\n")),
        )
        .unwrap();
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write_ca(&self, pem: &str) -> PathBuf {
        let path = self.path("ca.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// The chart's arguments: config, token file, Secret name, namespace,
    /// the standard labels.
    pub(crate) fn chart_args(&self) -> Vec<String> {
        [
            "register",
            "--config",
            &self.path("relayer.toml").display().to_string(),
            "--bootstrap-token-file",
            &self.path("bootstrap-token").display().to_string(),
            "--secret-name",
            SECRET,
            "--namespace",
            &self.namespace,
            "--secret-label",
            "app.kubernetes.io/name=consonant-relayer",
            "--secret-label",
            "app.kubernetes.io/instance=relayer",
            "--secret-label",
            "app.kubernetes.io/component=credentials",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// What a `register` run printed and how it exited.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `args` (and `env`) to completion.
pub(crate) async fn run_binary(args: &[String], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_consonant-relayer"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("POD_NAMESPACE")
        .env_remove("CONSONANT_BOOTSTRAP_TOKEN")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("register finished within 120 s")
        .expect("run the binary");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if std::env::var_os("RELAYER_TEST_ECHO").is_some() {
        eprintln!("[register {}]\n{}", run.code, run.output());
    }
    run
}

/// The Secret `namespace/name`, as JSON (None when absent).
pub(crate) async fn get_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<Value> {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .unwrap()
        .map(|s| serde_json::to_value(s).unwrap())
}

/// A Secret's key, base64-decoded.
pub(crate) fn secret_key(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let b64 = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Creates an Opaque Secret with `data`.
pub(crate) async fn create_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    data: &[(&str, &str)],
) {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let string_data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "stringData": string_data,
    }))
    .unwrap();
    api.create(&Default::default(), &secret).await.unwrap();
}

/// Fails if `output` contains any of `secrets`, plain or base64.
pub(crate) fn assert_no_secret(output: &str, secrets: &[&str]) {
    use base64::Engine as _;
    for secret in secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        for needle in [secret.to_string(), b64] {
            if let Some(at) = output.find(&needle) {
                let line = output[..at].lines().count();
                panic!("a token leaked into the output at line {line}:\n{output}");
            }
        }
    }
}

/// `metadata.managedFields` as `(manager, operation)` pairs, in order.
pub(crate) fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            (
                entry["manager"].as_str().unwrap_or_default().to_string(),
                entry["operation"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The `fieldsV1` of the managedFields entry of `manager` with `operation`.
pub(crate) fn owned_fields(object: &Value, manager: &str, operation: &str) -> Value {
    object["metadata"]["managedFields"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .find(|entry| entry["manager"] == manager && entry["operation"] == operation)
        .map(|entry| entry["fieldsV1"].clone())
        .unwrap_or_else(|| panic!("no managedFields entry ({manager}, {operation}): {object}"))
}

pub(crate) fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
