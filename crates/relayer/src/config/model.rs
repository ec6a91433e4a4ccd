//! The typed relayer configuration: one struct per TOML section of the
//! config contract (`config.md`). Field names are the TOML keys exactly.
//! Durations are parsed into [`Duration`], sizes into bytes (`u64`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayerConfig {
    pub cluster: ClusterConfig,
    pub backend: BackendConfig,
    pub credentials: CredentialsConfig,
    pub connection: ConnectionConfig,
    pub commands: CommandsConfig,
    pub telemetry: TelemetryConfig,
    pub kubernetes: KubernetesConfig,
    pub health: HealthConfig,
    pub logging: LoggingConfig,
    pub tracing: TracingConfig,
}

/// `[cluster]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Required, DNS-1123 label.
    pub name: String,
    pub region: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
}

/// `[backend]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Required; the registration API base, and the scheme `grpc://` follows.
    pub url: String,
    /// "" = derived from `url` with port 50051.
    pub grpc_endpoint: String,
    /// An ordered failover list (same scheme rules); [] = just `grpc_endpoint`.
    pub grpc_endpoints: Vec<String>,
    /// "" = the environment; "none" = direct; or `http://[user:pass@]host:port`.
    pub proxy: String,
    pub tls_verify: bool,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            grpc_endpoint: String::new(),
            grpc_endpoints: Vec::new(),
            proxy: String::new(),
            tls_verify: true,
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
        }
    }
}

/// `[credentials]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    pub cluster_id_file: PathBuf,
    pub cluster_token_file: PathBuf,
    pub secret_name: String,
    pub secret_namespace: String,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            cluster_id_file: PathBuf::from("/var/run/secrets/consonant/clusterId"),
            cluster_token_file: PathBuf::from("/var/run/secrets/consonant/clusterToken"),
            secret_name: String::new(),
            secret_namespace: String::new(),
        }
    }
}

/// `[connection]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    #[serde(with = "crate::config::units::duration")]
    pub connect_timeout: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub heartbeat_interval: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub backoff_base: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub backoff_max: Duration,
    pub breaker_failure_threshold: u32,
    #[serde(with = "crate::config::units::duration")]
    pub breaker_open_duration: Duration,
    #[serde(with = "crate::config::units::bytes")]
    pub replay_buffer_bytes: u64,
    #[serde(with = "crate::config::units::bytes")]
    pub max_frame_bytes: u64,
    #[serde(with = "crate::config::units::duration")]
    pub http2_keepalive_interval: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            breaker_failure_threshold: 5,
            breaker_open_duration: Duration::from_secs(30),
            replay_buffer_bytes: 64 * 1024 * 1024,
            max_frame_bytes: 4 * 1024 * 1024,
            http2_keepalive_interval: Duration::from_secs(300),
        }
    }
}

/// `[commands]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    pub max_in_flight: u32,
    pub rate_per_second: u32,
    pub burst: u32,
    #[serde(with = "crate::config::units::duration")]
    pub default_timeout: Duration,
    #[serde(with = "crate::config::units::duration")]
    pub dedup_retention: Duration,
    pub dedup_max_entries: u64,
    #[serde(with = "crate::config::units::bytes")]
    pub dedup_max_bytes: u64,
    pub allowed_namespaces: Vec<String>,
    pub denied_kinds: Vec<String>,
    pub allowed_actions: Vec<String>,
    /// The cluster lock (protocol.md "Signed commands"): key id →
    /// `"ed25519:<base64 of the 32-byte public key>"`; empty = off.
    pub verify_keys: BTreeMap<String, String>,
    /// Actions that must be signed while `verify_keys` is set.
    pub signed_actions: Vec<String>,
}

/// The actions `signed_actions` lists by default: those that change the
/// cluster.
pub const DEFAULT_SIGNED_ACTIONS: [&str; 4] = ["apply", "delete", "scale", "restart"];

/// Every action name the protocol defines, in IDL order.
pub const ALL_ACTIONS: [&str; 9] = [
    "ping",
    "apply",
    "delete",
    "get",
    "list",
    "scale",
    "restart",
    "logs",
    "cluster_info",
];

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            rate_per_second: 50,
            burst: 100,
            default_timeout: Duration::from_secs(60),
            dedup_retention: Duration::from_secs(600),
            dedup_max_entries: 100_000,
            dedup_max_bytes: 64 * 1024 * 1024,
            allowed_namespaces: vec!["*".to_string()],
            denied_kinds: vec!["Secret".to_string()],
            allowed_actions: ALL_ACTIONS.iter().map(|a| a.to_string()).collect(),
            verify_keys: BTreeMap::new(),
            signed_actions: DEFAULT_SIGNED_ACTIONS
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }
}

/// `[telemetry]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub enabled: bool,
    pub otlp_grpc_listen: String,
    pub otlp_http_listen: String,
    #[serde(with = "crate::config::units::bytes")]
    pub buffer_bytes: u64,
    #[serde(with = "crate::config::units::bytes")]
    pub max_batch_bytes: u64,
    #[serde(with = "crate::config::units::duration")]
    pub flush_interval: Duration,
    /// Largest OTLP export request the receivers take (after gzip), per request.
    #[serde(with = "crate::config::units::bytes")]
    pub max_request_bytes: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_grpc_listen: "0.0.0.0:4317".to_string(),
            otlp_http_listen: "0.0.0.0:4318".to_string(),
            buffer_bytes: 32 * 1024 * 1024,
            max_batch_bytes: 1024 * 1024,
            flush_interval: Duration::from_secs(1),
            max_request_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[kubernetes]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub enabled: bool,
    pub kubeconfig: String,
    pub leader_election: bool,
    pub watch_label_selector: String,
    /// How long a leader's Lease lasts without renewal: a replica that dies
    /// without releasing it is replaced after this long. (Added key.)
    #[serde(with = "crate::config::units::duration")]
    pub lease_duration: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kubeconfig: String::new(),
            leader_election: true,
            watch_label_selector: "app.kubernetes.io/managed-by=consonant".to_string(),
            lease_duration: Duration::from_secs(15),
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub listen: String,
    pub debug_actors: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_string(),
            debug_actors: true,
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: String,
    pub format: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: "json".to_string(),
        }
    }
}

/// `[tracing]`: the relayer's own spans (one per command), exported with
/// OpenTelemetry OTLP. Off while `otlp_endpoint` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Where to export, e.g. `http://otel-collector:4317` (gRPC) or
    /// `http://otel-collector:4318` (HTTP; `/v1/traces` is appended). "" = off.
    pub otlp_endpoint: String,
    /// `grpc` or `http/protobuf`, as `OTEL_EXPORTER_OTLP_PROTOCOL` spells them.
    pub otlp_protocol: String,
    /// Share of new traces sampled (0.0–1.0); a command's incoming
    /// `traceparent` sampled flag always wins.
    pub sample_ratio: f64,
    /// PEM bundle trusted, besides the system roots, for an `https://`
    /// endpoint (e.g. an in-cluster collector with a private CA).
    pub ca_file: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_protocol: "grpc".to_string(),
            sample_ratio: 1.0,
            ca_file: String::new(),
        }
    }
}
