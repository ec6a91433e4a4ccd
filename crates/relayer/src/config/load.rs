//! Loading the configuration: the TOML file, then
//! `CONSONANT_RELAYER__<SECTION>__<KEY>` environment overrides, deserialised
//! into [`RelayerConfig`] and validated. Also renders the effective config
//! for `check-config` with secrets redacted.
//!
//! Environment values are converted by the type the key has in the model
//! (bool, integer, comma-separated list, else string) rather than by guessing
//! from the text, so `CLUSTER__NAME=123` stays a string and
//! `CLUSTER__REGION=nan` does not become a float.

use std::path::Path;

use config::{Config, File, FileFormat, Value, ValueKind};

use super::error::ConfigError;
use super::model::RelayerConfig;
use super::validate::validate;

/// Prefix of every override variable, separator included.
pub const ENV_PREFIX: &str = "CONSONANT_RELAYER__";
const ENV_SEPARATOR: &str = "__";

/// Reads `path`, applies overrides from the process environment, validates.
pub fn load(path: &Path) -> Result<RelayerConfig, ConfigError> {
    // vars_os: std::env::vars() panics on a non-UTF-8 variable anywhere in
    // the environment, even one that is not ours.
    let env = std::env::vars_os().filter_map(|(k, v)| {
        let key = k.into_string().ok()?;
        key.starts_with(ENV_PREFIX)
            .then(|| (key, v.to_string_lossy().into_owned()))
    });
    load_with_env(path, env)
}

/// [`load`] with an explicit environment, so tests need not mutate the
/// process's. Variables without [`ENV_PREFIX`] are ignored.
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RelayerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path, env)
}

/// [`load_with_env`] after the file is read: `text` is the TOML, `path`
/// only names it in errors. Public so the config can be loaded from memory
/// (the `fuzzing` harness feeds it arbitrary text).
pub fn parse_str(
    text: &str,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RelayerConfig, ConfigError> {
    let origins = Origins {
        file: path.display().to_string(),
        env: env_overrides(env),
    };

    let mut builder = Config::builder().add_source(File::from_str(text, FileFormat::Toml));
    for o in &origins.env {
        if o.key.split('.').any(str::is_empty) {
            return Err(ConfigError::Parse {
                key: o.key.clone(),
                origin: format!("from {}", o.var),
                message: format!("is not a config key: name it {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}BACKEND__URL"),
            });
        }
        builder = builder
            .set_override(o.key.as_str(), o.value.clone())
            .map_err(|err| ConfigError::Parse {
                key: o.key.clone(),
                origin: format!("from {}", o.var),
                message: format!("{err}: name a key as {ENV_PREFIX}<SECTION>__<KEY>"),
            })?;
    }
    let merged = builder.build().map_err(|err| match err {
        config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
            path: path.to_path_buf(),
            message: cause.to_string(),
        },
        other => ConfigError::Parse {
            key: String::new(),
            origin: origins.of(""),
            message: other.to_string(),
        },
    })?;

    let cfg: RelayerConfig =
        serde_path_to_error::deserialize(merged).map_err(|err| origins.parse_error(err))?;

    let mut errors = validate(&cfg);
    if errors.is_empty() {
        return Ok(cfg);
    }
    for error in &mut errors {
        error.origin = origins.of(&error.key);
    }
    Err(ConfigError::Invalid(errors))
}

/// One `CONSONANT_RELAYER__...` variable, converted.
struct EnvOverride {
    var: String,
    key: String,
    value: Value,
}

/// Where each key's value came from, to name it in errors.
struct Origins {
    file: String,
    env: Vec<EnvOverride>,
}

impl Origins {
    fn of(&self, key: &str) -> String {
        let related = |o: &&EnvOverride| {
            !key.is_empty()
                && (o.key == key
                    || o.key.starts_with(&format!("{key}."))
                    || key.starts_with(&format!("{}.", o.key)))
        };
        match self.env.iter().find(related) {
            Some(o) => format!("from {}", o.var),
            None => format!("in {}", self.file),
        }
    }

    fn parse_error(&self, err: serde_path_to_error::Error<config::ConfigError>) -> ConfigError {
        let mut key = err.path().to_string();
        let message = plain_message(&err.into_inner());
        let message = match unknown_field(&message) {
            Some((field, expected)) => {
                // serde_path_to_error stops at the struct holding the
                // unknown field; the user needs the full key.
                if key == "." || key.is_empty() {
                    key = field.to_string();
                } else if !key.ends_with(&format!(".{field}")) && key != field {
                    key = format!("{key}.{field}");
                }
                format!("unknown key (a typo?); {expected}")
            }
            None => message,
        };
        ConfigError::Parse {
            origin: self.of(&key),
            key,
            message,
        }
    }
}

