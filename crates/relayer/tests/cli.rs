//! The binary's command line: `--version`, `check-config` and `run` with bad
//! configuration fail with messages that name the key, value and fix.

use std::process::Command;

fn relayer(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consonant-relayer"));
    command.args(args).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayer.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path.display().to_string())
}

const MINIMAL: &str =
    "[cluster]\nname = \"prod-1\"\n[backend]\nurl = \"https://backend.example.com\"\n";

#[test]
fn version_prints_the_crate_version() {
    let (code, stdout, _) = relayer(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("consonant-relayer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let (_dir, path) = config_file(MINIMAL);
    let (code, stdout, stderr) = relayer(&["check-config", "--config", &path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("name = \"prod-1\""), "{stdout}");
    assert!(
        stdout.contains("heartbeat_interval = \"10s\""),
        "defaults filled in: {stdout}"
    );
    assert!(stdout.contains("replay_buffer_bytes = \"64MiB\""));
}

#[test]
fn unknown_key_names_the_key_and_the_file() {
    let (_dir, path) = config_file(&format!(
        "{MINIMAL}[connection]\nheartbeat_intervall = \"5s\"\n"
    ));
    let (code, _, stderr) = relayer(&["check-config", "--config", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("connection.heartbeat_intervall"),
        "{stderr}"
    );
    assert!(stderr.contains(&path), "{stderr}");
}

#[test]
fn bad_values_name_key_value_and_what_is_allowed() {
    let (_dir, path) = config_file("[cluster]\nname = \"Prod_1\"\n[backend]\nurl = \"https://b.example.com\"\n[connection]\nheartbeat_interval = \"soon\"\n");
    let (code, _, stderr) = relayer(&["check-config", "--config", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("connection.heartbeat_interval") && stderr.contains("soon"),
        "{stderr}"
    );

    let (_dir, path) =
        config_file("[cluster]\nname = \"Prod_1\"\n[backend]\nurl = \"https://b.example.com\"\n");
    let (code, _, stderr) = relayer(&["run", "--config", &path], &[]);
    assert_eq!(code, 1, "run refuses a bad config before starting");
    assert!(
        stderr.contains("cluster.name") && stderr.contains("Prod_1") && stderr.contains("DNS-1123"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let (_dir, path) = config_file(MINIMAL);
    let (code, stdout, stderr) = relayer(
        &["check-config", "--config", &path],
        &[("CONSONANT_RELAYER__COMMANDS__MAX_IN_FLIGHT", "7")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max_in_flight = 7"), "{stdout}");
    let (code, _, stderr) = relayer(
        &["check-config", "--config", &path],
        &[("CONSONANT_RELAYER__CONNECTION__HEARTBEAT", "5s")],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("CONSONANT_RELAYER__CONNECTION__HEARTBEAT"),
        "{stderr}"
    );
}

#[test]
fn the_production_binary_has_no_dev_backend_and_no_demo() {
    for subcommand in ["dev-backend", "demo"] {
        let (code, _, stderr) = relayer(&[subcommand, "--help"], &[]);
        assert_eq!(code, 2, "{subcommand}: {stderr}");
        assert!(
            stderr.contains(&format!("unrecognized subcommand '{subcommand}'")),
            "{stderr}"
        );
    }
}

#[test]
fn out_of_range_values_never_reach_the_running_relayer() {
    // These used to pass check-config: the first panicked on every dial
    // (overflow), the second made `logs` fetch whole files.
    for (section, key, value, range) in [
        (
            "connection",
            "heartbeat_interval",
            "\"6148914691236517206s\"",
            "between \"100ms\" and \"5m\"",
        ),
        (
            "connection",
            "max_frame_bytes",
            "\"4KiB\"",
            "between \"64KiB\" and \"64MiB\"",
        ),
        (
            "commands",
            "max_in_flight",
            "1000000",
            "between 1 and 100000",
        ),
    ] {
        let (_dir, path) = config_file(&format!("{MINIMAL}[{section}]\n{key} = {value}\n"));
        for subcommand in ["check-config", "run"] {
            let (code, _, stderr) = relayer(&[subcommand, "--config", &path], &[]);
            assert_eq!(code, 1, "{subcommand} {key}: {stderr}");
            assert!(
                stderr.contains(&format!("{section}.{key}")) && stderr.contains(range),
                "{subcommand}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}
