//! The developer binary's command line: the production subcommands are all
//! there, and `dev-backend` keeps dev-backend.md's exact flags.

use std::process::Command;

fn dev(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_consonant-relayer-dev"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the dev binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_backend_help_says_it_is_not_for_production_and_has_the_spec_flags() {
    let (code, stdout, stderr) = dev(&["dev-backend", "--help"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.to_lowercase().contains("not a production backend"),
        "{stdout}"
    );
    for flag in [
        "--grpc-listen",
        "--http-listen",
        "--bootstrap-token",
        "--cluster",
        "--heartbeat-interval",
    ] {
        assert!(stdout.contains(flag), "{flag} missing: {stdout}");
    }
}

#[test]
fn every_production_subcommand_and_the_demo_are_there() {
    let (code, stdout, stderr) = dev(&["--help"]);
    assert_eq!(code, 0, "{stderr}");
    for subcommand in ["run", "register", "check-config", "dev-backend", "demo"] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with(subcommand)),
            "{subcommand} missing: {stdout}"
        );
    }
}
