//! Pods whose image the test registered ([`crate::ControlPlane::run_image_as`])
//! really run, as local processes of that binary — the way a kubelet would
//! run the container, minus the image:
//!
//! - each pod gets its own **network namespace** (`ip netns`) with only a
//!   loopback interface, and its own **mount namespace** (the one `ip netns
//!   exec` makes): ports never clash between replicas, and nothing leaves
//!   the machine's loopback. The API server and the ports the test exposed
//!   ([`crate::ControlPlane::expose_to_pods`]) appear inside the pod on
//!   127.0.0.1 at the same port numbers, forwarded over unix sockets
//!   (a unix socket crosses network namespaces; no routed address is used);
//! - its volumes are materialised — ConfigMap, Secret, projected
//!   (ServiceAccount token by TokenRequest bound to the pod, ConfigMap,
//!   downward API), emptyDir — and bind-mounted at their mount paths, over a
//!   private overlay of the top directory where the path does not exist yet,
//!   so the host's file system is never changed;
//! - its environment (values, field refs, Secret and ConfigMap keys,
//!   `KUBERNETES_SERVICE_HOST/PORT`) and arguments are the container's;
//! - readiness comes from the container's HTTP readiness (or startup) probe,
//!   run inside the pod's network namespace; the exit code decides a Job
//!   pod's phase; a `restartPolicy: Always` container is restarted;
//! - deleting the pod sends SIGTERM, waits the grace period, then kills.
//!
//! Needs root (namespaces), `ip`, `curl` and `python3` (the in-pod side of
//! the forwarders).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::time::now_rfc3339;

/// Images run as processes: image prefix → binary.
static RUNNABLE: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
/// Host loopback ports reachable inside pods, and where their sockets are.
static EXPOSED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static SOCKETS: OnceLock<PathBuf> = OnceLock::new();
/// Where pods' files live (inside the control plane's directory, which the
/// watchdog removes).
static PODS_DIR: OnceLock<PathBuf> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
/// Pods running now: pod uid → its runner.
static RUNNING: Mutex<BTreeMap<String, Arc<Running>>> = Mutex::new(BTreeMap::new());

/// Prefix of every network namespace this process makes (removed by
/// `scripts/kube-testenv down`).
pub(crate) fn netns_prefix() -> String {
    format!("kte{}-", std::process::id())
}

/// Called once by the kubelet thread: where pods' files and the sockets
/// live, and its runtime.
pub(crate) fn init(dir: &Path, runtime: tokio::runtime::Handle) -> Result<(), String> {
    let sockets = dir.join("sockets");
    let pods = dir.join("pods");
    for path in [&sockets, &pods] {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let _ = SOCKETS.set(sockets);
    let _ = PODS_DIR.set(pods);
    let _ = RUNTIME.set(runtime);
    Ok(())
}

pub(crate) fn register_image(prefix: &str, binary: PathBuf) {
    RUNNABLE.lock().unwrap().push((prefix.to_string(), binary));
}

/// Makes host `127.0.0.1:port` reachable inside every pod at the same port.
pub(crate) fn expose(port: u16) -> Result<(), String> {
    let mut exposed = EXPOSED.lock().unwrap();
    if exposed.contains(&port) {
        return Ok(());
    }
    let sockets = SOCKETS.get().ok_or("the kubelet is not running")?;
    let runtime = RUNTIME.get().ok_or("the kubelet is not running")?;
    let path = sockets.join(format!("{port}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(&path).map_err(|err| format!("{}: {err}", path.display()))?
    };
    runtime.spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    exposed.push(port);
    Ok(())
}

/// The binary a container's image runs as, if the test registered one.
pub(crate) fn binary_for(container: &Container) -> Option<PathBuf> {
    let image = container.image.as_deref()?;
    RUNNABLE
        .lock()
        .unwrap()
        .iter()
        .find(|(prefix, _)| image.starts_with(prefix.as_str()))
        .map(|(_, binary)| binary.clone())
}

/// One running pod.
pub(crate) struct Running {
    netns: String,
    pid: Mutex<Option<u32>>,
    stopping: std::sync::atomic::AtomicBool,
    /// `<dir>/<container>.log`: the container's stdout and stderr.
    pub(crate) dir: PathBuf,
}

/// The log file of a running (or finished) process pod's container.
pub(crate) fn log_file(uid: &str, container: &str) -> Option<PathBuf> {
    let running = RUNNING.lock().unwrap().get(uid).cloned()?;
    Some(running.dir.join(format!("{container}.log")))
}

/// Starts `pod` (already bound to this node) as processes. Errors become the
/// pod's status (phase Failed with the reason), like a kubelet that cannot
/// create a container.
pub(crate) async fn start(client: &kube::Client, pod: &Pod, api_port: u16) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let Some(root) = PODS_DIR.get() else {
        return;
    };
    let running = {
        let mut map = RUNNING.lock().unwrap();
        if map.contains_key(&uid) {
            return;
        }
        let running = Arc::new(Running {
            netns: format!("{}{}", netns_prefix(), &uid[..uid.len().min(8)]),
            pid: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            dir: root.join(&uid),
        });
        map.insert(uid.clone(), running.clone());
        running
    };
    if let Err(why) = prepare_and_run(client, pod, api_port, &running).await {
        let _ = pods
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {
                    "phase": "Failed", "reason": "StandInKubelet", "message": why,
                    "startTime": now_rfc3339(),
                }})),
            )
            .await;
    }
}