/// The error without config's " for key `x` in origin" suffixes: the key
/// and origin are already in our message, worded for the user.
fn plain_message(err: &config::ConfigError) -> String {
    match err {
        config::ConfigError::At { error, .. } => plain_message(error),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        other => other.to_string(),
    }
}

/// Splits serde's "unknown field `x`, expected one of ..." message.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    Some((field, rest.trim_start_matches(',').trim()))
}

fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<EnvOverride> {
    let defaults = toml::Value::try_from(RelayerConfig::default()).ok();
    let mut overrides: Vec<EnvOverride> = env
        .into_iter()
        .filter_map(|(var, text)| {
            let rest = var.strip_prefix(ENV_PREFIX)?;
            let key = rest
                .split(ENV_SEPARATOR)
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            let kind = convert(default_at(defaults.as_ref(), &key), &text);
            Some(EnvOverride {
                value: Value::new(Some(&var), kind),
                var,
                key,
            })
        })
        .collect();
    // Deterministic order: with both `A__B` and `A__B__C` set, the error
    // names the same variable on every run.
    overrides.sort_by(|a, b| a.var.cmp(&b.var));
    overrides
}

fn default_at<'a>(defaults: Option<&'a toml::Value>, key: &str) -> Option<&'a toml::Value> {
    key.split('.')
        .try_fold(defaults?, |node, segment| node.as_table()?.get(segment))
}

/// Text that does not fit the target type stays a string, so deserialising
/// fails with the key and the variable named instead of being dropped here.
fn convert(target: Option<&toml::Value>, text: &str) -> ValueKind {
    match target {
        Some(toml::Value::Boolean(_)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" => ValueKind::Boolean(true),
            "false" => ValueKind::Boolean(false),
            _ => ValueKind::String(text.to_string()),
        },
        Some(toml::Value::Integer(_)) => match text.trim().parse::<i64>() {
            Ok(n) => ValueKind::I64(n),
            Err(_) => ValueKind::String(text.to_string()),
        },
        Some(toml::Value::Array(_)) => ValueKind::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::new(None, ValueKind::String(item.to_string())))
                .collect(),
        ),
        _ => ValueKind::String(text.to_string()),
    }
}

/// The effective configuration as TOML, for `check-config`. [`Secret`]
/// fields already serialise as `***`; on top of that any key that names a
/// token, password or private key, and any password inside a URL, is
/// replaced, so a secret added later as a plain `String` still does not leak.
///
/// [`Secret`]: consonant_secret::Secret
pub fn redacted_toml(cfg: &RelayerConfig) -> String {
    let mut value = match toml::Value::try_from(cfg) {
        Ok(value) => value,
        Err(err) => return format!("# cannot render the configuration: {err}\n"),
    };
    redact(&mut value, "");
    // `toml::Value` tables are sorted by key; a trip back through the model
    // restores the contract's section and key order. Redaction only swaps
    // strings for strings, so the trip cannot fail on a well-formed model.
    let ordered = value
        .clone()
        .try_into::<RelayerConfig>()
        .ok()
        .and_then(|redacted| toml::to_string_pretty(&redacted).ok());
    match ordered {
        Some(text) => text,
        None => toml::to_string_pretty(&value)
            .unwrap_or_else(|err| format!("# cannot render the configuration: {err}\n")),
    }
}

const REDACTED: &str = "***";

fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                redact(v, k);
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::String(text) => {
            if is_secret_key(key) {
                *text = REDACTED.to_string();
            } else if let Some(clean) = super::redact::redact_url_password(text) {
                *text = clean;
            }
        }
        _ => {}
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // Paths and names of secrets are not secrets.
    let names_a_secret = ["_file", "_name", "_namespace", "_path"]
        .iter()
        .any(|suffix| key.ends_with(suffix));
    let looks_secret = [
        "token",
        "password",
        "passwd",
        "secret",
        "private_key",
        "api_key",
    ]
    .iter()
    .any(|word| key.contains(word));
    looks_secret && !names_a_secret
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    const MINIMAL: &str =
        "[cluster]\nname = \"prod-1\"\n[backend]\nurl = \"https://backend.example.com\"\n";

    fn write(toml: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(toml.as_bytes()).expect("write temp file");
        file
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What a load must give: a config passing the closure's asserts, or an
    /// error containing every needle (`{file}` stands for the file's path).
    type Expected<'a> = Result<&'a dyn Fn(&RelayerConfig), &'a [&'a str]>;

    fn check(toml: &str, vars: &[(&str, &str)], expected: Expected<'_>) {
        let file = write(toml);
        let result = load_with_env(file.path(), env(vars));
        match (result, expected) {
            (Ok(cfg), Ok(expect_ok)) => expect_ok(&cfg),
            (Err(err), Err(needles)) => {
                let text = err.to_string();
                let path = file.path().display().to_string();
                for needle in needles {
                    let needle = needle.replace("{file}", &path);
                    assert!(text.contains(&needle), "{text:?} lacks {needle:?}");
                }
            }
            (Ok(cfg), Err(needles)) => panic!("expected an error with {needles:?}, got {cfg:#?}"),
            (Err(err), Ok(_)) => panic!("unexpected error: {err}"),
        }
    }

    #[test]
    fn minimal_file_gets_every_default() {
        check(
            MINIMAL,
            &[],
            Ok(&|cfg| {
                let mut expected = RelayerConfig::default();
                expected.cluster.name = "prod-1".into();
                expected.backend.url = "https://backend.example.com".into();
                assert_eq!(cfg, &expected);
            }),
        );
    }

    #[test]
    fn every_section_round_trips() {
        let mut cfg = RelayerConfig::default();
        cfg.cluster.name = "edge-7".into();
        cfg.cluster.region = "eu-west-1".into();
        cfg.cluster.labels.insert("team".into(), "platform".into());
        cfg.backend.url = "http://backend.local".into();
        cfg.backend.grpc_endpoint = "grpc://backend.local:9000".into();
        cfg.backend.tls_verify = false;
        cfg.credentials.secret_name = "relayer-cluster".into();
        cfg.connection.heartbeat_interval = Duration::from_millis(2500);
        cfg.connection.replay_buffer_bytes = 8 << 20;
        cfg.commands.max_in_flight = 3;
        cfg.commands.allowed_namespaces = vec!["a".into(), "b".into()];
        cfg.commands.allowed_actions = vec!["ping".into()];
        cfg.telemetry.enabled = false;
        cfg.telemetry.max_batch_bytes = 2000;
        cfg.kubernetes.kubeconfig = "/kube/config".into();
        cfg.health.debug_actors = false;
        cfg.logging.format = "text".into();
        let text = redacted_toml(&cfg);
        let expected = cfg.clone();
        check(&text, &[], Ok(&move |got| assert_eq!(got, &expected)));
    }

    #[test]
    fn env_overrides_beat_the_file_with_typed_values() {
        check(
            &format!("{MINIMAL}[commands]\nmax_in_flight = 5\n"),
            &[
                ("CONSONANT_RELAYER__BACKEND__GRPC_ENDPOINT", "grpcs://g:443"),
                ("CONSONANT_RELAYER__COMMANDS__MAX_IN_FLIGHT", "10"),
                ("CONSONANT_RELAYER__COMMANDS__ALLOWED_NAMESPACES", "a, b"),
                ("CONSONANT_RELAYER__TELEMETRY__ENABLED", "false"),
                (
                    "CONSONANT_RELAYER__CONNECTION__REPLAY_BUFFER_BYTES",
                    "16MiB",
                ),
                ("CONSONANT_RELAYER__CONNECTION__HEARTBEAT_INTERVAL", "3s"),
                ("CONSONANT_RELAYER__CLUSTER__NAME", "123"),
                ("CONSONANT_RELAYER__CLUSTER__LABELS__TEAM", "true"),
                ("OTHER_VAR", "ignored"),
            ],
            Ok(&|cfg| {
                assert_eq!(cfg.backend.grpc_endpoint, "grpcs://g:443");
                assert_eq!(cfg.commands.max_in_flight, 10);
                assert_eq!(cfg.commands.allowed_namespaces, ["a", "b"]);
                assert!(!cfg.telemetry.enabled);
                assert_eq!(cfg.connection.replay_buffer_bytes, 16 << 20);
                assert_eq!(cfg.connection.heartbeat_interval, Duration::from_secs(3));
                assert_eq!(cfg.cluster.name, "123");
                assert_eq!(cfg.cluster.labels["team"], "true");
                assert_eq!(cfg.backend.url, "https://backend.example.com");
            }),
        );
    }

    #[test]
    fn unknown_keys_name_the_dotted_key_and_the_source() {
        check(
            &format!("{MINIMAL}[connection]\nheartbeat_intervall = \"5s\"\n"),
            &[],
            Err(&[
                "connection.heartbeat_intervall in {file}",
                "unknown key",
                "heartbeat_interval",
            ]),
        );
        check(
            &format!("{MINIMAL}[loging]\nlevel = \"info\"\n"),
            &[],
            Err(&["loging in {file}", "unknown key"]),
        );
        check(
            MINIMAL,
            &[("CONSONANT_RELAYER__BACKEND____URL", "x")],
            Err(&["from CONSONANT_RELAYER__BACKEND____URL: is not a config key"]),
        );
        check(
            MINIMAL,
            &[("CONSONANT_RELAYER__COMMANDS__MAX_INFLIGHT", "3")],
            Err(&[
                "commands.max_inflight from CONSONANT_RELAYER__COMMANDS__MAX_INFLIGHT",
                "unknown key",
            ]),
        );
    }

    #[test]
    fn bad_values_name_key_value_and_source() {
        check(
            &format!("{MINIMAL}[connection]\nbackoff_base = \"ten\"\n"),
            &[],
            Err(&[
                "connection.backoff_base in {file}",
                "\"ten\"",
                "like \"500ms\"",
            ]),
        );
        check(
            MINIMAL,
            &[("CONSONANT_RELAYER__COMMANDS__BURST", "lots")],
            Err(&[
                "commands.burst from CONSONANT_RELAYER__COMMANDS__BURST",
                "\"lots\"",
            ]),
        );
        check(
            "[cluster\nname = 1",
            &[],
            Err(&["{file} is not valid TOML"]),
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.toml");
        let err = load_with_env(&path, Vec::new()).expect_err("missing file");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn every_validation_error_is_reported_with_its_source() {
        check(
            "[cluster]\nname = \"Prod_1\"\n[backend]\nurl = \"https://b\"\n[logging]\nformat = \"xml\"\n",
            &[("CONSONANT_RELAYER__COMMANDS__MAX_IN_FLIGHT", "0")],
            Err(&[
                "3 invalid values",
                "\n  cluster.name = \"Prod_1\" in {file} is not a DNS-1123 label",
                "\n  commands.max_in_flight = 0 from CONSONANT_RELAYER__COMMANDS__MAX_IN_FLIGHT is out of range: use a number between 1 and 100000",
                "\n  logging.format = \"xml\" in {file} is not a log format",
            ]),
        );
    }

    #[test]
    fn redaction() {
        assert!(is_secret_key("token"));
        assert!(is_secret_key("client_password"));
        assert!(!is_secret_key("cluster_token_file"));
        assert!(!is_secret_key("secret_name"));
        assert_eq!(
            super::super::redact::redact_url_password("https://u:hunter2@b.example.com/x")
                .as_deref(),
            Some("https://u:***@b.example.com/x")
        );
        assert_eq!(
            super::super::redact::redact_url_password("https://b.example.com/x@y"),
            None
        );

        // A future section holding a token, plain or as `Secret`.
        let mut future: toml::Value =
            toml::from_str("[auth]\nbootstrap_token = \"hunter2\"\ntoken_file = \"/t\"\n")
                .expect("toml");
        redact(&mut future, "");
        assert_eq!(future["auth"]["bootstrap_token"].as_str(), Some("***"));
        assert_eq!(future["auth"]["token_file"].as_str(), Some("/t"));
        let secret = toml::Value::try_from(consonant_secret::Secret::new("hunter2")).expect("toml");
        assert_eq!(secret.as_str(), Some("***"));

        let mut cfg = RelayerConfig::default();
        cfg.backend.url = "https://u:hunter2@b".into();
        let text = redacted_toml(&cfg);
        assert!(!text.contains("hunter2"), "{text}");
        let position = |section: &str| text.find(section).unwrap_or(usize::MAX);
        assert!(
            position("[cluster]") < position("[backend]"),
            "contract order: {text}"
        );
        assert!(
            position("[backend]") < position("[logging]"),
            "contract order: {text}"
        );
        assert!(
            text.contains("cluster_token_file = \"/var/run/secrets/consonant/clusterToken\""),
            "{text}"
        );
    }
}
