//! The Helm chart (`charts/consonant-relayer`) rendered by real helm: lint,
//! the seed README's examples exactly as written plus the chart's own
//! `ci/*.yaml` cases, Kubernetes schema validation (kubernetes-validate
//! --strict, 1.32 and the newest version it knows), checkov, Pod Security
//! "restricted", the rendered relayer config accepted by `check-config`,
//! the key rendered fields, and clear failures for bad values.
//!
//! The tools come from `scripts/install-chart-tools` (pinned, checksummed,
//! cached under `.tools/`), run once per test binary.
//!
//! Last, an install played through against the real control plane
//! (`consonant-kube-testenv`, a namespace of its own) without images: the
//! rendered hook's ServiceAccount, Role and RoleBinding created as helm
//! would, then its `register` command (its exact arguments and ConfigMap)
//! run as that ServiceAccount against the reference backend, then the
//! rendered relayer RBAC and config with the Secret the hook wrote, run as
//! the relayer's ServiceAccount, until the backend sees the cluster
//! connected and leading, and a token rotation is written back to the
//! Secret through the chart's Role.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

const CHART: &str = "charts/consonant-relayer";
const RELEASE: &str = "consonant-relayer";

// ---------------------------------------------------------------- tools

fn tools() -> &'static common::chart_tools::ChartTools {
    common::chart_tools::chart_tools()
}

fn repo() -> PathBuf {
    common::chart_tools::repo()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- cases

/// One way to install the chart: a release namespace and helm arguments.
struct Case {
    name: &'static str,
    namespace: &'static str,
    args: Vec<String>,
    /// The values disable the NetworkPolicies on purpose (checkov's
    /// CKV2_K8S_6 "pods without a NetworkPolicy" then necessarily fails).
    network_policy_off: bool,
}

fn values_file(name: &str) -> Vec<String> {
    vec![
        "-f".into(),
        repo()
            .join(CHART)
            .join("ci")
            .join(name)
            .display()
            .to_string(),
    ]
}

fn set(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_string(), p.to_string()])
        .collect()
}

/// The seed README's quick-start `--set` line, exactly as written.
fn quick_start() -> Case {
    Case {
        name: "seed quick start",
        namespace: "consonant-system",
        args: set(&[
            "cluster.name=production-us-east-1",
            "backend.url=https://backend.company.com",
            "auth.bearerToken=R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB",
        ]),
        network_policy_off: false,
    }
}

fn file_case(file: &'static str, namespace: &'static str, network_policy_off: bool) -> Case {
    Case {
        name: file,
        namespace,
        args: values_file(file),
        network_policy_off,
    }
}

/// Egress through a proxy whose URL (with credentials) is in a Secret of
/// the user's, with a failover list of gRPC endpoints and extra NO_PROXY
/// entries: every check of every case applies to it too.
fn egress_case() -> Case {
    Case {
        name: "egress through a proxy Secret",
        namespace: "consonant-system",
        args: set(&[
            "cluster.name=prod-eu-west-1",
            "backend.url=https://backend.company.com",
            "auth.existingSecret=consonant-bootstrap",
            "backend.proxySecret=corp-proxy",
            "networkPolicy.proxy.port=3128",
            "networkPolicy.proxy.cidrs={10.20.0.5/32}",
            "networkPolicy.kubernetesApi.cidrs={10.96.0.1/32}",
            "backend.grpcEndpoints={grpcs://grpc-a.company.com:443,grpcs://grpc-b.company.com:8443}",
            "backend.extraNoProxy={.corp,10.0.0.0/8}",
        ]),
        network_policy_off: false,
    }
}

/// Every case: the seed's three examples, the chart's own ci/ values and
/// egress through a proxy.
fn cases() -> Vec<Case> {
    vec![
        quick_start(),
        egress_case(),
        file_case("seed-production-values.yaml", "consonant-system", false),
        file_case("seed-dev-values.yaml", "consonant-dev", true),
        file_case("existing-secret-values.yaml", "consonant-system", false),
        file_case("namespaced-rbac-values.yaml", "consonant-system", false),
        file_case("minimal-values.yaml", "edge", true),
    ]
}

#[test]
fn every_ci_values_file_is_a_case() {
    let listed: BTreeSet<String> = cases()
        .iter()
        .filter(|c| c.name.ends_with(".yaml"))
        .map(|c| c.name.to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo().join(CHART).join("ci"))
        .expect("read ci/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, on_disk,
        "every ci/*.yaml must be rendered by a case"
    );
}

// ---------------------------------------------------------------- helm

fn helm_template(namespace: &str, args: &[String], extra: &[&str]) -> Output {
    run(Command::new(&tools().helm)
        .args(["template", RELEASE])
        .arg(repo().join(CHART))
        .args(["--namespace", namespace])
        .args(args)
        .args(extra))
}

/// Renders a case (hooks and the test pod included); panics with helm's
/// error when rendering fails.
fn render(case: &Case, extra: &[&str]) -> String {
    let out = helm_template(case.namespace, &case.args, extra);
    assert!(
        out.status.success(),
        "helm template ({}) failed:\n{}",
        case.name,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn all<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The pod spec of a workload or a Pod.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(&doc["spec"]),
        "Deployment" | "DaemonSet" | "StatefulSet" | "Job" | "ReplicaSet" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "consonant-relayer");
    assert_eq!(chart["kubeVersion"], ">=1.32.0-0");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn helm_lint_passes_for_every_case() {
    for case in cases() {
        let out = run(Command::new(&tools().helm)
            .args(["lint", "--strict"])
            .arg(repo().join(CHART))
            .args(["--namespace", case.namespace])
            .args(&case.args));
        assert!(
            out.status.success(),
            "helm lint ({}):\n{}{}",
            case.name,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------- validation

fn write_renders(dir: &Path, cases: &[Case]) -> Vec<PathBuf> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let path = dir.join(format!("case{i}.yaml"));
            std::fs::write(&path, render(case, &[])).unwrap();
            path
        })
        .collect()
}

#[test]
fn manifests_pass_kubernetes_validate_strict_on_1_32_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_renders(dir.path(), &cases());
    let newest = run(Command::new(&tools().python).args([
        "-c",
        "from kubernetes_validate import utils; print(utils.latest_version())",
    ]));
    assert!(newest.status.success(), "{}", text(&newest.stderr));
    let newest = text(&newest.stdout).trim().to_string();
    assert!(!newest.is_empty());
    for version in ["1.32.0", newest.as_str()] {
        let out = run(Command::new(&tools().kubernetes_validate)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files));
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(out.status.success(), "kubernetes {version}:\n{report}");
        // The only kind without a bundled schema is the ServiceMonitor CRD,
        // checked by `service_monitor_scrapes_metrics` instead.
        for line in report.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("kind ServiceMonitor"), "unexpected: {line}");
        }
        let ok = report.lines().filter(|l| l.starts_with("INFO")).count();
        assert!(
            ok > 50,
            "kubernetes-validate checked only {ok} documents:\n{report}"
        );
    }
}

/// The skips the chart documents in `.checkov.yaml` (reasons there).
fn checkov_skips() -> Vec<String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "skip-check")]
        skip_check: Vec<String>,
    }
    let path = repo().join(CHART).join(".checkov.yaml");
    let config: Config = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config.skip_check
}

/// A temp dir checkov scans: it skips directories whose name starts with a
/// dot, as tempfile's default names do.
fn checkov_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("chart-").tempdir().unwrap()
}

fn checkov(dir: &Path, skips: &[String]) {
    let out = run(Command::new(&tools().checkov)
        .args(["--directory"])
        .arg(dir)
        .args(["--framework", "kubernetes", "--compact", "--quiet"])
        // Offline: no download of Prisma Cloud mappings or guidelines.
        .args(["--skip-download", "--output", "cli"])
        .args(["--skip-check", &skips.join(",")])
        .env("BC_SKIP_MAPPING", "TRUE"));
    let report = text(&out.stdout);
    assert!(
        out.status.success() && report.contains("Failed checks: 0"),
        "checkov found failures:\n{report}\n{}",
        text(&out.stderr)
    );
    assert!(report.contains("Passed checks:"), "{report}");
}

#[test]
fn checkov_finds_nothing_beyond_the_documented_skips() {
    let (on, off): (Vec<Case>, Vec<Case>) =
        cases().into_iter().partition(|c| !c.network_policy_off);
    let skips = checkov_skips();
    let dir = checkov_dir();
    write_renders(dir.path(), &on);
    checkov(dir.path(), &skips);

    // Cases that turn the NetworkPolicies off fail CKV2_K8S_6 by design;
    // every other check still applies.
    let dir = checkov_dir();
    write_renders(dir.path(), &off);
    let mut skips = skips;
    skips.push("CKV2_K8S_6".into());
    checkov(dir.path(), &skips);
}

#[test]
fn every_resource_is_unique_and_labelled() {
    for case in cases() {
        let docs = documents(&render(&case, &[]));
        let mut seen = BTreeSet::new();
        for doc in &docs {
            let id = format!(
                "{}/{}/{}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["namespace"].as_str().unwrap_or("-"),
                doc["metadata"]["name"].as_str().unwrap()
            );
            assert!(
                seen.insert(id.clone()),
                "{}: {id} rendered twice",
                case.name
            );
            let labels = labels(doc);
            assert_eq!(
                labels["app.kubernetes.io/name"], "consonant-relayer",
                "{id}"
            );
            assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{id}");
            assert!(
                labels["app.kubernetes.io/component"].is_string(),
                "{id}: no component"
            );
            let name_len = doc["metadata"]["name"].as_str().unwrap().len();
            assert!(name_len <= 63, "{id}: name longer than 63");
        }
    }
}

#[test]
fn every_pod_meets_pod_security_restricted() {
    for case in cases() {
        let docs = documents(&render(&case, &[]));
        let pods: Vec<(&Value, &Value)> = docs
            .iter()
            .filter_map(|d| pod_spec(d).map(|s| (d, s)))
            .collect();
        assert!(pods.len() >= 2, "{}: too few pod specs", case.name);
        for (doc, spec) in pods {
            let what = format!(
                "{} {} ({})",
                doc["kind"], doc["metadata"]["name"], case.name
            );
            check_restricted(&what, spec);
        }
    }
}

/// The Pod Security Standards "restricted" profile (and "baseline", which it
/// includes), field by field.
fn check_restricted(what: &str, spec: &Value) {
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(spec[field], true, "{what}: {field}");
    }
    let pod_sc = &spec["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true, "{what}: pod runAsNonRoot");
    assert_eq!(
        pod_sc["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: pod seccomp"
    );
    if let Some(uid) = pod_sc["runAsUser"].as_i64() {
        assert_ne!(uid, 0, "{what}: pod runs as root");
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = volume
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        for kind in kinds {
            assert!(
                [
                    "configMap",
                    "secret",
                    "emptyDir",
                    "projected",
                    "downwardAPI",
                    "persistentVolumeClaim",
                    "ephemeral",
                    "csi"
                ]
                .contains(&kind.as_str()),
                "{what}: volume type {kind} is not allowed by restricted"
            );
        }
    }
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten();
    for c in containers {
        let name = &c["name"];
        let sc = &c["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}/{name}: allowPrivilegeEscalation"
        );
        assert_ne!(sc["privileged"], true, "{what}/{name}: privileged");
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{what}/{name}: drop ALL"
        );
        for added in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            assert_eq!(added, "NET_BIND_SERVICE", "{what}/{name}: adds {added}");
        }
        assert_ne!(
            sc["runAsNonRoot"], false,
            "{what}/{name}: runAsNonRoot false"
        );
        if let Some(uid) = sc["runAsUser"].as_i64() {
            assert_ne!(uid, 0, "{what}/{name}: runs as root");
        }
        let seccomp = &sc["seccompProfile"]["type"];
        assert!(
            seccomp.is_null() || seccomp == "RuntimeDefault" || seccomp == "Localhost",
            "{what}/{name}: seccomp {seccomp}"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{what}/{name}: read-only root"
        );
        for port in c["ports"].as_array().into_iter().flatten() {
            assert!(
                port["hostPort"].is_null(),
                "{what}/{name}: hostPort {}",
                port["hostPort"]
            );
        }
        assert!(
            !c["resources"]["limits"]["memory"].is_null(),
            "{what}/{name}: no memory limit"
        );
    }
}

