//! `consonant-relayer register`: the chart's pre-install/pre-upgrade hook.
//! It turns a single-use bootstrap token into cluster credentials
//! (protocol.md, "Registration HTTP API") and stores them in the Secret
//! `<fullname>-cluster`; `docs/register.md` documents flags, environment and
//! exit codes.
//!
//! Pieces: [`token`] (where the bootstrap token comes from, its checks),
//! [`body`] (request and answer), [`client`] (HTTP over rustls, retries
//! inside the `--timeout` budget), [`tls`] (TLS failures as CA / name /
//! protocol), [`secret`] (the Kubernetes Secret), [`error`] (one-line
//! causes and exit codes). This module wires them in order: idempotency
//! check, RBAC dry run, `/version`, `POST /api/v1/clusters`, Secret write,
//! bootstrap Secret deletion.

pub mod body;
pub mod client;
pub mod error;
pub mod secret;
pub mod tls;
pub mod token;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use self::body::RegistrationRequest;
use self::client::{register_with_retries, RefusalContext, RegistrationClient};
use self::error::{exit, RegisterError};
use self::secret::ClusterSecret;
use self::token::{BootstrapToken, TOKEN_ENV};
use crate::commands::validate::{is_label, is_subdomain};
use crate::config::RelayerConfig;

/// How long `/version` may take before registering goes on without it.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The relayer's TOML configuration (the same file `run` reads).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// File holding the bootstrap token (else the CONSONANT_BOOTSTRAP_TOKEN variable; never argv).
    #[arg(long, value_name = "PATH")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Secret to write clusterId/clusterToken to [default: credentials.secret_name].
    #[arg(long, value_name = "NAME")]
    pub secret_name: Option<String>,
    /// Namespace of the Secret [default: credentials.secret_namespace, then POD_NAMESPACE, then the ServiceAccount's namespace].
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Label for the Secret, KEY=VALUE (repeatable).
    #[arg(long = "secret-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub secret_labels: Vec<(String, String)>,
    /// After success, delete this Secret (the one that carried the bootstrap token).
    #[arg(long, value_name = "NAME")]
    pub delete_bootstrap_secret: Option<String>,
    /// Total time budget, retries included.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Register again even if the Secret already holds both keys.
    #[arg(long)]
    pub force: bool,
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|err| format!("{value:?} is not a duration like \"120s\" or \"2m\": {err}"))?;
    if duration.is_zero() {
        return Err("must be more than 0s".into());
    }
    Ok(duration)
}

