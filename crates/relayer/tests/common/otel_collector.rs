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