// ---------------------------------------------------------------- config

/// The relayer's TOML from the relayer ConfigMap, checked to be the same as
/// the registration hook's copy.
fn relayer_toml(docs: &[Value], registration: bool) -> String {
    let toml = find(docs, "ConfigMap", "consonant-relayer")["data"]["relayer.toml"]
        .as_str()
        .expect("relayer.toml")
        .to_string();
    if registration {
        let hook = &find(docs, "ConfigMap", "consonant-relayer-register")["data"]["relayer.toml"];
        assert_eq!(
            hook,
            &Value::String(toml.clone()),
            "the hook renders the same TOML"
        );
    }
    toml
}

fn check_config(toml: &str) -> Output {
    check_config_with_env(toml, &[])
}

/// `check-config` with these `CONSONANT_RELAYER__*` variables (and no
/// others): the overrides a pod's environment gives.
fn check_config_with_env(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayer.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_consonant-relayer"));
    command.args(["check-config", "--config"]).arg(&path);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONSONANT_RELAYER__") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    run(&mut command)
}

#[test]
fn the_rendered_config_passes_check_config_for_every_case() {
    for case in cases() {
        let docs = documents(&render(&case, &[]));
        let registration = !case.name.starts_with("minimal");
        let toml = relayer_toml(&docs, registration);
        let out = check_config(&toml);
        assert!(
            out.status.success(),
            "{}: check-config rejected the chart's config:\n{}\n{toml}",
            case.name,
            text(&out.stderr)
        );
        let effective = text(&out.stdout);
        let secret = if registration {
            "consonant-relayer-cluster"
        } else {
            "relayer-credentials-from-eso"
        };
        for line in [
            format!("secret_name = \"{secret}\""),
            format!("secret_namespace = \"{}\"", case.namespace),
            "cluster_id_file = \"/var/run/secrets/consonant/clusterId\"".into(),
            "listen = \"0.0.0.0:8080\"".into(),
            "otlp_grpc_listen = \"0.0.0.0:4317\"".into(),
        ] {
            assert!(
                effective.contains(&line),
                "{}: no {line} in\n{effective}",
                case.name
            );
        }
    }
}

#[test]
fn values_reach_the_config() {
    let docs = documents(&render(
        &file_case("seed-dev-values.yaml", "consonant-dev", true),
        &[],
    ));
    let toml = relayer_toml(&docs, true);
    for line in [
        "name = \"dev-local\"",
        "environment = \"development\"",
        "url = \"http://localhost:3000\"",
        "tls_verify = false",
        "level = \"debug\"",
    ] {
        assert!(toml.contains(line), "no {line} in\n{toml}");
    }

    let docs = documents(&render(
        &file_case("existing-secret-values.yaml", "consonant-system", false),
        &[],
    ));
    let toml = relayer_toml(&docs, true);
    for line in [
        "labels = { \"team\" = \"platform\", \"tier\" = \"1\" }",
        "grpc_endpoint = \"grpcs://grpc.internal.example:9443\"",
        "ca_file = \"/etc/consonant/ca/ca.crt\"",
        "client_cert_file = \"/var/run/secrets/consonant-client-tls/tls.crt\"",
        "level = \"info,consonant_relayer=debug\"",
        "format = \"text\"",
    ] {
        assert!(toml.contains(line), "no {line} in\n{toml}");
    }

    let docs = documents(&render(
        &file_case("namespaced-rbac-values.yaml", "consonant-system", false),
        &[],
    ));
    let toml = relayer_toml(&docs, true);
    assert!(
        toml.contains("allowed_namespaces = [\"team-a\",\"team-b\"]"),
        "{toml}"
    );
    assert!(toml.contains("lease_duration = \"30s\""), "{toml}");
    assert!(toml.contains("max_request_bytes = \"8MiB\""), "{toml}");
    assert!(toml.contains("sample_ratio = 0.250000"), "{toml}");
    assert!(
        toml.contains(
            "otlp_endpoint = \"http://consonant-relayer-otel.consonant-system.svc:4317\""
        ),
        "{toml}"
    );
    // The relayer may then send its spans to the collector.
    let policy = find(&docs, "NetworkPolicy", "consonant-relayer");
    let last = policy["spec"]["egress"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "otel-collector"
    );
}

// ---------------------------------------------------------------- fields

fn labels(doc: &Value) -> &Value {
    &doc["metadata"]["labels"]
}

#[test]
fn relayer_deployment_matches_the_seed() {
    let docs = documents(&render(&quick_start(), &[]));
    let deploy = find(&docs, "Deployment", "consonant-relayer");
    assert_eq!(deploy["metadata"]["namespace"], "consonant-system");
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["app.kubernetes.io/name"], "consonant-relayer");
    assert_eq!(pod_labels["app.kubernetes.io/instance"], RELEASE);
    assert_eq!(pod_labels["app.kubernetes.io/component"], "relayer");
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "relayer"
    );
    assert_eq!(deploy["spec"]["replicas"], 2);
    let checksum = &deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"];
    assert_eq!(
        checksum.as_str().map(str::len),
        Some(64),
        "config checksum: {checksum}"
    );

    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "consonant-relayer");
    let c = container(spec, "relayer");
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/consonant/consonant-relayer:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        strings(&c["args"]),
        ["run", "--config", "/etc/consonant/relayer.toml"]
    );
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("health".into(), 8080),
            ("otlp-grpc".into(), 4317),
            ("otlp-http".into(), 4318)
        ]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<String> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().into())
        .collect();
    assert!(
        env.contains(&"POD_NAME".into()) && env.contains(&"POD_NAMESPACE".into()),
        "{env:?}"
    );

    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["mountPath"].as_str().unwrap().into(),
            )
        })
        .collect();
    for expected in [
        ("config", "/etc/consonant"),
        ("credentials", "/var/run/secrets/consonant"),
        ("tmp", "/tmp"),
    ] {
        assert!(
            mounts.contains(&(expected.0.into(), expected.1.into())),
            "{mounts:?}"
        );
    }
    let volumes = spec["volumes"].as_array().unwrap();
    let credentials = volumes.iter().find(|v| v["name"] == "credentials").unwrap();
    assert_eq!(
        credentials["secret"]["secretName"],
        "consonant-relayer-cluster"
    );
    let config = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config["configMap"]["items"][0]["path"], "relayer.toml");
    assert!(volumes
        .iter()
        .any(|v| v["name"] == "tmp" && v["emptyDir"].is_object()));

    // The seed's default anti-affinity, scoped to the relayer pods.
    let term =
        &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["weight"], 100);
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "consonant-relayer"
    );

    let service = find(&docs, "Service", "consonant-relayer");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 4317, 4318]);
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/component"],
        "relayer"
    );
    assert_eq!(
        labels(find(&docs, "ServiceAccount", "consonant-relayer"))["app.kubernetes.io/component"],
        "relayer"
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "consonant-relayer")["spec"]["minAvailable"],
        1
    );
}

#[test]
fn seed_production_values_take_effect() {
    let docs = documents(&render(
        &file_case("seed-production-values.yaml", "consonant-system", false),
        &[],
    ));
    let deploy = find(&docs, "Deployment", "consonant-relayer");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        container(spec, "relayer")["resources"]["limits"]["cpu"],
        "2000m"
    );
    let term =
        &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        serde_json::json!({"app.kubernetes.io/name": "consonant-relayer"}),
        "the seed's affinity is used as written"
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "consonant-relayer")["spec"]["minAvailable"],
        2
    );
    find(&docs, "DaemonSet", "consonant-relayer-otel");
    find(&docs, "NetworkPolicy", "consonant-relayer");
}

#[test]
fn seed_dev_values_turn_off_what_they_say() {
    let docs = documents(&render(
        &file_case("seed-dev-values.yaml", "consonant-dev", true),
        &[],
    ));
    assert!(all(&docs, "NetworkPolicy").is_empty());
    assert!(all(&docs, "PodDisruptionBudget").is_empty());
    assert_eq!(
        find(&docs, "Deployment", "consonant-relayer")["spec"]["replicas"],
        1
    );
}

fn annotations(doc: &Value) -> &Value {
    &doc["metadata"]["annotations"]
}

#[test]
fn registration_hook_follows_the_register_interface() {
    let docs = documents(&render(&quick_start(), &[]));
    let hooks: Vec<&Value> = docs
        .iter()
        .filter(|d| annotations(d)["helm.sh/hook"] == "pre-install,pre-upgrade")
        .collect();
    let mut kinds: Vec<String> = hooks
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap/consonant-relayer-register",
            "Job/consonant-relayer-register",
            "NetworkPolicy/consonant-relayer-register",
            "Role/consonant-relayer-register",
            "RoleBinding/consonant-relayer-register",
            "Secret/consonant-relayer-bootstrap",
            "ServiceAccount/consonant-relayer-register",
        ]
    );
    let weight = |d: &Value| -> i64 {
        annotations(d)["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let job = find(&docs, "Job", "consonant-relayer-register");
    for hook in &hooks {
        assert_eq!(
            annotations(hook)["helm.sh/hook-delete-policy"],
            "before-hook-creation,hook-succeeded",
            "{}",
            hook["kind"]
        );
        if hook["kind"] != "Job" {
            assert!(
                weight(hook) < weight(job),
                "{} must exist before the Job",
                hook["kind"]
            );
        }
    }
    assert!(
        weight(find(&docs, "Role", "consonant-relayer-register"))
            < weight(find(&docs, "Secret", "consonant-relayer-bootstrap"))
    );

    let secret = find(&docs, "Secret", "consonant-relayer-bootstrap");
    assert!(secret["data"]["token"].is_string());

    let spec = &job["spec"];
    assert!(spec["backoffLimit"].as_i64().unwrap() >= 1);
    let deadline = spec["activeDeadlineSeconds"].as_i64().unwrap();
    assert!(
        deadline < 300,
        "below helm's default 5m timeout: {deadline}"
    );
    assert!(
        spec["ttlSecondsAfterFinished"].is_null(),
        "Argo CD waits forever on ttl 0"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "consonant-relayer-register");
    let c = container(pod, "register");
    let args = strings(&c["args"]);
    let expected = [
        "register",
        "--config",
        "/etc/consonant/relayer.toml",
        "--bootstrap-token-file",
        "/var/run/secrets/consonant-bootstrap/token",
        "--secret-name",
        "consonant-relayer-cluster",
        "--namespace",
        "consonant-system",
        "--secret-label",
        "app.kubernetes.io/component=credentials",
        "--secret-label",
        "app.kubernetes.io/name=consonant-relayer",
        "--secret-label",
        "app.kubernetes.io/part-of=consonant",
        // Not app.kubernetes.io/instance: Argo CD would prune the Secret.
        "--secret-label",
        "consonant.xyz/release=consonant-relayer",
        "--delete-bootstrap-secret",
        "consonant-relayer-bootstrap",
        "--timeout",
        "120s",
    ];
    assert_eq!(args, expected);
    let volumes = pod["volumes"].as_array().unwrap();
    let bootstrap = volumes.iter().find(|v| v["name"] == "bootstrap").unwrap();
    assert_eq!(
        bootstrap["secret"]["secretName"],
        "consonant-relayer-bootstrap"
    );
    assert_eq!(bootstrap["secret"]["optional"], false);
    let config = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config["configMap"]["name"], "consonant-relayer-register");

    let role = find(&docs, "Role", "consonant-relayer-register");
    let rules = role["rules"].as_array().unwrap();
    let rule = |names: &[&str], verbs: &[&str]| {
        rules.iter().any(|r| {
            r["resources"] == serde_json::json!(["secrets"])
                && r["resourceNames"]
                    .as_array()
                    .map(|n| strings(&Value::Array(n.clone())))
                    .unwrap_or_default()
                    == names
                && strings(&r["verbs"]) == verbs
        })
    };
    assert!(
        rule(&["consonant-relayer-cluster"], &["get", "patch"]),
        "{rules:?}"
    );
    assert!(rule(&[], &["create"]), "{rules:?}");
    assert!(
        rule(&["consonant-relayer-bootstrap"], &["get", "delete"]),
        "{rules:?}"
    );
}