/// `KEY=VALUE` with a Kubernetes label key (optional DNS subdomain prefix
/// and `/`, then a name) and value.
pub fn parse_label(value: &str) -> Result<(String, String), String> {
    let (key, val) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not KEY=VALUE"))?;
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_subdomain(p)) || !is_label_name(name) {
        return Err(format!(
            "{key:?} is not a label key: [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    if !val.is_empty() && !is_label_name(val) {
        return Err(format!(
            "{val:?} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok((key.to_string(), val.to_string()))
}

fn is_label_name(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && value.starts_with(alnum)
        && value.ends_with(alnum)
}

/// Everything one registration needs, checked.
#[derive(Debug, Clone)]
pub struct RegisterPlan {
    pub config: RelayerConfig,
    /// The config file, named in messages.
    pub config_path: String,
    pub token: BootstrapToken,
    pub secret_name: String,
    /// `--namespace`, else `credentials.secret_namespace`; "" = resolve
    /// from `POD_NAMESPACE`, the ServiceAccount file, then the client.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub delete_bootstrap_secret: Option<String>,
    pub timeout: Duration,
    pub force: bool,
}

impl RegisterPlan {
    /// Checks the flags and the token against an already loaded config.
    pub fn new(
        args: &RegisterArgs,
        config: RelayerConfig,
        token_env: Option<String>,
    ) -> Result<Self, RegisterError> {
        let secret_name = args
            .secret_name
            .clone()
            .unwrap_or_else(|| config.credentials.secret_name.clone());
        if secret_name.is_empty() {
            return Err(RegisterError::Usage(format!(
                "no Secret to write the credentials to: pass --secret-name (the chart passes <fullname>-cluster) or set credentials.secret_name in {}",
                args.config.display()
            )));
        }
        for (what, name) in std::iter::once(("--secret-name", &secret_name)).chain(
            args.delete_bootstrap_secret
                .iter()
                .map(|n| ("--delete-bootstrap-secret", n)),
        ) {
            if !is_subdomain(name) {
                return Err(RegisterError::Usage(format!(
                    "{what} {name:?} is not a valid Secret name: use lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain)"
                )));
            }
        }
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.credentials.secret_namespace.clone());
        if !namespace.is_empty() && !is_label(&namespace) {
            return Err(RegisterError::Usage(format!(
                "namespace {namespace:?} is not a valid namespace name (a DNS-1123 label)"
            )));
        }
        if args.delete_bootstrap_secret.as_deref() == Some(secret_name.as_str()) {
            return Err(RegisterError::Usage(format!(
                "--delete-bootstrap-secret {secret_name:?} names the cluster Secret itself; pass the Secret that carried the bootstrap token"
            )));
        }
        let token = BootstrapToken::read(args.bootstrap_token_file.as_deref(), token_env)?;
        Ok(Self {
            config,
            config_path: args.config.display().to_string(),
            token,
            secret_name,
            namespace,
            labels: args.secret_labels.iter().cloned().collect(),
            delete_bootstrap_secret: args.delete_bootstrap_secret.clone(),
            timeout: args.timeout,
            force: args.force,
        })
    }
}

/// How a successful run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret held both keys; the backend was not called.
    AlreadyRegistered {
        cluster_id: String,
        secret: String,
    },
    Registered {
        cluster_id: String,
        secret: String,
    },
}

/// Registers the cluster described by `plan`, writing the Secret through
/// `kube`. Idempotent: a Secret holding both keys ends it early (unless
/// `force`).
pub async fn register(plan: &RegisterPlan, kube: kube::Client) -> Result<Outcome, RegisterError> {
    let started = Instant::now();
    // Bad TLS settings are usage errors: surface them before anything else.
    let http =
        RegistrationClient::new(&plan.config.backend, plan.config.connection.connect_timeout)?;
    if let Some(warning) = plan.token.strength_warning() {
        tracing::warn!("{warning}");
    }
    let namespace = match crate::credentials::namespace::resolve(&plan.namespace) {
        Some(resolved) => {
            tracing::debug!(namespace = %resolved.namespace, origin = resolved.origin, "Secret namespace");
            resolved.namespace
        }
        None => {
            let namespace = kube.default_namespace().to_string();
            tracing::info!(%namespace, "no --namespace, credentials.secret_namespace, POD_NAMESPACE or ServiceAccount namespace; using the Kubernetes client's default namespace");
            namespace
        }
    };
    let secret = ClusterSecret::new(kube.clone(), &namespace, &plan.secret_name);

    let outcome = match secret.registered_id().await? {
        Some(cluster_id) if !plan.force => Outcome::AlreadyRegistered {
            cluster_id,
            secret: secret.describe(),
        },
        previous => {
            if let Some(previous) = previous {
                tracing::warn!(cluster_id = %previous, secret = %secret.describe(), "--force: registering again although the Secret holds credentials");
            }
            secret.check_writable(&plan.labels).await?;
            let kubernetes_version = kubernetes_version(&kube).await;
            let body = RegistrationRequest::new(&plan.config, kubernetes_version);
            let context = RefusalContext {
                cluster_name: plan.config.cluster.name.clone(),
                secret: secret.describe(),
                config: plan.config_path.clone(),
                timeout: plan.timeout,
            };
            let budget = plan.timeout.saturating_sub(started.elapsed());
            tracing::info!(endpoint = %http.endpoint(), name = %body.name, budget_ms = budget.as_millis() as u64, "registering the cluster");
            let registration =
                register_with_retries(&http, &body, &plan.token.token, budget, &context).await?;
            secret.write(&registration, &plan.labels).await?;
            Outcome::Registered {
                cluster_id: registration.cluster_id,
                secret: secret.describe(),
            }
        }
    };
    if let Some(bootstrap) = &plan.delete_bootstrap_secret {
        if secret.delete_other(bootstrap).await? {
            tracing::info!(secret = %format!("{namespace}/{bootstrap}"), "deleted the bootstrap Secret");
        } else {
            tracing::info!(secret = %format!("{namespace}/{bootstrap}"), "the bootstrap Secret is already gone");
        }
    }
    Ok(outcome)
}

/// The API server's `gitVersion`, or "" (with a warning) when `/version`
/// does not answer in time.
async fn kubernetes_version(kube: &kube::Client) -> String {
    match tokio::time::timeout(VERSION_TIMEOUT, kube.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot read the API server's /version; registering without kubernetes_version");
            String::new()
        }
        Err(_) => {
            tracing::warn!("the API server's /version did not answer within 5 s; registering without kubernetes_version");
            String::new()
        }
    }
}

/// The `register` subcommand: prints one line for the outcome (stdout) or
/// the failure (stderr) and returns the exit code.
pub fn run(args: RegisterArgs) -> u8 {
    let config = match crate::config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return exit::USAGE;
        }
    };
    crate::logging::init(&config.logging.level, &config.logging.format);
    let plan = match RegisterPlan::new(&args, config, std::env::var(TOKEN_ENV).ok()) {
        Ok(plan) => plan,
        Err(err) => return fail(&err),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        let kube = crate::kube::client::connect(&plan.config.kubernetes)
            .await
            .map_err(|err| RegisterError::Kubernetes(err.to_string()))?;
        register(&plan, kube).await
    });
    match result {
        Ok(Outcome::AlreadyRegistered { cluster_id, secret }) => {
            println!("already registered as {cluster_id} (Secret {secret} holds clusterId and clusterToken); the backend was not called — pass --force to register again");
            exit::OK
        }
        Ok(Outcome::Registered { cluster_id, secret }) => {
            println!("registered as {cluster_id}; credentials written to Secret {secret}");
            exit::OK
        }
        Err(err) => fail(&err),
    }
}

