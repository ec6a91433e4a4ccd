//! The pinned chart tools from `scripts/install-chart-tools` (helm,
//! kubectl, kubernetes-validate, checkov), installed or found in the cache
//! once per test binary; the script itself serialises concurrent installs
//! with a file lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub(crate) struct ChartTools {
    pub helm: PathBuf,
    pub kubernetes_validate: PathBuf,
    pub checkov: PathBuf,
    pub python: PathBuf,
}

/// The workspace root (the chart, scripts and `.tools/` live there).
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn chart_tools() -> &'static ChartTools {
    static TOOLS: OnceLock<ChartTools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/install-chart-tools"))
            .output()
            .expect("run scripts/install-chart-tools");
        assert!(
            out.status.success(),
            "scripts/install-chart-tools failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 paths");
        let path = |key: &str| -> PathBuf {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("install-chart-tools printed no {key}=: {stdout}"))
                .into()
        };
        ChartTools {
            helm: path("HELM"),
            kubernetes_validate: path("KUBERNETES_VALIDATE"),
            checkov: path("CHECKOV"),
            python: path("PYTHON"),
        }
    })
}
