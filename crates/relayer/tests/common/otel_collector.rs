//! The real OpenTelemetry Collector from `scripts/build-otel-collector`
//! (built from the pinned Go module in `tools/otel-collector/`, cached under
//! `.tools/`), found or built once per test binary; the script serialises
//! concurrent builds with a file lock.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::chart_tools::repo;

pub(crate) struct OtelCollector {
    /// The `otelcol` binary.
    pub binary: PathBuf,
    /// The collector release it is built from, e.g. `0.160.0`.
    pub release: String,
}

pub(crate) fn otel_collector() -> &'static OtelCollector {
    static COLLECTOR: OnceLock<OtelCollector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/build-otel-collector"))
            .output()
            .expect("run scripts/build-otel-collector");
        assert!(
            out.status.success(),
            "scripts/build-otel-collector failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 paths");
        let value = |key: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("build-otel-collector printed no {key}=: {stdout}"))
                .to_string()
        };
        OtelCollector {
            binary: value("OTELCOL").into(),
            release: value("OTELCOL_VERSION"),
        }
    })
}

/// The real collector running with a config of the test's, as a child
/// process killed on drop; its output is kept for failure messages.
pub(crate) struct RunningCollector {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl RunningCollector {
    /// Starts `otelcol --config` with `config` (YAML) and `env`.
    pub(crate) fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(&otel_collector().binary);
        command
            .arg(format!("--config={}", path.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the collector");
        let output = super::capture_output(&mut child, "collector");
        Self {
            child,
            output,
            _dir: dir,
        }
    }

    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the health_check extension at `health` answers 200.
    pub(crate) async fn wait_healthy(&mut self, health: std::net::SocketAddr) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the collector exited ({status}):\n{}", self.output());
            }
            if let Ok(response) = reqwest::get(format!("http://{health}/")).await {
                if response.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "the collector was not healthy within 30 s:\n{}",
            self.output()
        );
    }
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