/// Stops a pod's processes (SIGTERM, then after `grace` SIGKILL) and
/// removes its network namespace.
pub(crate) async fn stop(uid: &str, grace: Duration) {
    let Some(running) = RUNNING.lock().unwrap().get(uid).cloned() else {
        return;
    };
    running
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let pid = *running.pid.lock().unwrap();
    if let Some(pid) = pid {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::process::Command::new("ip")
        .args(["netns", "del", &running.netns])
        .status()
        .await;
}

async fn prepare_and_run(
    client: &kube::Client,
    pod: &Pod,
    api_port: u16,
    running: &Arc<Running>,
) -> Result<(), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let container = spec.containers.first().ok_or("no container")?.clone();
    let binary = binary_for(&container).ok_or("no binary registered for this image")?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    std::fs::create_dir_all(&running.dir).map_err(|e| e.to_string())?;
    let volumes = materialise_volumes(client, pod, &running.dir.join("volumes")).await?;
    let env = environment(client, pod, &container, api_port).await?;
    // The network namespace: loopback only.
    run_ok("ip", &["netns", "add", &running.netns]).await?;
    run_ok("ip", &["-n", &running.netns, "link", "set", "lo", "up"]).await?;
    // The forwarders: the API server plus whatever the test exposed.
    expose(api_port)?;
    let ports: Vec<String> = EXPOSED.lock().unwrap().iter().map(u16::to_string).collect();
    let sockets = SOCKETS.get().ok_or("the kubelet is not running")?;
    let forwarder = tokio::process::Command::new("ip")
        .args(["netns", "exec", &running.netns, "python3", "-c", FORWARDER])
        .arg(sockets)
        .args(&ports)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start the in-pod forwarder: {e}"))?;
    let mut forwarder = forwarder;
    {
        use tokio::io::AsyncBufReadExt;
        let stdout = forwarder.stdout.take().ok_or("forwarder stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => {}
            other => return Err(format!("the in-pod forwarder did not start: {other:?}")),
        }
    }
    // Mounts, then the container's command.
    // The binary is opened before any mount: a volume mounted over its
    // directory (an emptyDir on /tmp, where a checkout may live) would hide
    // it; it is executed through the open descriptor.
    let mut script = format!(
        "set -e\nexec 3<{}\n",
        shell_quote(&binary.display().to_string())
    );
    let mut overlaid = Vec::new();
    // A mount over a directory that holds the volumes' sources (an emptyDir
    // on /tmp) would hide the sources of the mounts after it: those go last.
    let mut mounts: Vec<_> = container.volume_mounts.iter().flatten().collect();
    mounts.sort_by_key(|mount| running.dir.starts_with(&mount.mount_path));
    for mount in mounts {
        let source = volumes
            .get(&mount.name)
            .ok_or_else(|| format!("volumeMount {} names no volume", mount.name))?;
        let target = &mount.mount_path;
        if !Path::new(target).exists() {
            // Resolve symlinks (/var/run → /run) to find the real top directory.
            let top = top_dir(target);
            if !overlaid.contains(&top) {
                let ovl = running
                    .dir
                    .join(format!("overlay{}", top.replace('/', "_")));
                std::fs::create_dir_all(ovl.join("upper")).map_err(|e| e.to_string())?;
                std::fs::create_dir_all(ovl.join("work")).map_err(|e| e.to_string())?;
                script.push_str(&format!(
                    "mount -t overlay overlay -o lowerdir={top},upperdir={u},workdir={w} {top}\n",
                    u = ovl.join("upper").display(),
                    w = ovl.join("work").display(),
                ));
                overlaid.push(top);
            }
            script.push_str(&format!("mkdir -p '{target}'\n"));
        }
        script.push_str(&format!("mount --bind '{}' '{target}'\n", source.display()));
        if mount.read_only == Some(true) {
            script.push_str(&format!("mount -o remount,bind,ro '{target}'\n"));
        }
    }
    let mut argv: Vec<String> = vec!["/proc/self/fd/3".to_string()];
    if let Some(command) = &container.command {
        argv.extend(command.iter().skip(1).cloned());
    }
    argv.extend(container.args.clone().unwrap_or_default());
    script.push_str("exec env -i");
    for (key, value) in &env {
        script.push_str(&format!(" {}", shell_quote(&format!("{key}={value}"))));
    }
    for arg in &argv {
        script.push_str(&format!(" {}", shell_quote(arg)));
    }
    script.push('\n');
    std::fs::write(running.dir.join("start.sh"), &script).map_err(|e| e.to_string())?;

    let restart_always = spec.restart_policy.as_deref().unwrap_or("Always") == "Always";
    let client = client.clone();
    let pod = pod.clone();
    let running = running.clone();
    tokio::spawn(async move {
        let _forwarder = forwarder;
        let mut restarts = 0u32;
        loop {
            let outcome = run_once(&client, &pod, &container, &running, restarts).await;
            if running.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            keep_logs(&pod, &running);
            match outcome {
                Some(code) if !restart_always => {
                    let _ = finish(&client, &pod, &container, code).await;
                    return;
                }
                _ => {
                    restarts += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let _ = namespace;
    Ok(())
}

/// With `KUBE_TESTENV_KEEP_LOGS=DIR`, every process pod's output is copied
/// there when its container exits (the control plane's own directory goes
/// with the test process).
fn keep_logs(pod: &Pod, running: &Running) {
    let Some(keep) = std::env::var_os("KUBE_TESTENV_KEEP_LOGS") else {
        return;
    };
    let keep = PathBuf::from(keep);
    let _ = std::fs::create_dir_all(&keep);
    for entry in std::fs::read_dir(&running.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let name = format!(
                "{}_{}_{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                entry.file_name().to_string_lossy()
            );
            let _ = std::fs::copy(&path, keep.join(name));
        }
    }
}

/// Runs the container once: Running, probed until Ready, until it exits.
/// Returns the exit code.
async fn run_once(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    running: &Arc<Running>,
    restarts: u32,
) -> Option<i32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(running.dir.join(format!("{}.log", container.name)))
        .ok()?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &running.netns, "sh"])
        .arg(running.dir.join("start.sh"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    *running.pid.lock().unwrap() = child.id();
    let _ = set_status(
        client,
        pod,
        container,
        restarts,
        ContainerPhase::Running { ready: false },
    )
    .await;
    let probe = probe_of(container);
    let mut ready = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                *running.pid.lock().unwrap() = None;
                return status.ok().and_then(|s| s.code()).or(Some(137));
            }
            () = tokio::time::sleep(Duration::from_millis(500)), if !ready => {
                let ok = match &probe {
                    Some((port, path)) => probe_ok(&running.netns, *port, path).await,
                    None => true,
                };
                if ok {
                    ready = true;
                    let _ = set_status(client, pod, container, restarts, ContainerPhase::Running { ready: true }).await;
                }
            }
        }
    }
}