fn fail(err: &RegisterError) -> u8 {
    eprintln!("error: {err}");
    err.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_kubernetes_labels() {
        let ok =
            |v: &str, k: &str, val: &str| assert_eq!(parse_label(v), Ok((k.into(), val.into())));
        ok(
            "app.kubernetes.io/name=consonant-relayer",
            "app.kubernetes.io/name",
            "consonant-relayer",
        );
        ok("team=", "team", "");
        ok(
            "helm.sh/chart=consonant-relayer-0.1.0",
            "helm.sh/chart",
            "consonant-relayer-0.1.0",
        );
        let bad = |v: &str, needle: &str| {
            let err = parse_label(v).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        bad("novalue", "KEY=VALUE");
        bad("-bad=x", "label key");
        bad("Bad_Prefix/x=y", "label key");
        bad("k=has space", "label value");
    }

    fn args(extra: &[&str]) -> RegisterArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: RegisterArgs,
        }
        let mut argv = vec!["register", "--config", "/etc/consonant/relayer.toml"];
        argv.extend_from_slice(extra);
        Wrapper::parse_from(argv).args
    }

    fn plan(extra: &[&str], secret_name: &str) -> Result<RegisterPlan, RegisterError> {
        let mut config = RelayerConfig::default();
        config.credentials.secret_name = secret_name.into();
        RegisterPlan::new(&args(extra), config, Some("0123456789abcdef0123".into()))
    }

    #[test]
    fn plan_defaults_and_usage_errors() {
        let p = plan(&[], "relayer-cluster").unwrap();
        assert_eq!(
            (p.secret_name.as_str(), p.timeout, p.force),
            ("relayer-cluster", Duration::from_secs(120), false)
        );
        let p = plan(
            &[
                "--secret-name",
                "x-cluster",
                "--timeout",
                "2m",
                "--force",
                "--secret-label",
                "a=b",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            (p.secret_name.as_str(), p.timeout, p.force),
            ("x-cluster", Duration::from_secs(120), true)
        );
        assert_eq!(p.labels.get("a").map(String::as_str), Some("b"));
        let usage = |extra: &[&str], name: &str, needle: &str| {
            let err = plan(extra, name).unwrap_err();
            assert_eq!(err.exit_code(), exit::USAGE);
            assert!(err.to_string().contains(needle), "{err}");
        };
        usage(&[], "", "--secret-name");
        usage(
            &["--secret-name", "Bad_Name"],
            "",
            "not a valid Secret name",
        );
        usage(&["--namespace", "Bad.NS"], "s", "not a valid namespace");
        usage(
            &["--delete-bootstrap-secret", "s"],
            "s",
            "the cluster Secret itself",
        );
    }
}