#[test]
fn existing_secret_replaces_the_bootstrap_secret() {
    let docs = documents(&render(
        &file_case("existing-secret-values.yaml", "consonant-system", false),
        &[],
    ));
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "the chart creates no Secret"
    );
    let job = find(&docs, "Job", "consonant-relayer-register");
    let pod = &job["spec"]["template"]["spec"];
    let args = strings(&container(pod, "register")["args"]);
    assert!(
        args.contains(&"/var/run/secrets/consonant-bootstrap/bearer".to_string()),
        "{args:?}"
    );
    assert!(
        !args.contains(&"--delete-bootstrap-secret".to_string()),
        "never deletes the user's Secret"
    );
    assert!(args.contains(&"--force".to_string()));
    let bootstrap = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "bootstrap")
        .unwrap();
    assert_eq!(bootstrap["secret"]["secretName"], "consonant-bootstrap");
    assert_eq!(bootstrap["secret"]["optional"], true);
    let role = find(&docs, "Role", "consonant-relayer-register");
    assert!(
        !role.to_string().contains("consonant-bootstrap"),
        "no rights on the user's Secret"
    );

    // Private CA mounted where backend.ca_file points, for relayer and hook.
    for (kind, name) in [
        ("Deployment", "consonant-relayer"),
        ("Job", "consonant-relayer-register"),
    ] {
        let spec = &find(&docs, kind, name)["spec"]["template"]["spec"];
        let config = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert!(
            config["configMap"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == "ca.crt" && i["path"] == "ca/ca.crt"),
            "{kind}: {config}"
        );
        assert!(spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "relayer-client-tls"));
    }
    for name in ["consonant-relayer", "consonant-relayer-register"] {
        let ca = find(&docs, "ConfigMap", name)["data"]["ca.crt"]
            .as_str()
            .unwrap();
        assert!(
            ca.starts_with("-----BEGIN CERTIFICATE-----"),
            "{name}: {ca}"
        );
    }
    let deploy = find(&docs, "Deployment", "consonant-relayer");
    let c = container(&deploy["spec"]["template"]["spec"], "relayer");
    assert_eq!(
        c["image"],
        "ghcr.io/consonant/consonant-relayer@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(labels(deploy)["cost-center"], "platform");
}

#[test]
fn relayer_rbac_mirrors_the_command_policy() {
    // Namespaced scope (default): a Role in the release namespace only,
    // nothing writable on Pods or ServiceAccounts, and no warning.
    let docs = documents(&render(&quick_start(), &[]));
    assert!(
        docs.iter().all(|d| !(d["kind"] == "ClusterRole"
            && d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .contains("relayer-workloads"))),
        "no cluster-wide workload rights by default"
    );
    let role = find(&docs, "Role", "consonant-relayer-workloads");
    assert_eq!(role["metadata"]["namespace"], "consonant-system");
    let rules = role["rules"].as_array().unwrap();
    for rule in rules {
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        if resources
            .iter()
            .any(|r| r == "pods" || r == "serviceaccounts")
        {
            assert!(
                verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
                    && !resources.contains(&"serviceaccounts".to_string()),
                "pods are read only, serviceaccounts absent: {rule}"
            );
        }
    }
    assert!(rules.iter().any(|r| strings(&r["resources"]) == ["pods"]));
    // Opting in: pods and serviceaccounts get the command verbs, NOTES warns.
    let docs = documents(&render(
        &quick_start(),
        &["--set", "rbac.podsAndServiceAccounts=true"],
    ));
    let role = find(&docs, "Role", "consonant-relayer-workloads");
    assert!(role["rules"].as_array().unwrap().iter().any(|r| {
        strings(&r["resources"]) == ["pods", "serviceaccounts"]
            && strings(&r["verbs"]).contains(&"create".into())
    }));
    let notes = |extra: &[&str]| install_notes(&quick_start(), extra);
    assert!(
        !notes(&[]).contains("WARNING: rbac."),
        "no RBAC warning by default"
    );
    assert!(notes(&["--set", "rbac.podsAndServiceAccounts=true"])
        .contains("WARNING: rbac.podsAndServiceAccounts=true"));
    let cluster_notes = notes(&["--set", "rbac.scope=cluster"]);
    assert!(
        cluster_notes.contains("WARNING: rbac.scope=cluster")
            && cluster_notes.contains("kube-system included"),
        "{cluster_notes}"
    );

    // Cluster scope: every action's verbs, cluster-wide.
    let docs = documents(&render(&quick_start(), &["--set", "rbac.scope=cluster"]));
    let own = find(&docs, "Role", "consonant-relayer");
    let text = own["rules"].to_string();
    assert!(
        text.contains("\"resourceNames\":[\"consonant-relayer-cluster\"]"),
        "{text}"
    );
    assert!(
        text.contains("consonant-relayer-cluster-leader"),
        "the leader Lease: {text}"
    );
    let workloads = find(
        &docs,
        "ClusterRole",
        "consonant-system-consonant-relayer-workloads",
    );
    let rules = workloads["rules"].as_array().unwrap();
    let apps = rules
        .iter()
        .find(|r| strings(&r["resources"]).contains(&"deployments".into()))
        .unwrap();
    assert_eq!(
        strings(&apps["verbs"]),
        ["get", "list", "watch", "create", "patch", "delete"]
    );
    assert!(rules
        .iter()
        .any(|r| strings(&r["resources"]) == ["pods/log"]));
    assert!(rules
        .iter()
        .any(|r| strings(&r["resources"]).contains(&"deployments/scale".into())));
    assert!(
        !workloads.to_string().contains("secrets"),
        "Secrets are denied by policy"
    );
    assert!(!workloads.to_string().contains('*'), "no wildcards");
    find(
        &docs,
        "ClusterRoleBinding",
        "consonant-system-consonant-relayer-workloads",
    );
    let read = find(
        &docs,
        "ClusterRole",
        "consonant-system-consonant-relayer-read",
    );
    assert!(
        read.to_string().contains("nodes"),
        "cluster_info counts nodes"
    );

    // Namespaced: a Role per allowed namespace, only the allowed actions.
    let docs = documents(&render(
        &file_case("namespaced-rbac-values.yaml", "consonant-system", false),
        &[],
    ));
    assert!(
        docs.iter().all(|d| !(d["kind"] == "ClusterRole"
            && d["metadata"]["name"]
                .as_str()
                .unwrap()
                .contains("relayer-workloads"))),
        "no cluster-wide workload rights"
    );
    assert!(docs.iter().all(|d| !d["metadata"]["name"]
        .as_str()
        .unwrap()
        .ends_with("relayer-read")));
    for ns in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        assert_eq!(role["metadata"]["name"], "consonant-relayer-workloads");
        assert!(
            !role.to_string().contains("\"delete\""),
            "delete is not an allowed action"
        );
        assert!(
            role.to_string().contains("\"patch\""),
            "apply and restart patch"
        );
        docs.iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
    }

    // Kubernetes access off: only the own Secret.
    let docs = documents(&render(
        &file_case("minimal-values.yaml", "edge", true),
        &[],
    ));
    assert!(all(&docs, "ClusterRole").is_empty());
    let own = find(&docs, "Role", "consonant-relayer");
    assert_eq!(own["rules"].as_array().unwrap().len(), 1);
    assert!(own.to_string().contains("relayer-credentials-from-eso"));
}

/// The collector release `tools/otel-collector/go.mod` pins (its
/// `go.opentelemetry.io/collector/otelcol` version, without the `v`).
fn built_collector_release() -> String {
    let go_mod = std::fs::read_to_string(repo().join("tools/otel-collector/go.mod")).unwrap();
    go_mod
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("go.opentelemetry.io/collector/otelcol v")
        })
        .expect("tools/otel-collector/go.mod requires go.opentelemetry.io/collector/otelcol")
        .to_string()
}

#[test]
fn otel_collector_daemonset_and_deployment() {
    let docs = documents(&render(&quick_start(), &[]));
    let ds = find(&docs, "DaemonSet", "consonant-relayer-otel");
    assert_eq!(labels(ds)["app.kubernetes.io/component"], "otel-collector");
    let spec = &ds["spec"]["template"]["spec"];
    let c = container(spec, "otel-collector");
    // The image is the upstream Kubernetes distribution at the very release
    // tools/otel-collector builds for the tests, so the tests run what ships.
    assert_eq!(
        c["image"],
        format!(
            "otel/opentelemetry-collector-k8s:{}",
            built_collector_release()
        )
    );
    assert!(
        !c.to_string().contains("hostPort"),
        "no hostPort by default"
    );
    let svc = find(&docs, "Service", "consonant-relayer-otel");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [4317, 4318]);
    let config: Value = serde_yaml_ng::from_str(
        find(&docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for pipeline in ["traces", "metrics", "logs"] {
        let p = &config["service"]["pipelines"][pipeline];
        assert_eq!(
            strings(&p["processors"]),
            ["memory_limiter", "k8s_attributes", "batch"]
        );
        assert_eq!(strings(&p["exporters"]), ["otlp_grpc/relayer"]);
    }
    assert_eq!(
        config["exporters"]["otlp_grpc/relayer"]["endpoint"],
        "consonant-relayer.consonant-system.svc:4317"
    );
    let role = find(
        &docs,
        "ClusterRole",
        "consonant-system-consonant-relayer-otel",
    );
    assert!(role.to_string().contains("replicasets"));

    let docs = documents(&render(
        &file_case("namespaced-rbac-values.yaml", "consonant-system", false),
        &[],
    ));
    let deploy = find(&docs, "Deployment", "consonant-relayer-otel");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(all(&docs, "DaemonSet").is_empty());
    assert!(
        find(&docs, "Service", "consonant-relayer-otel")["spec"]["internalTrafficPolicy"].is_null()
    );

    let with_host_port = render(&quick_start(), &["--set", "otelCollector.hostPort=true"]);
    assert!(with_host_port.contains("hostPort: 4317"));
}

fn egress_ports(policy: &Value) -> Vec<Vec<i64>> {
    policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn network_policies_limit_the_relayer() {
    let docs = documents(&render(&quick_start(), &[]));
    let policy = find(&docs, "NetworkPolicy", "consonant-relayer");
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"][0]["port"], 8080);
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "otel-collector"
    );
    // DNS, the API server, the backend (https 443 + default gRPC port 50051).
    assert_eq!(
        egress_ports(policy),
        [vec![53, 53], vec![443, 6443], vec![443, 50051]]
    );
    let backend = &policy["spec"]["egress"][2]["to"][0]["ipBlock"];
    assert_eq!(backend["cidr"], "0.0.0.0/0");
    for private in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"] {
        assert!(strings(&backend["except"]).contains(&private.to_string()));
    }
    let hook = find(&docs, "NetworkPolicy", "consonant-relayer-register");
    assert_eq!(egress_ports(hook), egress_ports(policy));

    // Ports from the URLs; a private backend is not excepted.
    let docs = documents(&render(
        &file_case("existing-secret-values.yaml", "consonant-system", false),
        &[],
    ));
    let policy = find(&docs, "NetworkPolicy", "consonant-relayer");
    assert_eq!(
        egress_ports(policy),
        [vec![53, 53], vec![443], vec![8443, 9443]]
    );
    assert!(policy["spec"]["egress"][2]["to"].is_null());
    assert_eq!(
        policy["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"],
        "10.96.0.1/32"
    );
}

#[test]
fn service_monitor_scrapes_metrics() {
    let docs = documents(&render(
        &file_case("existing-secret-values.yaml", "consonant-system", false),
        &[],
    ));
    let monitor = find(&docs, "ServiceMonitor", "consonant-relayer");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(labels(monitor)["release"], "kube-prometheus-stack");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "health");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "relayer"
    );
    assert!(
        !render(&quick_start(), &[]).contains("ServiceMonitor"),
        "off by default"
    );
}