enum ContainerPhase {
    Running { ready: bool },
}

async fn set_status(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    restarts: u32,
    phase: ContainerPhase,
) -> Result<(), kube::Error> {
    let ContainerPhase::Running { ready } = phase;
    let now = now_rfc3339();
    let ready_text = if ready { "True" } else { "False" };
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            condition("PodScheduled", "True"), condition("Initialized", "True"),
            condition("ContainersReady", ready_text), condition("Ready", ready_text),
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "",
            "containerID": format!("testenv://{}", pod.metadata.uid.clone().unwrap_or_default()),
            "ready": ready, "started": true, "restartCount": restarts,
            "state": {"running": {"startedAt": now}},
        }],
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now,
    }});
    let pods: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}

/// A finished container of a `restartPolicy: Never/OnFailure` pod.
async fn finish(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    code: i32,
) -> Result<(), kube::Error> {
    let now = now_rfc3339();
    let (phase, reason) = if code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let status = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "",
            "ready": false, "started": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}},
        }],
    }});
    let pods: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}

/// The readiness (else startup) probe's HTTP port and path.
fn probe_of(container: &Container) -> Option<(u16, String)> {
    let probe = container
        .readiness_probe
        .as_ref()
        .or(container.startup_probe.as_ref())?;
    let http = probe.http_get.as_ref()?;
    let port = match &http.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => *port as u16,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u16)?,
    };
    Some((port, http.path.clone().unwrap_or_else(|| "/".into())))
}

async fn probe_ok(netns: &str, port: u16, path: &str) -> bool {
    tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-fsS",
            "-o",
            "/dev/null",
            "-m",
            "2",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The real top directory of a path that does not exist yet (symlinks on
/// the way resolved): `/var/run/secrets/x` → `/run`, `/etc/consonant` → `/etc`.
fn top_dir(path: &str) -> String {
    let mut existing = PathBuf::from(path);
    while !existing.exists() {
        if !existing.pop() {
            break;
        }
    }
    let real = std::fs::canonicalize(&existing).unwrap_or(existing);
    real.components()
        .nth(1)
        .map(|c| format!("/{}", c.as_os_str().to_string_lossy()))
        .unwrap_or_else(|| "/".into())
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

async fn run_ok(program: &str, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes each volume's files under `root/<volume>/` and returns where.
async fn materialise_volumes(
    client: &kube::Client,
    pod: &Pod,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = root.join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let value = serde_json::to_value(volume).map_err(|e| e.to_string())?;
        if let Some(cm) = value.get("configMap") {
            write_config_map(client, namespace, cm, &dir).await?;
        } else if let Some(secret) = value.get("secret") {
            write_secret(client, namespace, secret, &dir).await?;
        } else if let Some(projected) = value.get("projected") {
            for source in projected["sources"].as_array().into_iter().flatten() {
                if let Some(token) = source.get("serviceAccountToken") {
                    let path = token["path"].as_str().unwrap_or("token");
                    let jwt = service_account_token(client, pod, token).await?;
                    write_file(&dir.join(path), jwt.as_bytes())?;
                } else if let Some(cm) = source.get("configMap") {
                    write_config_map(client, namespace, cm, &dir).await?;
                } else if let Some(secret) = source.get("secret") {
                    write_secret(client, namespace, secret, &dir).await?;
                } else if let Some(downward) = source.get("downwardAPI") {
                    for item in downward["items"].as_array().into_iter().flatten() {
                        let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                        let text = field_ref(pod, field).unwrap_or_default();
                        write_file(
                            &dir.join(item["path"].as_str().unwrap_or(field)),
                            text.as_bytes(),
                        )?;
                    }
                }
            }
        } else if value.get("emptyDir").is_none() {
            return Err(format!(
                "volume {} has a kind the stand-in kubelet does not run",
                volume.name
            ));
        }
        out.insert(volume.name.clone(), dir);
    }
    Ok(out)
}

async fn write_config_map(
    client: &kube::Client,
    namespace: &str,
    source: &Value,
    dir: &Path,
) -> Result<(), String> {
    let name = source["name"].as_str().unwrap_or_default();
    let optional = source["optional"].as_bool().unwrap_or(false);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
        return if optional {
            Ok(())
        } else {
            Err(format!("ConfigMap {name} not found"))
        };
    };
    let data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    write_keys(&data, source, dir)
}

async fn write_secret(
    client: &kube::Client,
    namespace: &str,
    source: &Value,
    dir: &Path,
) -> Result<(), String> {
    let name = source["secretName"]
        .as_str()
        .or(source["name"].as_str())
        .unwrap_or_default();
    let optional = source["optional"].as_bool().unwrap_or(false);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
        return if optional {
            Ok(())
        } else {
            Err(format!("Secret {name} not found"))
        };
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    write_keys(&data, source, dir)
}

/// All keys, or only `items` (key → path).
fn write_keys(data: &BTreeMap<String, Vec<u8>>, source: &Value, dir: &Path) -> Result<(), String> {
    match source["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                if let Some(bytes) = data.get(key) {
                    write_file(&dir.join(item["path"].as_str().unwrap_or(key)), bytes)?;
                }
            }
        }
        None => {
            for (key, bytes) in data {
                write_file(&dir.join(key), bytes)?;
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A token for the pod's ServiceAccount, bound to the pod (TokenRequest).
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    source: &Value,
) -> Result<String, String> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let audiences: Vec<&str> = source["audience"].as_str().into_iter().collect();
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": audiences,
        "expirationSeconds": source["expirationSeconds"].as_i64().unwrap_or(3607),
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod.metadata.name, "uid": pod.metadata.uid},
    }}))
    .map_err(|e| e.to_string())?;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    api.create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for {namespace}/{account}: {e}"))?
        .status
        .map(|s| s.token)
        .ok_or_else(|| "TokenRequest without a token".into())
}