#[test]
fn helm_test_pod_checks_health() {
    let docs = documents(&render(&quick_start(), &[]));
    let pod = find(&docs, "Pod", "consonant-relayer-test");
    assert_eq!(annotations(pod)["helm.sh/hook"], "test");
    let args = strings(&container(&pod["spec"], "health")["args"]);
    assert_eq!(
        args.last().unwrap(),
        "http://consonant-relayer.consonant-system.svc:8080/health?connected=true"
    );
}

/// The install's NOTES for `case` plus `extra` helm arguments: `helm
/// template` prints no NOTES, a client-side dry run of install does.
fn install_notes(case: &Case, extra: &[&str]) -> String {
    let out = run(Command::new(&tools().helm)
        .args(["install", RELEASE])
        .arg(repo().join(CHART))
        .args(["--namespace", case.namespace, "--dry-run=client"])
        .args(&case.args)
        .args(extra));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn notes_warn_about_insecure_settings() {
    let notes = |case: &Case| install_notes(case, &[]);
    let dev = notes(&file_case("seed-dev-values.yaml", "consonant-dev", true));
    assert!(dev.contains("backend.tlsVerify is false"), "{dev}");
    assert!(dev.contains("networkPolicy.enabled is false"), "{dev}");
    assert!(dev.contains("auth.bearerToken"), "{dev}");
    assert!(
        dev.contains("kubectl logs -n consonant-dev -l app.kubernetes.io/component=relayer"),
        "{dev}"
    );
    let secure = notes(&file_case(
        "existing-secret-values.yaml",
        "consonant-system",
        false,
    ));
    assert!(!secure.contains("WARNING"), "{secure}");
}

// ---------------------------------------------------------------- failures

/// helm must refuse these values, naming the field and the fix.
fn refuses(args: &[&str], expected: &[&str]) {
    let mut all = vec![
        "cluster.name=prod-1",
        "backend.url=https://backend.company.com",
        "auth.bearerToken=t",
    ];
    all.extend_from_slice(args);
    // Later --set wins, so `args` override the valid base.
    let out = helm_template("consonant-system", &set(&all), &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted {args:?}");
    for part in expected {
        assert!(
            stderr.contains(part),
            "{args:?}: {part:?} missing from\n{stderr}"
        );
    }
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    refuses(
        &["auth.bearerToken="],
        &[
            "neither auth.bearerToken nor auth.existingSecret is set",
            "auth.existingSecret=",
        ],
    );
    refuses(
        &["auth.existingSecret=mine"],
        &["both auth.bearerToken and auth.existingSecret are set"],
    );
    refuses(&["cluster.name="], &["cluster.name is required"]);
    refuses(
        &["cluster.name=Prod_1"],
        &["/cluster/name", "Prod_1", "does not match pattern"],
    );
    refuses(
        &["backend.url=http://backend.company.com"],
        &["/backend/url", "http://backend.company.com"],
    );
    refuses(
        &["backend.grpcEndpoint=http://grpc.company.com:50051"],
        &["/backend/grpcEndpoint"],
    );
    refuses(&["relayer.replicaz=3"], &["replicaz", "not allowed"]);
    refuses(&["otelCollector.type=sidecar"], &["/otelCollector/type"]);
    refuses(
        &["commands.allowedActions={ping,exec}"],
        &["/commands/allowedActions"],
    );
    // The template's own checks hold without the schema too.
    let out = helm_template(
        "consonant-system",
        &set(&[
            "cluster.name=Prod_1",
            "backend.url=http://b.company.com",
            "auth.bearerToken=t",
        ]),
        &["--skip-schema-validation"],
    );
    assert!(
        text(&out.stderr).contains("cluster.name \"Prod_1\" is not a DNS-1123 label"),
        "{}",
        text(&out.stderr)
    );
    let out = helm_template(
        "consonant-system",
        &set(&[
            "cluster.name=prod",
            "backend.url=http://b.company.com",
            "auth.bearerToken=t",
        ]),
        &["--skip-schema-validation"],
    );
    assert!(
        text(&out.stderr).contains("backend.url \"http://b.company.com\" is not https://"),
        "{}",
        text(&out.stderr)
    );
    // kubeVersion: ">=1.32.0-0".
    let out = helm_template(
        "consonant-system",
        &set(&[
            "cluster.name=prod",
            "backend.url=https://b.company.com",
            "auth.bearerToken=t",
        ]),
        &["--kube-version", "1.31.0"],
    );
    assert!(
        text(&out.stderr).contains("chart requires kubeVersion: >=1.32.0-0"),
        "{}",
        text(&out.stderr)
    );
    // tlsVerify false allows plaintext (development).
    let out = helm_template(
        "consonant-dev",
        &set(&[
            "cluster.name=dev",
            "backend.url=http://b:3000",
            "backend.tlsVerify=false",
            "auth.bearerToken=t",
        ]),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------- cluster lock

/// A well-formed `verify_keys` value: `ed25519:` and the base64 of 32 bytes.
fn verify_key(byte: u8) -> String {
    format!("ed25519:{}", STANDARD.encode([byte; 32]))
}

/// `[commands] verify_keys` and `signed_actions` of a relayer TOML.
fn lock_of(toml_text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let table: toml::Table = toml_text
        .parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{toml_text}"));
    let commands = table["commands"].as_table().expect("[commands]");
    let keys = commands["verify_keys"]
        .as_table()
        .expect("verify_keys is a table")
        .iter()
        .map(|(id, key)| (id.clone(), key.as_str().expect("a string key").to_string()))
        .collect();
    let actions = commands["signed_actions"]
        .as_array()
        .expect("signed_actions is a list")
        .iter()
        .map(|a| a.as_str().expect("a string action").to_string())
        .collect();
    (keys, actions)
}

#[test]
fn the_cluster_lock_reaches_the_config_and_the_notes() {
    let case = quick_start();
    let (ops, kms) = (verify_key(7), verify_key(0xa5));
    let keys = format!(r#"commands.verifyKeys={{"ops-2026":"{ops}","kms":"{kms}"}}"#);
    let locked = [
        "--set-json",
        keys.as_str(),
        "--set",
        "commands.signedActions={apply,delete,scale,restart,logs}",
    ];
    let want_keys = BTreeMap::from([("kms".to_string(), kms), ("ops-2026".to_string(), ops)]);
    let want_actions = ["apply", "delete", "scale", "restart", "logs"].map(String::from);

    // The rendered TOML holds exactly those keys and actions, and the relayer
    // reads exactly them (check-config prints the effective config as TOML).
    let toml_text = relayer_toml(&documents(&render(&case, &locked)), true);
    assert_eq!(
        lock_of(&toml_text),
        (want_keys.clone(), want_actions.to_vec()),
        "{toml_text}"
    );
    let out = check_config(&toml_text);
    assert!(
        out.status.success(),
        "check-config rejected the locked config:\n{}\n{toml_text}",
        text(&out.stderr)
    );
    assert_eq!(
        lock_of(&text(&out.stdout)),
        (want_keys, want_actions.to_vec()),
        "the relayer's effective config"
    );

    // By default the lock is off, with the contract's default actions.
    let toml_text = relayer_toml(&documents(&render(&case, &[])), true);
    assert_eq!(
        lock_of(&toml_text),
        (
            BTreeMap::new(),
            ["apply", "delete", "scale", "restart"]
                .map(String::from)
                .to_vec()
        ),
        "{toml_text}"
    );

    // NOTES say whether the cluster is locked, by which keys, for what.
    let notes = install_notes(&case, &locked);
    for line in [
        "The cluster is LOCKED: the backend cannot change it without a signature from one of\nthe keys in commands.verifyKeys (kms, ops-2026).",
        "Must be signed (commands.signedActions): apply, delete, scale, restart, logs",
        "Still run unsigned: ping, get, list, cluster_info",
    ] {
        assert!(notes.contains(line), "no {line:?} in\n{notes}");
    }
    assert!(!notes.contains("not locked"), "{notes}");
    assert!(!notes.contains("change the cluster but"), "{notes}");

    let notes = install_notes(&case, &[]);
    assert!(
        notes.contains(
            "The cluster is not locked: the backend's commands run unsigned. To lock it, set commands.verifyKeys (see docs/cluster-lock.md)."
        ),
        "{notes}"
    );
    assert!(!notes.contains("LOCKED"), "{notes}");

    // A state-changing action left unsigned is a gap NOTES point out.
    let notes = install_notes(
        &case,
        &[
            "--set-json",
            keys.as_str(),
            "--set",
            "commands.signedActions={apply,delete}",
        ],
    );
    for line in [
        "The cluster is LOCKED, with a gap",
        "WARNING: scale, restart change the cluster but are not in commands.signedActions",
    ] {
        assert!(notes.contains(line), "no {line:?} in\n{notes}");
    }
    assert!(!notes.contains("cannot change it"), "{notes}");
}

#[test]
fn bad_cluster_lock_values_fail_naming_the_field() {
    let good = verify_key(7);
    // Keys: not ed25519, not base64 of 32 bytes, or not the canonical
    // base64 (trailing bits set), which the relayer refuses as well.
    let bad_keys = [
        "ed25519:AAAA".to_string(),
        format!("rsa:{}", STANDARD.encode([7u8; 32])),
        format!("ed25519:{}", STANDARD.encode([7u8; 33])),
        good.replace("c=", "d="),
        good.trim_start_matches("ed25519:").to_string(),
    ];
    for key in &bad_keys {
        refuses(
            &[&format!("commands.verifyKeys.ops={key}")],
            &["/commands/verifyKeys/ops", "does not match pattern"],
        );
    }
    // Key ids: a space, a comma (Hello.labels joins ids with commas), too long.
    for id in ["has space", "ops;2026", &"k".repeat(65)] {
        refuses(
            &[&format!("commands.verifyKeys.{id}={good}")],
            &["/commands/verifyKeys", id, "not allowed"],
        );
    }
    refuses(
        &["commands.signedActions={apply,exec}"],
        &["/commands/signedActions/1", "must be one of"],
    );
    refuses(
        &["commands.signedActions={apply,apply}"],
        &["/commands/signedActions", "equal"],
    );
    refuses(
        &["commands.signedActions=apply"],
        &["/commands/signedActions"],
    );

    // What the schema refuses, the relayer refuses too, and the reverse: the
    // valid TOML with the bad value put in is rejected by check-config.
    let toml_text = relayer_toml(
        &documents(&render(
            &quick_start(),
            &["--set", &format!("commands.verifyKeys.ops={good}")],
        )),
        true,
    );
    assert!(check_config(&toml_text).status.success(), "{toml_text}");
    let mut variants: Vec<String> = bad_keys
        .iter()
        .map(|key| toml_text.replace(&good, key))
        .collect();
    for id in ["has space", "ops;2026", &"k".repeat(65)] {
        variants.push(toml_text.replace("\"ops\" =", &format!("\"{id}\" =")));
    }
    for variant in variants {
        assert_ne!(variant, toml_text);
        let out = check_config(&variant);
        assert!(!out.status.success(), "check-config accepted\n{variant}");
        assert!(
            text(&out.stderr).contains("commands.verify_keys"),
            "{}",
            text(&out.stderr)
        );
    }

    // The template's own checks hold without the schema too (a bad key
    // would stop the relayer at start).
    for (value, expected) in [
        (
            "commands.verifyKeys.ops=ed25519:AAAA".to_string(),
            "commands.verifyKeys.ops is not \"ed25519:<base64 of the 32-byte public key>\"",
        ),
        (
            format!("commands.verifyKeys.has space={good}"),
            "commands.verifyKeys: key id \"has space\" is not a key id",
        ),
    ] {
        let out = helm_template(
            "consonant-system",
            &set(&[
                "cluster.name=prod",
                "backend.url=https://b.company.com",
                "auth.bearerToken=t",
                &value,
            ]),
            &["--skip-schema-validation"],
        );
        assert!(!out.status.success(), "accepted {value}");
        assert!(
            text(&out.stderr).contains(expected),
            "{value}: {expected:?} missing from\n{}",
            text(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------- docs

/// Keys documented in values.yaml (a `# --` comment above them), in order.
fn documented_values() -> Vec<String> {
    let values = std::fs::read_to_string(repo().join(CHART).join("values.yaml")).unwrap();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut documented = false;
    let mut keys = Vec::new();
    for line in values.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("# --") {
            documented = true;
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        if std::mem::take(&mut documented) {
            keys.push(
                stack
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
    }
    keys
}

#[test]
fn the_chart_readme_lists_every_documented_value() {
    let readme = std::fs::read_to_string(repo().join(CHART).join("README.md")).unwrap();
    let keys = documented_values();
    assert!(keys.len() > 80, "found only {} documented keys", keys.len());
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "README.md values table lacks {key}"
        );
    }
}

// ------------------------------------------------ install, played through

/// Maps the pod's mount paths in rendered arguments and config to `dir`.
fn remap(text: &str, dir: &Path) -> String {
    text.replace("/etc/consonant/", &format!("{}/config/", dir.display()))
        .replace(
            "/var/run/secrets/consonant-bootstrap/",
            &format!("{}/bootstrap/", dir.display()),
        )
        .replace(
            "/var/run/secrets/consonant/",
            &format!("{}/credentials/", dir.display()),
        )
}

fn string_data(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    if let Some(value) = secret["stringData"][key].as_str() {
        return value.to_string();
    }
    let b64 = secret["data"][key].as_str().expect("key in the Secret");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Creates a rendered object as helm does (a plain create), with the admin
/// client.
async fn create_rendered(client: &kube::Client, doc: &Value) {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let api_version = doc["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = doc["kind"].as_str().expect("kind");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = serde_json::from_value(doc.clone()).expect("a Kubernetes object");
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("create {kind} {}: {err}", doc["metadata"]["name"]));
}

/// The rendered ServiceAccount and RBAC objects of `component`.
fn rbac_of<'a>(docs: &'a [Value], component: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|doc| {
            matches!(
                doc["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "Role"
                        | "RoleBinding"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                )
            ) && labels(doc)["app.kubernetes.io/component"] == component
        })
        .collect()
}

/// Waits until `client` (a ServiceAccount's) may read the Secret `name`:
/// the authorizer has seen the Role and its binding.
async fn wait_readable(client: &kube::Client, namespace: &str, name: &str) {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let readable = common::eventually_async(std::time::Duration::from_secs(20), || {
        let api = api.clone();
        async move { api.get_opt(name).await.is_ok() }
    })
    .await;
    assert!(
        readable,
        "the rendered Role lets its ServiceAccount read Secret {namespace}/{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_registers_with_the_hook_and_the_relayer_connects() {
    use common::register::{
        get_secret, managers, owned_fields, run_binary, secret_key, TestNamespace, FIELD_MANAGER,
    };
    use consonant_dev_backend::{self as devbackend, DevBackendOptions};
    const BOOTSTRAP: &str = "R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB";
    const CLUSTER_SECRET: &str = "consonant-relayer-cluster";
    const BOOTSTRAP_SECRET: &str = "consonant-relayer-bootstrap";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = devbackend::start(DevBackendOptions {
        bootstrap_tokens: vec![consonant_relayer::credentials::Secret::new(BOOTSTRAP)],
        ..Default::default()
    })
    .await
    .unwrap();
    let ns = TestNamespace::new("install").await;
    // The release namespace (a Case names a &'static str).
    let namespace: &'static str = Box::leak(ns.name.clone().into_boxed_str());
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "bootstrap", "credentials"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }

    // The seed's quick start, pointed at the local backend (plain HTTP, so
    // tlsVerify must be false, as the schema demands).
    let case = Case {
        name: "install",
        namespace,
        args: set(&[
            "cluster.name=production-us-east-1",
            &format!("backend.url={}", backend.http_url()),
            &format!("backend.grpcEndpoint={}", backend.grpc_url()),
            "backend.tlsVerify=false",
            &format!("auth.bearerToken={BOOTSTRAP}"),
        ]),
        network_policy_off: false,
    };
    let docs = documents(&render(&case, &[]));

    // Hook phase, as helm runs pre-install hooks: the hook's ServiceAccount,
    // Role and RoleBinding and the bootstrap Secret (weight -20), then the
    // Job, whose command runs here as that ServiceAccount.
    for doc in rbac_of(&docs, "register") {
        create_rendered(&ns.client, doc).await;
    }
    let bootstrap = find(&docs, "Secret", BOOTSTRAP_SECRET);
    let token = string_data(bootstrap, "token");
    assert_eq!(token, BOOTSTRAP);
    create_rendered(&ns.client, bootstrap).await;
    std::fs::write(dir.path().join("bootstrap/token"), &token).unwrap();
    let hook_config = find(&docs, "ConfigMap", "consonant-relayer-register");
    std::fs::write(
        dir.path().join("config/relayer.toml"),
        remap(
            hook_config["data"]["relayer.toml"].as_str().unwrap(),
            dir.path(),
        ),
    )
    .unwrap();
    let job = find(&docs, "Job", "consonant-relayer-register");
    let hook_account = job["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the Job's ServiceAccount");
    let hook_kubeconfig = dir.path().join("hook-kubeconfig");
    ns.service_account_kubeconfig(hook_account, &hook_kubeconfig)
        .await;
    let hook_client = consonant_kube_testenv::client_for(&hook_kubeconfig).await;
    wait_readable(&hook_client, namespace, BOOTSTRAP_SECRET).await;
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = strings(&job_container["args"])
        .iter()
        .map(|arg| remap(arg, dir.path()))
        .collect();
    let hook_kubeconfig_env = hook_kubeconfig.display().to_string();
    // The Job's environment (POD_NAMESPACE from the downward API).
    let env = [
        ("KUBECONFIG", hook_kubeconfig_env.as_str()),
        ("POD_NAMESPACE", namespace),
        ("POD_NAME", "consonant-relayer-register-x7k2p"),
    ];
    let first = run_binary(&args, &env).await;
    assert_eq!(
        first.code,
        0,
        "register as the hook runs it:\n{}",
        first.output()
    );

    let secret = ns
        .secret(CLUSTER_SECRET)
        .await
        .expect("the hook wrote the credentials Secret");
    let cluster_id = secret_key(&secret, "clusterId");
    assert!(cluster_id.starts_with("cls_"), "{cluster_id}");
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["consonant.xyz/release"], RELEASE);
    assert!(
        labels.get("app.kubernetes.io/instance").is_none(),
        "Argo CD's tracking label would get the Secret pruned: {labels}"
    );
    assert_eq!(labels["app.kubernetes.io/component"], "credentials");
    assert_eq!(
        managers(&secret),
        [(FIELD_MANAGER.to_string(), "Apply".to_string())],
        "{secret}"
    );
    assert!(
        ns.secret(BOOTSTRAP_SECRET).await.is_none(),
        "the spent bootstrap token does not stay in the cluster"
    );

    // helm upgrade runs the hook again; the token is spent by then.
    create_rendered(&ns.client, bootstrap).await;
    let again = run_binary(&args, &env).await;
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(
        again.output().contains("already registered as cls_"),
        "{}",
        again.output()
    );
    assert!(ns.secret(BOOTSTRAP_SECRET).await.is_none());
    // Everything the hook did went through its own ServiceAccount and Role.
    let hook_user = format!("system:serviceaccount:{namespace}:{hook_account}");
    let expected: Vec<(String, String, bool, i64)> = [
        ("get", BOOTSTRAP_SECRET, false, 200),
        ("get", CLUSTER_SECRET, false, 404),
        ("patch", CLUSTER_SECRET, true, 201),
        ("patch", CLUSTER_SECRET, false, 201),
        ("delete", BOOTSTRAP_SECRET, false, 200),
        ("get", CLUSTER_SECRET, false, 200),
        ("delete", BOOTSTRAP_SECRET, false, 200),
    ]
    .iter()
    .map(|(verb, name, dry_run, code)| (verb.to_string(), name.to_string(), *dry_run, *code))
    .collect();
    let audited = common::eventually(std::time::Duration::from_secs(10), || {
        ns.secret_requests(&hook_user) == expected
    })
    .await;
    assert!(audited, "{hook_user}: {:?}", ns.secret_requests(&hook_user));

    // The relayer: its ServiceAccount and RBAC, its ConfigMap, the Secret
    // mounted as files.
    for doc in rbac_of(&docs, "relayer") {
        create_rendered(&ns.client, doc).await;
    }
    let relayer_config = find(&docs, "ConfigMap", RELEASE);
    std::fs::write(
        dir.path().join("config/relayer.toml"),
        remap(
            relayer_config["data"]["relayer.toml"].as_str().unwrap(),
            dir.path(),
        ),
    )
    .unwrap();
    for key in ["clusterId", "clusterToken"] {
        std::fs::write(
            dir.path().join("credentials").join(key),
            secret_key(&secret, key),
        )
        .unwrap();
    }
    let deployment = find(&docs, "Deployment", RELEASE);
    let relayer_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the relayer's ServiceAccount");
    let relayer_kubeconfig = dir.path().join("relayer-kubeconfig");
    ns.service_account_kubeconfig(relayer_account, &relayer_kubeconfig)
        .await;
    let relayer_client = consonant_kube_testenv::client_for(&relayer_kubeconfig).await;
    wait_readable(&relayer_client, namespace, CLUSTER_SECRET).await;
    let relayer_args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
    let log_path = dir.path().join("relayer.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut relayer = tokio::process::Command::new(env!("CARGO_BIN_EXE_consonant-relayer"))
        .args(relayer_args.iter().map(|arg| remap(arg, dir.path())))
        .env("KUBECONFIG", &relayer_kubeconfig)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", "consonant-relayer-0")
        .env_remove("RUST_LOG")
        // Loopback ports instead of the pod's 0.0.0.0:8080/4317/4318.
        .env("CONSONANT_RELAYER__HEALTH__LISTEN", "127.0.0.1:0")
        .env(
            "CONSONANT_RELAYER__TELEMETRY__OTLP_GRPC_LISTEN",
            "127.0.0.1:0",
        )
        .env(
            "CONSONANT_RELAYER__TELEMETRY__OTLP_HTTP_LISTEN",
            "127.0.0.1:0",
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let relayer_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Connected, and leading: the chart's Role lets it hold its Lease.
    let connected = common::eventually(std::time::Duration::from_secs(20), || {
        backend.state().list_clusters().iter().any(|c| {
            c.cluster_id == cluster_id && c.connected && c.sessions.iter().any(|s| s.leader)
        })
    })
    .await;
    assert!(
        connected,
        "the relayer connected with the credentials the hook wrote, and leads: {:?}\n{}",
        backend.state().list_clusters(),
        relayer_log()
    );

    // The backend rotates the token: the relayer writes it back through the
    // chart's Role (patch on its Secret by name), keeping clusterId and the
    // labels.
    let rotate = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/clusters/{cluster_id}/rotate",
            backend.http_url()
        ))
        .send()
        .await
        .unwrap();
    assert!(rotate.status().is_success(), "{}", rotate.status());
    let first_token = secret_key(&secret, "clusterToken");
    let rotated = common::eventually_async(std::time::Duration::from_secs(20), || async {
        get_secret(&ns.client, namespace, CLUSTER_SECRET)
            .await
            .is_some_and(|s| secret_key(&s, "clusterToken") != first_token)
    })
    .await;
    assert!(
        rotated,
        "the rotated token was written back:\n{}",
        relayer_log()
    );
    let secret = ns.secret(CLUSTER_SECRET).await.unwrap();
    assert_eq!(secret_key(&secret, "clusterId"), cluster_id);
    assert_eq!(secret["metadata"]["labels"], *labels, "{secret}");
    assert_eq!(
        owned_fields(&secret, FIELD_MANAGER, "Update"),
        serde_json::json!({"f:data": {"f:clusterToken": {}}}),
        "{secret}"
    );
    let relayer_user = format!("system:serviceaccount:{namespace}:{relayer_account}");
    let patched = common::eventually(std::time::Duration::from_secs(10), || {
        ns.secret_requests(&relayer_user)
            .iter()
            .any(|(verb, name, dry_run, code)| {
                verb == "patch" && name == CLUSTER_SECRET && !dry_run && *code == 200
            })
    })
    .await;
    assert!(
        patched,
        "{relayer_user}: {:?}",
        ns.secret_requests(&relayer_user)
    );
    let _ = relayer.start_kill();
    // Nothing the relayer did was refused: the chart's RBAC covers it all
    // (Lease, cluster-wide watches, the Secret).
    let refused: Vec<String> = ns
        .plane
        .audit_events()
        .into_iter()
        .filter(|event| {
            event["user"]["username"] == relayer_user.as_str()
                && event["responseStatus"]["code"] == 403
        })
        .map(|event| format!("{} {}", event["verb"], event["requestURI"]))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let log = relayer_log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC covers what the relayer does:\n{log}"
    );
}

/// Issue 13, item 7: a PodDisruptionBudget never blocks a node drain. One
/// replica gets none (a budget over one pod blocks every drain) and NOTES
/// says why; with more, the budget lets unhealthy pods be evicted, and
/// `maxUnavailable` replaces `minAvailable` when set.
#[test]
fn the_pod_disruption_budget_never_blocks_a_drain() {
    let pdb = |extra: &[&str]| {
        let docs = documents(&render(&quick_start(), extra));
        all(&docs, "PodDisruptionBudget")
            .first()
            .map(|pdb| pdb["spec"].clone())
    };
    assert_eq!(pdb(&["--set", "relayer.replicas=1"]), None);
    let two = pdb(&[]).expect("two replicas get a budget");
    assert_eq!(two["minAvailable"], 1);
    assert_eq!(two["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    let by_max = pdb(&[
        "--set",
        "relayer.replicas=4",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
    ])
    .unwrap();
    assert_eq!(by_max["maxUnavailable"], 1);
    assert!(by_max.get("minAvailable").is_none(), "{by_max}");
    let notes = install_notes(&quick_start(), &["--set", "relayer.replicas=1"]);
    assert!(
        notes.contains("no PodDisruptionBudget with relayer.replicas 1"),
        "{notes}"
    );
}

/// Issue 13, item 8: the collector's memory_limiter and GOMEMLIMIT follow
/// its container memory limit (80% of it, spike a quarter of that), so the
/// limiter refuses data before the kernel kills the pod; an explicit limit
/// at or above the container's is refused, naming both values.
#[test]
fn collector_memory_follows_its_container_limit() {
    let limits = |extra: &[&str]| {
        let docs = documents(&render(&quick_start(), extra));
        let config: Value = serde_yaml_ng::from_str(
            find(&docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let limiter = &config["processors"]["memory_limiter"];
        let ds = find(&docs, "DaemonSet", "consonant-relayer-otel");
        let env = &container(&ds["spec"]["template"]["spec"], "otel-collector")["env"];
        let gomemlimit = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "GOMEMLIMIT")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string();
        (
            limiter["limit_mib"].as_i64().unwrap(),
            limiter["spike_limit_mib"].as_i64().unwrap(),
            gomemlimit,
        )
    };
    // (container limit, limit_mib, spike_limit_mib, GOMEMLIMIT)
    let table: &[(&str, i64, i64, &str)] = &[
        ("512Mi", 409, 102, "409MiB"),
        ("256Mi", 204, 51, "204MiB"),
        ("1Gi", 819, 204, "819MiB"),
        ("1.5Gi", 1228, 307, "1228MiB"),
        // 500M is 476 MiB.
        ("500M", 380, 95, "380MiB"),
    ];
    for &(limit, limit_mib, spike, gomemlimit) in table {
        let set = format!("otelCollector.resources.limits.memory={limit}");
        assert_eq!(
            limits(&["--set", &set]),
            (limit_mib, spike, gomemlimit.to_string()),
            "{limit}"
        );
    }
    assert_eq!(
        limits(&[
            "--set",
            "otelCollector.memoryLimitMiB=300",
            "--set",
            "otelCollector.memorySpikeLimitMiB=50"
        ]),
        (300, 50, "300MiB".to_string())
    );
    refuses(
        &[
            "otelCollector.resources.limits.memory=256Mi",
            "otelCollector.memoryLimitMiB=400",
        ],
        &["otelCollector.memoryLimitMiB (400) is not below", "256 MiB"],
    );
}

/// Issue 13, item 10: the collector can also send to an external system
/// (extra exporters on the relayer pipelines, or pipelines of its own, with
/// NetworkPolicy egress for them); with `telemetry.enabled=false` it keeps
/// only the extra pipelines, and with none it is not deployed at all
/// (NOTES says why). `/debug/actors` is off by default.
#[test]
fn the_collector_takes_extra_exporters_and_never_exports_to_nothing() {
    let collector_config = |docs: &[Value]| -> Value {
        serde_yaml_ng::from_str(
            find(docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    };
    let vendor = [
        "--set",
        "otelCollector.extraExporters.otlp_http/vendor.endpoint=https://otlp.vendor.example",
        "--set",
        "otelCollector.extraPipelineExporters.traces[0]=otlp_http/vendor",
        "--set",
        "otelCollector.extraEgress[0].ports[0].port=443",
    ];
    let docs = documents(&render(&quick_start(), &vendor));
    let config = collector_config(&docs);
    assert_eq!(
        config["exporters"]["otlp_http/vendor"]["endpoint"],
        "https://otlp.vendor.example"
    );
    assert_eq!(
        strings(&config["service"]["pipelines"]["traces"]["exporters"]),
        ["otlp_grpc/relayer", "otlp_http/vendor"]
    );
    assert_eq!(
        strings(&config["service"]["pipelines"]["logs"]["exporters"]),
        ["otlp_grpc/relayer"]
    );
    let policy = find(&docs, "NetworkPolicy", "consonant-relayer-otel");
    assert!(egress_ports(policy).contains(&vec![443]), "{policy}");

    // Telemetry off: only the extra pipeline, nothing to the relayer.
    let own = [
        "--set",
        "telemetry.enabled=false",
        "--set",
        "otelCollector.extraExporters.otlp_http/vendor.endpoint=https://otlp.vendor.example",
        "--set",
        "otelCollector.extraPipelines.traces/vendor.receivers[0]=otlp",
        "--set",
        "otelCollector.extraPipelines.traces/vendor.processors[0]=memory_limiter",
        "--set",
        "otelCollector.extraPipelines.traces/vendor.exporters[0]=otlp_http/vendor",
    ];
    let docs = documents(&render(&quick_start(), &own));
    let pipelines = collector_config(&docs)["service"]["pipelines"].clone();
    let names: Vec<_> = pipelines.as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, ["traces/vendor"]);

    // Telemetry off and nowhere else to send: no collector at all.
    let docs = documents(&render(
        &quick_start(),
        &["--set", "telemetry.enabled=false"],
    ));
    for kind in [
        "DaemonSet",
        "Deployment",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            all(&docs, kind)
                .iter()
                .all(|d| d["metadata"]["name"] != "consonant-relayer-otel"),
            "{kind} rendered for a collector with nowhere to send"
        );
    }
    let notes = install_notes(&quick_start(), &["--set", "telemetry.enabled=false"]);
    assert!(
        notes.contains("the OpenTelemetry Collector is not deployed"),
        "{notes}"
    );

    let docs = documents(&render(&quick_start(), &[]));
    assert!(relayer_toml(&docs, true).contains("debug_actors = false"));
}

/// Issue 13, item 9: the collector DaemonSet runs on tainted nodes (GPU
/// nodes running agents usually are), so the Service's
/// `internalTrafficPolicy: Local` never leaves a node's agents without a
/// collector; `Cluster` is a value away.
#[test]
fn the_collector_runs_on_tainted_nodes() {
    let docs = documents(&render(&quick_start(), &[]));
    let ds = find(&docs, "DaemonSet", "consonant-relayer-otel");
    let tolerations = &ds["spec"]["template"]["spec"]["tolerations"];
    let effects: Vec<_> = tolerations
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["operator"].as_str().unwrap(),
                t["effect"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        effects,
        [("Exists", "NoSchedule"), ("Exists", "PreferNoSchedule")]
    );
    let docs = documents(&render(
        &quick_start(),
        &["--set", "otelCollector.internalTrafficPolicy=Cluster"],
    ));
    assert_eq!(
        find(&docs, "Service", "consonant-relayer-otel")["spec"]["internalTrafficPolicy"],
        "Cluster"
    );
}

/// Issue 13, item 3: DNS egress reaches resolvers that are not pods —
/// NodeLocal DNSCache (169.254.20.10) and GKE's metadata DNS
/// (169.254.169.254) — on port 53 only, for the relayer, the collector and
/// the registration hook alike; the metadata server's HTTP port stays shut.
#[test]
fn dns_egress_reaches_node_local_and_metadata_resolvers_on_port_53_only() {
    let docs = documents(&render(&quick_start(), &[]));
    for name in [
        "consonant-relayer",
        "consonant-relayer-otel",
        "consonant-relayer-register",
    ] {
        let policy = find(&docs, "NetworkPolicy", name);
        let rules = policy["spec"]["egress"].as_array().unwrap();
        let dns = rules
            .iter()
            .find(|rule| rule.to_string().contains("169.254.20.10/32"))
            .unwrap_or_else(|| panic!("{name}: no NodeLocal DNSCache egress\n{policy}"));
        assert!(
            dns.to_string().contains("169.254.169.254/32"),
            "{name}: {dns}"
        );
        let ports: Vec<_> = dns["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert!(ports.iter().all(|&p| p == 53), "{name}: {ports:?}");
        let metadata_http = rules.iter().any(|rule| {
            rule.to_string().contains("169.254.169.254")
                && rule["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().any(|p| p["port"] == 80))
        });
        assert!(
            !metadata_http,
            "{name}: the metadata server's HTTP port is open"
        );
    }
}

/// Issue 13, item 4: the API-server egress rule has a destination when one
/// is known (`networkPolicy.kubernetesApi.cidrs`, or the `kubernetes`
/// EndpointSlice at install time); without one, NOTES warns that the API
/// ports are open to any address and says how to close them.
#[test]
fn api_server_egress_has_a_destination_or_a_warning() {
    let api_rule = |docs: &[Value], name: &str| -> Value {
        find(docs, "NetworkPolicy", name)["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["ports"].to_string().contains("6443"))
            .cloned()
            .unwrap()
    };
    let pinned = [
        "--set",
        "networkPolicy.kubernetesApi.cidrs[0]=10.96.0.1/32",
        "--set",
        "networkPolicy.kubernetesApi.cidrs[1]=172.18.0.2/32",
    ];
    let docs = documents(&render(&quick_start(), &pinned));
    for name in [
        "consonant-relayer",
        "consonant-relayer-otel",
        "consonant-relayer-register",
    ] {
        let rule = api_rule(&docs, name);
        let cidrs: Vec<_> = rule["to"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no destination: {rule}"))
            .iter()
            .map(|peer| peer["ipBlock"]["cidr"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(cidrs, ["10.96.0.1/32", "172.18.0.2/32"], "{name}");
    }
    let notes = |extra: &[&str]| install_notes(&quick_start(), extra);
    let open = notes(&[]);
    assert!(
        open.contains("the API server's addresses are unknown")
            && open.contains("networkPolicy.kubernetesApi.cidrs"),
        "{open}"
    );
    assert!(!notes(&pinned).contains("addresses are unknown"));
}

/// Issue 13, item 11: the conventions the opentelemetry-collector,
/// cert-manager and ingress-nginx charts share — namespaceOverride, a
/// global image registry, extraObjects, extra env/args/volumes, probe
/// overrides, revisionHistoryLimit, ServiceMonitor relabelings — each take
/// effect.
#[test]
fn common_chart_conventions_take_effect() {
    let extra = [
        "--set",
        "namespaceOverride=tools",
        "--set",
        "global.imageRegistry=mirror.corp:5000",
        "--set-json",
        r#"extraObjects=["apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: '{{ .Release.Name }}-extra'\n  namespace: tools\n"]"#,
        "--set-json",
        r#"relayer.extraArgs=["--log-level","debug"]"#,
        "--set-json",
        r#"relayer.extraEnvFrom=[{"secretRef":{"name":"proxy-env"}}]"#,
        "--set-json",
        r#"relayer.extraVolumes=[{"name":"ca","configMap":{"name":"corp-ca"}}]"#,
        "--set-json",
        r#"relayer.extraVolumeMounts=[{"name":"ca","mountPath":"/etc/corp-ca","readOnly":true}]"#,
        "--set",
        "relayer.revisionHistoryLimit=2",
        "--set",
        "relayer.probes.liveness.periodSeconds=20",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set-json",
        r#"metrics.serviceMonitor.relabelings=[{"action":"labeldrop","regex":"pod"}]"#,
    ];
    let docs = documents(&render(&quick_start(), &extra));
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        if matches!(kind, "ClusterRole" | "ClusterRoleBinding") {
            continue;
        }
        assert_eq!(
            doc["metadata"]["namespace"], "tools",
            "{kind} {}",
            doc["metadata"]["name"]
        );
    }
    let deploy = find(&docs, "Deployment", "consonant-relayer");
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 2);
    let spec = &deploy["spec"]["template"]["spec"];
    let relayer = container(spec, "relayer");
    assert!(relayer["image"]
        .as_str()
        .unwrap()
        .starts_with("mirror.corp:5000/consonant/consonant-relayer:"));
    assert_eq!(
        strings(&relayer["args"]),
        [
            "run",
            "--config",
            "/etc/consonant/relayer.toml",
            "--log-level",
            "debug"
        ]
    );
    assert_eq!(relayer["envFrom"][0]["secretRef"]["name"], "proxy-env");
    assert!(relayer["volumeMounts"].to_string().contains("/etc/corp-ca"));
    assert!(spec["volumes"].to_string().contains("corp-ca"));
    assert_eq!(relayer["livenessProbe"]["periodSeconds"], 20);
    assert_eq!(
        relayer["livenessProbe"]["httpGet"]["path"], "/livez",
        "merged, not replaced"
    );
    let otel = find(&docs, "DaemonSet", "consonant-relayer-otel");
    assert!(
        container(&otel["spec"]["template"]["spec"], "otel-collector")["image"]
            .as_str()
            .unwrap()
            .starts_with("mirror.corp:5000/otel/")
    );
    find(&docs, "ConfigMap", "consonant-relayer-extra");
    let monitor = find(&docs, "ServiceMonitor", "consonant-relayer");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["relabelings"][0]["action"],
        "labeldrop"
    );
    assert!(
        find(&docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("consonant-relayer.tools.svc:4317")
    );
}

/// The collector config the chart renders is one the real collector
/// (`scripts/build-otel-collector`: the chart's image release, built from
/// the collector's Go modules) accepts: every component exists under the
/// name used, every setting is valid, every pipeline is wired. For the
/// default DaemonSet, the Deployment, extra exporters on the relayer
/// pipelines, and extra pipelines alone; and a pipeline naming an exporter
/// that is not defined is refused, so the check can fail.
#[test]
fn the_real_collector_accepts_the_rendered_config() {
    let collector = common::otel_collector::otel_collector();
    assert_eq!(collector.release, built_collector_release());
    let dir = tempfile::tempdir().unwrap();
    let validate = |extra: &[&str]| -> Output {
        let docs = documents(&render(&quick_start(), extra));
        let config = find(&docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        Command::new(&collector.binary)
            .arg("validate")
            .arg(format!("--config={}", path.display()))
            // What the pod spec sets from the downward API.
            .env("MY_POD_IP", "127.0.0.1")
            .env("K8S_NODE_NAME", "node-1")
            .output()
            .expect("run otelcol validate")
    };
    let vendor_exporter =
        "otelCollector.extraExporters.otlp_http/vendor.endpoint=https://otlp.vendor.example";
    let cases: [(&str, Vec<&str>); 4] = [
        ("default daemonset", vec![]),
        ("deployment", vec!["--set", "otelCollector.type=deployment"]),
        (
            "extra exporter on the relayer pipelines",
            vec![
                "--set",
                vendor_exporter,
                "--set",
                "otelCollector.extraPipelineExporters.traces[0]=otlp_http/vendor",
                "--set",
                "otelCollector.extraProcessors.batch/vendor.timeout=5s",
            ],
        ),
        (
            "extra pipelines only",
            vec![
                "--set",
                "telemetry.enabled=false",
                "--set",
                vendor_exporter,
                "--set",
                "otelCollector.extraPipelines.logs/vendor.receivers[0]=otlp",
                "--set",
                "otelCollector.extraPipelines.logs/vendor.processors[0]=memory_limiter",
                "--set",
                "otelCollector.extraPipelines.logs/vendor.exporters[0]=otlp_http/vendor",
            ],
        ),
    ];
    for (name, extra) in &cases {
        let out = validate(extra);
        assert!(
            out.status.success(),
            "the collector refused the {name} config:\n{}",
            text(&out.stderr)
        );
    }
    // Every component goes by its current name, not a deprecated alias
    // (`otlp` for `otlp_grpc`, `k8sattributes` for `k8s_attributes`), which
    // `validate` accepts silently but a later release drops: each type must
    // be one `otelcol components` lists.
    let listed = Command::new(&collector.binary)
        .arg("components")
        .output()
        .expect("run otelcol components");
    let listed: Value = serde_yaml_ng::from_slice(&listed.stdout).unwrap();
    let docs = documents(&render(&quick_start(), &[]));
    let config: Value = serde_yaml_ng::from_str(
        find(&docs, "ConfigMap", "consonant-relayer-otel")["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for kind in ["receivers", "processors", "exporters", "extensions"] {
        let names: Vec<&str> = listed[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for id in config[kind].as_object().unwrap().keys() {
            let component_type = id.split('/').next().unwrap();
            assert!(
                names.contains(&component_type),
                "{kind}: {id} is not a current component name ({names:?})"
            );
        }
    }
    let out = validate(&[
        "--set",
        "otelCollector.extraPipelineExporters.traces[0]=otlp_http/missing",
    ]);
    assert!(
        !out.status.success(),
        "an undefined exporter must be refused"
    );
    assert!(
        text(&out.stderr).contains("otlp_http/missing"),
        "{}",
        text(&out.stderr)
    );
}

// ------------------------------------------------ egress: proxy, failover

/// The `env` list of a container as name -> the entry.
fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// The environment of the relayer container and of the hook's.
fn relayer_and_hook_env(docs: &[Value]) -> [BTreeMap<String, Value>; 2] {
    let deploy = find(docs, "Deployment", RELEASE);
    let job = find(docs, "Job", "consonant-relayer-register");
    [
        env_of(container(&deploy["spec"]["template"]["spec"], "relayer")),
        env_of(container(&job["spec"]["template"]["spec"], "register")),
    ]
}

/// `[backend]` of a relayer TOML.
fn backend_of(toml_text: &str) -> toml::Table {
    let table: toml::Table = toml_text
        .parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}):\n{toml_text}"));
    table["backend"].as_table().expect("[backend]").clone()
}

/// Issue 15, item 3: `backend.proxy` is rendered into `[backend] proxy` of
/// the relayer's and the hook's config alike, and the relayer accepts it.
#[test]
fn backend_proxy_reaches_both_configs() {
    for value in [
        "http://proxy.corp:3128",
        "none",
        "http://[fd00::1]:3128/",
        "",
    ] {
        let proxy = format!("backend.proxy={value}");
        let docs = documents(&render(&quick_start(), &["--set", &proxy]));
        let toml_text = relayer_toml(&docs, true);
        assert_eq!(
            backend_of(&toml_text)["proxy"].as_str(),
            Some(value),
            "{toml_text}"
        );
        let out = check_config(&toml_text);
        assert!(
            out.status.success(),
            "check-config rejected proxy {value:?}:\n{}",
            text(&out.stderr)
        );
        // No proxy Secret: no override in the pods.
        for env in relayer_and_hook_env(&docs) {
            assert!(
                !env.contains_key("CONSONANT_RELAYER__BACKEND__PROXY"),
                "{env:?}"
            );
        }
    }
    let docs = documents(&render(&quick_start(), &[]));
    assert_eq!(
        backend_of(&relayer_toml(&docs, true))["proxy"].as_str(),
        Some(""),
        "the default is the pod's environment"
    );
}

/// Issue 15, item 3: a proxy URL with credentials comes from the user's
/// Secret as `CONSONANT_RELAYER__BACKEND__PROXY` on both pods (never in a
/// ConfigMap); the real binary takes that variable as the override of
/// `backend.proxy` and shows it only redacted.
#[test]
fn a_proxy_secret_reaches_the_relayer_and_the_hook_as_the_config_override() {
    let docs = documents(&render(&egress_case(), &[]));
    for env in relayer_and_hook_env(&docs) {
        assert_eq!(
            env["CONSONANT_RELAYER__BACKEND__PROXY"]["valueFrom"],
            serde_json::json!({"secretKeyRef": {"name": "corp-proxy", "key": "proxyUrl"}}),
            "{env:?}"
        );
    }
    let docs = documents(&render(
        &egress_case(),
        &["--set", "backend.proxySecretKey=url"],
    ));
    for env in relayer_and_hook_env(&docs) {
        assert_eq!(
            env["CONSONANT_RELAYER__BACKEND__PROXY"]["valueFrom"]["secretKeyRef"]["key"],
            "url"
        );
    }
    // The checkov skip for "secrets as environment variables" is on exactly
    // these two pods, and only with a proxy Secret.
    for (kind, name) in [
        ("Deployment", RELEASE),
        ("Job", "consonant-relayer-register"),
    ] {
        let skip = annotations(find(&docs, kind, name))["checkov.io/skip2"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(skip.starts_with("CKV_K8S_35="), "{kind}: {skip}");
    }
    let plain = documents(&render(&quick_start(), &[]));
    assert!(annotations(find(&plain, "Deployment", RELEASE))["checkov.io/skip2"].is_null());

    // The config file leaves backend.proxy to the pod's environment...
    let toml_text = relayer_toml(&docs, true);
    assert_eq!(backend_of(&toml_text)["proxy"].as_str(), Some(""));
    // ...and the variable overrides it in the relayer, redacted in output.
    const VAR: &str = "CONSONANT_RELAYER__BACKEND__PROXY";
    let out = check_config_with_env(&toml_text, &[(VAR, "http://relay:hunter2@proxy.corp:3128")]);
    let effective = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        backend_of(&effective)["proxy"].as_str(),
        Some("http://relay:***@proxy.corp:3128"),
        "{effective}"
    );
    assert!(!(effective + &text(&out.stderr)).contains("hunter2"));
    // A bad URL there is refused naming the key and the variable, redacted.
    let out = check_config_with_env(
        &toml_text,
        &[(VAR, "https://relay:hunter2@proxy.corp:3128")],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "accepted an https:// proxy");
    assert!(
        stderr.contains("backend.proxy") && stderr.contains(VAR),
        "{stderr}"
    );
    assert!(
        !(text(&out.stdout) + &stderr).contains("hunter2"),
        "{stderr}"
    );
}

/// Issue 15, item 3: NO_PROXY (and no_proxy) on the relayer and the hook
/// keep in-cluster traffic direct: the defaults, the release's own
/// Services and the API server's addresses, then `backend.extraNoProxy`;
/// `backend.noProxy` replaces the defaults.
#[test]
fn no_proxy_keeps_in_cluster_traffic_direct() {
    let no_proxy = |docs: &[Value]| -> String {
        let [relayer, hook] = relayer_and_hook_env(docs);
        let value = relayer["NO_PROXY"]["value"].as_str().unwrap().to_string();
        for env in [&relayer, &hook] {
            assert_eq!(env["NO_PROXY"]["value"], value.as_str());
            assert_eq!(env["no_proxy"]["value"], value.as_str());
        }
        value
    };
    let docs = documents(&render(&quick_start(), &[]));
    assert_eq!(
        no_proxy(&docs),
        "localhost,127.0.0.1,::1,.svc,.cluster.local,kubernetes.default,consonant-relayer,consonant-relayer-otel"
    );
    // Those names are the release's Services.
    find(&docs, "Service", "consonant-relayer");
    find(&docs, "Service", "consonant-relayer-otel");

    let docs = documents(&render(&egress_case(), &[]));
    assert_eq!(
        no_proxy(&docs),
        "localhost,127.0.0.1,::1,.svc,.cluster.local,kubernetes.default,consonant-relayer,consonant-relayer-otel,10.96.0.1/32,.corp,10.0.0.0/8"
    );

    let docs = documents(&render(
        &quick_start(),
        &[
            "--set",
            "backend.noProxy={localhost,.svc}",
            "--set",
            "backend.extraNoProxy={.svc,.corp}",
            "--set",
            "otelCollector.enabled=false",
            "--set",
            "fullnameOverride=edge-relayer",
        ],
    ));
    let [relayer, hook] = {
        let deploy = find(&docs, "Deployment", "edge-relayer");
        let job = find(&docs, "Job", "edge-relayer-register");
        [
            env_of(container(&deploy["spec"]["template"]["spec"], "relayer")),
            env_of(container(&job["spec"]["template"]["spec"], "register")),
        ]
    };
    for env in [relayer, hook] {
        assert_eq!(
            env["NO_PROXY"]["value"],
            "localhost,.svc,edge-relayer,.corp"
        );
    }

    // An entry with a comma or a space would split the list: refused.
    refuses(
        &["backend.extraNoProxy={a b}"],
        &["/backend/extraNoProxy/0", "does not match pattern"],
    );
}

/// helm with these arguments: whether it succeeded, and everything it
/// printed.
fn helm_says(args: &[&str]) -> (bool, String) {
    let out = run(Command::new(&tools().helm).args(args));
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

/// Issue 15, item 3: a proxy URL with credentials in the values fails
/// rendering, pointing to `backend.proxySecret`, and the password appears
/// in no output: not in helm template's or install's error (with the
/// schema or without), not in lint's.
#[test]
fn proxy_credentials_in_values_fail_and_are_never_shown() {
    let chart = repo().join(CHART).display().to_string();
    for proxy in [
        "http://relay:hunter2@proxy.corp:3128",
        "https://relay:hunter2@proxy.corp:3128",
        "relay:hunter2@proxy.corp:3128",
        "http://relay:hunter2@proxy.corp",
        "socks5://relay:hunter2@proxy.corp:1080",
    ] {
        let value = format!("backend.proxy={proxy}");
        let base = [
            "--namespace",
            "consonant-system",
            "--set",
            "cluster.name=prod",
            "--set",
            "backend.url=https://backend.company.com",
            "--set",
            "auth.bearerToken=t",
            "--set",
            &value,
        ];
        let runs: [Vec<&str>; 4] = [
            [&["template", RELEASE, &chart][..], &base].concat(),
            [
                &["template", RELEASE, &chart, "--skip-schema-validation"][..],
                &base,
            ]
            .concat(),
            [&["install", RELEASE, &chart, "--dry-run=client"][..], &base].concat(),
            [&["lint", "--strict", &chart][..], &base].concat(),
        ];
        for (i, args) in runs.iter().enumerate() {
            let (ok, output) = helm_says(args);
            assert!(
                !output.contains("hunter2"),
                "helm {} with {proxy} shows the password:\n{output}",
                args[0]
            );
            if i < 3 {
                assert!(!ok, "helm {} accepted {proxy}", args[0]);
                for part in [
                    "backend.proxy holds credentials",
                    "backend.proxySecret=",
                    "not repeated",
                ] {
                    assert!(
                        output.contains(part),
                        "{proxy}: {part:?} missing from\n{output}"
                    );
                }
            }
        }
    }
}

/// Issue 15, item 3: proxies the relayer refuses are refused at install,
/// naming the value and what to write.
#[test]
fn bad_proxy_values_fail_with_a_clear_message() {
    for proxy in [
        "https://proxy.corp:3128",
        "socks5://proxy.corp:1080",
        "http://proxy.corp",
        "proxy.corp:3128",
    ] {
        refuses(
            &[&format!("backend.proxy={proxy}")],
            &["/backend/proxy", proxy, "does not match pattern"],
        );
        let out = helm_template(
            "consonant-system",
            &set(&[
                "cluster.name=prod",
                "backend.url=https://backend.company.com",
                "auth.bearerToken=t",
                &format!("backend.proxy={proxy}"),
            ]),
            &["--skip-schema-validation"],
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "accepted {proxy}");
        assert!(
            stderr.contains(&format!("backend.proxy \"{proxy}\" is not"))
                && stderr.contains("https:// and SOCKS proxies are not supported"),
            "{stderr}"
        );
    }
    refuses(
        &["backend.proxy=http://proxy.corp:99999"],
        &["backend.proxy \"http://proxy.corp:99999\" has port 99999"],
    );
    refuses(
        &[
            "backend.proxy=none",
            "backend.proxySecret=corp-proxy",
            "networkPolicy.proxy.port=3128",
        ],
        &["backend.proxy (\"none\") and backend.proxySecret are both set: set one"],
    );
    refuses(
        &["backend.proxySecret=corp-proxy"],
        &["backend.proxySecret is set but networkPolicy.proxy.port is not"],
    );
    // Without NetworkPolicies the chart needs no port.
    render(
        &quick_start(),
        &[
            "--set",
            "backend.proxySecret=corp-proxy",
            "--set",
            "networkPolicy.enabled=false",
        ],
    );
}

/// Issue 15, item 3: `backend.grpcEndpoints` is rendered in order, the
/// relayer reads it in that order, NOTES list it, and it cannot be set
/// beside `backend.grpcEndpoint`.
#[test]
fn grpc_endpoints_are_rendered_in_failover_order() {
    let want = [
        "grpcs://grpc-a.company.com:443",
        "grpcs://grpc-b.company.com:8443",
    ];
    let endpoints = |toml_text: &str| -> Vec<String> {
        backend_of(toml_text)["grpc_endpoints"]
            .as_array()
            .expect("grpc_endpoints is a list")
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    };
    let toml_text = relayer_toml(&documents(&render(&egress_case(), &[])), true);
    assert_eq!(endpoints(&toml_text), want, "{toml_text}");
    assert_eq!(backend_of(&toml_text)["grpc_endpoint"].as_str(), Some(""));
    let out = check_config(&toml_text);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        endpoints(&text(&out.stdout)),
        want,
        "the relayer's effective config"
    );

    let toml_text = relayer_toml(&documents(&render(&quick_start(), &[])), true);
    assert!(endpoints(&toml_text).is_empty(), "{toml_text}");

    let notes = install_notes(&egress_case(), &[]);
    assert!(
        notes.contains(
            "gRPC endpoints, in failover order: 1. grpcs://grpc-a.company.com:443, 2. grpcs://grpc-b.company.com:8443\n"
        ),
        "{notes}"
    );
    assert!(!install_notes(&quick_start(), &[]).contains("failover"));

    refuses(
        &[
            "backend.grpcEndpoint=grpcs://grpc.company.com:443",
            "backend.grpcEndpoints={grpcs://grpc-b.company.com:443}",
        ],
        &[
            "backend.grpcEndpoint \"grpcs://grpc.company.com:443\" and backend.grpcEndpoints are both set: set one",
        ],
    );
    refuses(
        &["backend.grpcEndpoints={grpcs://a.company.com:443,tcp://b.company.com:1}"],
        &["/backend/grpcEndpoints/1", "tcp://b.company.com:1"],
    );
    refuses(
        &["backend.grpcEndpoints={http://a.company.com:50051}"],
        &["/backend/grpcEndpoints/0", "http://a.company.com:50051"],
    );
    // The template's own checks hold without the schema too.
    let out = helm_template(
        "consonant-system",
        &set(&[
            "cluster.name=prod",
            "backend.url=https://backend.company.com",
            "auth.bearerToken=t",
            "backend.grpcEndpoints={http://a.company.com:50051}",
        ]),
        &["--skip-schema-validation"],
    );
    assert!(
        text(&out.stderr)
            .contains("backend.grpcEndpoints[0] \"http://a.company.com:50051\" is plaintext"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 15, item 3: through a proxy, the relayer and the hook may reach
/// the proxy's port (at its CIDRs, or anywhere with a NOTES warning) and no
/// longer the backend's; without one the backend rule is unchanged, and it
/// covers the port of every failover endpoint.
#[test]
fn network_policy_egress_follows_the_proxy_and_the_endpoints() {
    let policies = |docs: &[Value]| -> [Value; 2] {
        [
            find(docs, "NetworkPolicy", RELEASE).clone(),
            find(docs, "NetworkPolicy", "consonant-relayer-register").clone(),
        ]
    };

    // Direct (no proxy, or "none"): the backend's ports, public addresses.
    let direct = documents(&render(&quick_start(), &[]));
    let none = documents(&render(&quick_start(), &["--set", "backend.proxy=none"]));
    for (a, b) in policies(&direct).iter().zip(policies(&none).iter()) {
        assert_eq!(
            egress_ports(a),
            [vec![53, 53], vec![443, 6443], vec![443, 50051]]
        );
        assert_eq!(a["spec"]["egress"], b["spec"]["egress"]);
    }

    // backend.proxy: its port, to any address, and a warning.
    let docs = documents(&render(
        &quick_start(),
        &["--set", "backend.proxy=http://proxy.corp:8080"],
    ));
    for policy in policies(&docs) {
        assert_eq!(
            egress_ports(&policy),
            [vec![53, 53], vec![443, 6443], vec![8080]],
            "{policy}"
        );
        assert!(policy["spec"]["egress"][2]["to"].is_null(), "{policy}");
    }
    let notes = install_notes(
        &quick_start(),
        &["--set", "backend.proxy=http://proxy.corp:8080"],
    );
    for line in [
        "The relayer and the registration hook reach the backend through the HTTP proxy http://proxy.corp:8080; direct (NO_PROXY): localhost,",
        "WARNING: networkPolicy.proxy.cidrs is empty",
        "ANY address on the proxy's port 8080",
    ] {
        assert!(notes.contains(line), "no {line:?} in\n{notes}");
    }
    let plain = install_notes(&quick_start(), &[]);
    assert!(
        !plain.contains("HTTP proxy") && !plain.contains("networkPolicy.proxy"),
        "{plain}"
    );

    // A proxy Secret: networkPolicy.proxy.port at networkPolicy.proxy.cidrs,
    // whatever the endpoints' ports; no warning.
    let docs = documents(&render(&egress_case(), &[]));
    for policy in policies(&docs) {
        assert_eq!(
            egress_ports(&policy),
            [vec![53, 53], vec![443, 6443], vec![3128]],
            "{policy}"
        );
        assert_eq!(
            policy["spec"]["egress"][2]["to"],
            serde_json::json!([{"ipBlock": {"cidr": "10.20.0.5/32"}}])
        );
    }
    let notes = install_notes(&egress_case(), &[]);
    assert!(
        notes.contains(
            "The relayer and the registration hook reach the backend through the HTTP proxy in Secret consonant-system/corp-proxy (key proxyUrl); direct (NO_PROXY): localhost,127.0.0.1,::1,.svc,.cluster.local,kubernetes.default,consonant-relayer,consonant-relayer-otel,10.96.0.1/32,.corp,10.0.0.0/8\n"
        ),
        "{notes}"
    );
    assert!(!notes.contains("WARNING"), "{notes}");

    // Failover endpoints, direct: every endpoint's port.
    let docs = documents(&render(
        &quick_start(),
        &[
            "--set",
            "backend.grpcEndpoints={grpcs://a.company.com:443,grpcs://b.company.com:8443,grpc://c.company.com}",
        ],
    ));
    for policy in policies(&docs) {
        assert_eq!(
            egress_ports(&policy),
            [vec![53, 53], vec![443, 6443], vec![443, 8443, 50051]],
            "{policy}"
        );
    }
}