fn field_ref(pod: &Pod, path: &str) -> Option<String> {
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
        _ => None,
    }
}

/// The container's environment as a kubelet builds it.
async fn environment(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    api_port: u16,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        (
            "HOSTNAME".to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "KUBERNETES_SERVICE_HOST".to_string(),
            "127.0.0.1".to_string(),
        ),
        ("KUBERNETES_SERVICE_PORT".to_string(), api_port.to_string()),
    ];
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            value.clone()
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_ref(pod, &field.field_path).unwrap_or_default()
            } else if let Some(key) = &from.secret_key_ref {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let secret = api.get_opt(&key.name).await.map_err(|e| e.to_string())?;
                match secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&key.key).cloned())
                {
                    Some(bytes) => String::from_utf8_lossy(&bytes.0).into_owned(),
                    None if key.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "env {}: Secret {} key {} not found",
                            var.name, key.name, key.key
                        ))
                    }
                }
            } else if let Some(key) = &from.config_map_key_ref {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let cm = api.get_opt(&key.name).await.map_err(|e| e.to_string())?;
                match cm
                    .and_then(|c| c.data)
                    .and_then(|d| d.get(&key.key).cloned())
                {
                    Some(text) => text,
                    None if key.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "env {}: ConfigMap {} key {} not found",
                            var.name, key.name, key.key
                        ))
                    }
                }
            } else {
                continue;
            }
        } else {
            String::new()
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// The in-pod side of the forwarders: `127.0.0.1:<port>` → the host's unix
/// socket `<dir>/<port>.sock`. Prints `ready` once listening.
const FORWARDER: &str = r#"
import asyncio, sys
sockets, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass
async def handle(reader, writer, port):
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(f"{sockets}/{port}.sock")
    except Exception:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
async def main():
    servers = [await asyncio.start_server(lambda r, w, p=p: handle(r, w, p), "127.0.0.1", p) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))
asyncio.run(main())
"#;
