//! Semantic checks on a deserialised [`RelayerConfig`]: values that parse but
//! make no sense (a zero heartbeat, an unknown action, a cluster name
//! Kubernetes would reject). Pure: it returns every problem found, without
//! knowing which file or variable a value came from — the loader adds that.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::Invalid;
use super::model::{RelayerConfig, ALL_ACTIONS};
use super::units::{format_bytes, format_duration};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Every problem in `cfg`, in file order; empty when the config is usable.
pub fn validate(cfg: &RelayerConfig) -> Vec<Invalid> {
    let mut errors = Vec::new();
    let e = &mut errors;

    check_cluster_name(e, &cfg.cluster.name);

    let backend = &cfg.backend;
    check_url(e, "backend.url", &backend.url, &["http", "https"], true);
    check_url(
        e,
        "backend.grpc_endpoint",
        &backend.grpc_endpoint,
        &["grpc", "grpcs", "http", "https"],
        false,
    );
    for (i, endpoint) in backend.grpc_endpoints.iter().enumerate() {
        let key = format!("backend.grpc_endpoints[{i}]");
        if endpoint.is_empty() {
            e.push(Invalid::new(
                &key,
                "\"\"",
                "is empty: list the endpoints, e.g. [\"grpcs://backend-a.company.com:443\", \"grpcs://backend-b.company.com:443\"]",
            ));
        }
        check_url(
            e,
            &key,
            endpoint,
            &["grpc", "grpcs", "http", "https"],
            false,
        );
    }
    if !backend.grpc_endpoints.is_empty() && !backend.grpc_endpoint.is_empty() {
        e.push(Invalid::new(
            "backend.grpc_endpoint",
            quote(&backend.grpc_endpoint),
            "is set beside backend.grpc_endpoints: set one (grpc_endpoints is the failover list; put this endpoint first in it)",
        ));
    }
    if let Err(problem) = super::proxy::ProxySetting::parse(&backend.proxy) {
        let shown = super::redact::redact_url_password(&backend.proxy)
            .unwrap_or_else(|| backend.proxy.clone());
        e.push(Invalid::new("backend.proxy", quote(&shown), problem));
    }
    if backend.client_cert_file.is_empty() != backend.client_key_file.is_empty() {
        let (set, unset) = if backend.client_cert_file.is_empty() {
            ("backend.client_key_file", "backend.client_cert_file")
        } else {
            ("backend.client_cert_file", "backend.client_key_file")
        };
        let value = if backend.client_cert_file.is_empty() {
            &backend.client_key_file
        } else {
            &backend.client_cert_file
        };
        e.push(Invalid::new(
            set,
            quote(value),
            format!("is set but {unset} is empty: for mTLS set both, otherwise leave both empty"),
        ));
    }

    let creds = &cfg.credentials;
    for (key, path) in [
        ("credentials.cluster_id_file", &creds.cluster_id_file),
        ("credentials.cluster_token_file", &creds.cluster_token_file),
    ] {
        if path.as_os_str().is_empty() {
            e.push(Invalid::new(
                key,
                "\"\"",
                "is empty: give the path of the mounted credentials file",
            ));
        }
    }

    // config.md "Bounds": a value outside its range never reaches the
    // running relayer (an overflowing duration panics on the first dial; a
    // frame limit below a log request's overhead fetches whole files).
    let conn = &cfg.connection;
    duration_within(
        e,
        "connection.connect_timeout",
        conn.connect_timeout,
        ms(100),
        mins(5),
    );
    duration_within(
        e,
        "connection.heartbeat_interval",
        conn.heartbeat_interval,
        ms(100),
        mins(5),
    );
    duration_within(
        e,
        "connection.backoff_base",
        conn.backoff_base,
        ms(10),
        secs(60),
    );
    duration_within(
        e,
        "connection.backoff_max",
        conn.backoff_max,
        Duration::ZERO,
        mins(60),
    );
    if conn.backoff_max < conn.backoff_base {
        e.push(Invalid::new(
            "connection.backoff_max",
            quote(&format_duration(conn.backoff_max)),
            format!(
                "is shorter than connection.backoff_base ({}): use a value >= backoff_base",
                format_duration(conn.backoff_base)
            ),
        ));
    }
    count_within(
        e,
        "connection.breaker_failure_threshold",
        conn.breaker_failure_threshold.into(),
        1,
        1000,
    );
    duration_within(
        e,
        "connection.breaker_open_duration",
        conn.breaker_open_duration,
        ms(100),
        mins(60),
    );
    // A zero keepalive would make tokio's interval panic; "off" is not offered.
    duration_within(
        e,
        "connection.http2_keepalive_interval",
        conn.http2_keepalive_interval,
        secs(1),
        mins(60),
    );
    bytes_within(
        e,
        "connection.max_frame_bytes",
        conn.max_frame_bytes,
        64 * KIB,
        64 * MIB,
    );
    bytes_within(
        e,
        "connection.replay_buffer_bytes",
        conn.replay_buffer_bytes,
        MIB,
        4 * GIB,
    );
    if conn.replay_buffer_bytes >= MIB && conn.replay_buffer_bytes < conn.max_frame_bytes {
        e.push(Invalid::new(
            "connection.replay_buffer_bytes",
            quote(&format_bytes(conn.replay_buffer_bytes)),
            format!(
                "is smaller than connection.max_frame_bytes ({}): use at least one frame",
                format_bytes(conn.max_frame_bytes)
            ),
        ));
    }

    let cmds = &cfg.commands;
    count_within(
        e,
        "commands.max_in_flight",
        cmds.max_in_flight.into(),
        1,
        100_000,
    );
    count_within(
        e,
        "commands.rate_per_second",
        cmds.rate_per_second.into(),
        1,
        100_000_000,
    );
    count_within(e, "commands.burst", cmds.burst.into(), 1, 100_000_000);
    count_within(
        e,
        "commands.dedup_max_entries",
        cmds.dedup_max_entries,
        1,
        10_000_000,
    );
    bytes_within(
        e,
        "commands.dedup_max_bytes",
        cmds.dedup_max_bytes,
        64 * KIB,
        4 * GIB,
    );
    duration_within(
        e,
        "commands.default_timeout",
        cmds.default_timeout,
        secs(1),
        hours(24),
    );
    duration_within(
        e,
        "commands.dedup_retention",
        cmds.dedup_retention,
        secs(1),
        hours(24),
    );
    if cmds.allowed_namespaces.is_empty()
        || cmds.allowed_namespaces.iter().any(|n| n.trim().is_empty())
    {
        e.push(Invalid::new(
            "commands.allowed_namespaces",
            format!("{:?}", cmds.allowed_namespaces),
            "must list at least one namespace, with no empty names: use [\"*\"] for all namespaces",
        ));
    }
    for action in &cmds.allowed_actions {
        if !ALL_ACTIONS.contains(&action.as_str()) {
            e.push(Invalid::new(
                "commands.allowed_actions",
                quote(action),
                format!("is not an action: use any of {}", ALL_ACTIONS.join(", ")),
            ));
        }
    }

    for action in &cmds.signed_actions {
        if !ALL_ACTIONS.contains(&action.as_str()) {
            e.push(Invalid::new(
                "commands.signed_actions",
                quote(action),
                format!("is not an action: use any of {}", ALL_ACTIONS.join(", ")),
            ));
        }
    }
    for (id, key) in &cmds.verify_keys {
        if let Err(problem) = super::verify_keys::check_key_id(id) {
            e.push(Invalid::new("commands.verify_keys", quote(id), problem));
        }
        if let Err(problem) = super::verify_keys::parse_public_key(key) {
            e.push(Invalid::new(
                &format!("commands.verify_keys.{id}"),
                quote(key),
                problem,
            ));
        }
    }

    if cfg.kubernetes.lease_duration < Duration::from_secs(3) {
        e.push(Invalid::new(
            "kubernetes.lease_duration",
            format!(
                "{:?}",
                crate::config::units::format_duration(cfg.kubernetes.lease_duration)
            ),
            "must be at least \"3s\" (the Lease is renewed every third of it)",
        ));
    }

    let tel = &cfg.telemetry;
    socket_addr(e, "telemetry.otlp_grpc_listen", &tel.otlp_grpc_listen);
    socket_addr(e, "telemetry.otlp_http_listen", &tel.otlp_http_listen);
    duration_within(
        e,
        "telemetry.flush_interval",
        tel.flush_interval,
        ms(1),
        secs(60),
    );
    bytes_within(
        e,
        "telemetry.buffer_bytes",
        tel.buffer_bytes,
        4 * KIB,
        4 * GIB,
    );
    bytes_within(
        e,
        "telemetry.max_batch_bytes",
        tel.max_batch_bytes,
        KIB,
        conn.max_frame_bytes.max(KIB),
    );
    if tel.buffer_bytes < tel.max_batch_bytes {
        e.push(Invalid::new(
            "telemetry.buffer_bytes",
            quote(&format_bytes(tel.buffer_bytes)),
            format!(
                "is smaller than telemetry.max_batch_bytes ({}): use a buffer at least one batch large",
                format_bytes(tel.max_batch_bytes)
            ),
        ));
    }

    if !(KIB..=256 * MIB).contains(&tel.max_request_bytes) {
        e.push(Invalid::new(
            "telemetry.max_request_bytes",
            quote(&format_bytes(tel.max_request_bytes)),
            "must be between 1KiB and 256MiB (default \"16MiB\")",
        ));
    }

    socket_addr(e, "health.listen", &cfg.health.listen);

    let tracing = &cfg.tracing;
    check_url(
        e,
        "tracing.otlp_endpoint",
        &tracing.otlp_endpoint,
        &["http", "https"],
        false,
    );
    if !matches!(tracing.otlp_protocol.as_str(), "grpc" | "http/protobuf") {
        e.push(Invalid::new(
            "tracing.otlp_protocol",
            quote(&tracing.otlp_protocol),
            "is not an OTLP protocol: use \"grpc\" (port 4317) or \"http/protobuf\" (port 4318)",
        ));
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        e.push(Invalid::new(
            "tracing.sample_ratio",
            tracing.sample_ratio.to_string(),
            "must be between 0.0 (no new traces) and 1.0 (every command)",
        ));
    }

    check_log_level(e, &cfg.logging.level);
    if !matches!(cfg.logging.format.as_str(), "json" | "text") {
        e.push(Invalid::new(
            "logging.format",
            quote(&cfg.logging.format),
            "is not a log format: use \"json\" or \"text\"",
        ));
    }

    errors
}

fn quote(value: &str) -> String {
    format!("{value:?}")
}

/// RFC 1123 label, as Kubernetes checks names: the cluster name ends up in
/// object names and label values.
fn check_cluster_name(e: &mut Vec<Invalid>, name: &str) {
    const KEY: &str = "cluster.name";
    if name.is_empty() {
        e.push(Invalid::new(
            KEY,
            "\"\"",
            "is required: set a DNS-1123 label such as \"production-us-east-1\"",
        ));
        return;
    }
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = bytes.len() <= 63
        && bytes.iter().all(allowed)
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum);
    if !ok {
        e.push(Invalid::new(
            KEY,
            quote(name),
            "is not a DNS-1123 label: use lowercase letters, digits and '-', start and end with a letter or digit, at most 63 characters",
        ));
    }
}

fn check_url(e: &mut Vec<Invalid>, key: &str, value: &str, schemes: &[&str], required: bool) {
    let allowed = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ");
    if value.is_empty() {
        if required {
            e.push(Invalid::new(
                key,
                "\"\"",
                format!("is required: set a URL starting with {allowed}"),
            ));
        }
        return;
    }
    let problem = match value.parse::<http::Uri>() {
        Err(err) => Some(format!(
            "is not a URL ({err}): use {allowed} followed by a host"
        )),
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), _) if !schemes.contains(&scheme) => {
                Some(format!("has scheme {scheme:?}: use one of {allowed}"))
            }
            (None, _) => Some(format!("has no scheme: start it with one of {allowed}")),
            (_, None) | (_, Some("")) => {
                Some(format!("has no host: use {allowed} followed by a host"))
            }
            _ => None,
        },
    };
    if let Some(problem) = problem {
        e.push(Invalid::new(key, quote(value), problem));
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

fn duration_within(e: &mut Vec<Invalid>, key: &str, value: Duration, min: Duration, max: Duration) {
    if value.is_zero() && min > Duration::ZERO {
        e.push(Invalid::new(
            key,
            "\"0s\"",
            format!(
                "must be longer than zero: use a duration between {} and {}",
                quote(&format_duration(min)),
                quote(&format_duration(max))
            ),
        ));
    } else if value < min || value > max {
        e.push(Invalid::new(
            key,
            quote(&format_duration(value)),
            format!(
                "is out of range: use a duration between {} and {}",
                quote(&format_duration(min)),
                quote(&format_duration(max))
            ),
        ));
    }
}

fn count_within(e: &mut Vec<Invalid>, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        e.push(Invalid::new(
            key,
            value.to_string(),
            format!("is out of range: use a number between {min} and {max}"),
        ));
    }
}

fn bytes_within(e: &mut Vec<Invalid>, key: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        e.push(Invalid::new(
            key,
            quote(&format_bytes(value)),
            format!(
                "is out of range: use a size between {} and {}",
                quote(&format_bytes(min)),
                quote(&format_bytes(max))
            ),
        ));
    }
}

fn socket_addr(e: &mut Vec<Invalid>, key: &str, value: &str) {
    if value.parse::<SocketAddr>().is_err() {
        e.push(Invalid::new(
            key,
            quote(value),
            "is not a listen address: use IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
        ));
    }
}

/// A bare word that is not a level is rejected even though `EnvFilter` would
/// accept it as a target name: `level = "warning"` would otherwise silently
/// log nothing but a target called "warning".
fn check_log_level(e: &mut Vec<Invalid>, level: &str) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let lower = level.trim().to_ascii_lowercase();
    if LEVELS.contains(&lower.as_str()) {
        return;
    }
    let looks_like_directives = level.contains(['=', ',', '[', ':']);
    let parses = tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .is_ok();
    if level.trim().is_empty() || !looks_like_directives || !parses {
        e.push(Invalid::new(
            "logging.level",
            quote(level),
            "is not a log level: use trace, debug, info, warn or error, or an EnvFilter string such as \"info,consonant_relayer=debug\"",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> RelayerConfig {
        let mut cfg = RelayerConfig::default();
        cfg.cluster.name = "prod-1".into();
        cfg.backend.url = "https://backend.example.com".into();
        cfg
    }

    /// Applies `edit` to a valid config and compares the `key = value problem`
    /// lines (problem cut to its first word or two via `contains`).
    fn check(edit: impl FnOnce(&mut RelayerConfig), expected: &[(&str, &str, &str)]) {
        let mut cfg = valid();
        edit(&mut cfg);
        let errors = validate(&cfg);
        let got: Vec<(String, String)> = errors
            .iter()
            .map(|i| (i.key.clone(), i.value.clone()))
            .collect();
        assert_eq!(errors.len(), expected.len(), "got {errors:#?}");
        for ((key, value, problem), error) in expected.iter().zip(&errors) {
            assert_eq!(
                (error.key.as_str(), error.value.as_str()),
                (*key, *value),
                "all: {got:?}"
            );
            assert!(
                error.problem.contains(problem),
                "{:?} lacks {problem:?}",
                error.problem
            );
        }
    }

    #[test]
    fn defaults_with_required_fields_are_valid() {
        check(|_| {}, &[]);
    }

    #[test]
    fn cluster_name() {
        check(
            |c| c.cluster.name = String::new(),
            &[("cluster.name", "\"\"", "is required")],
        );
        check(
            |c| c.cluster.name = "Prod_1".into(),
            &[("cluster.name", "\"Prod_1\"", "DNS-1123")],
        );
        check(
            |c| c.cluster.name = "-a".into(),
            &[("cluster.name", "\"-a\"", "DNS-1123")],
        );
        check(
            |c| c.cluster.name = "a".repeat(64),
            &[("cluster.name", &format!("{:?}", "a".repeat(64)), "63")],
        );
        check(|c| c.cluster.name = "a".repeat(63), &[]);
    }

    #[test]
    fn backend_urls() {
        check(
            |c| c.backend.url = String::new(),
            &[("backend.url", "\"\"", "is required")],
        );
        check(
            |c| c.backend.url = "ftp://x".into(),
            &[("backend.url", "\"ftp://x\"", "http://, https://")],
        );
        check(
            |c| c.backend.url = "backend".into(),
            &[("backend.url", "\"backend\"", "no scheme")],
        );
        check(|c| c.backend.grpc_endpoint = "grpcs://b:443".into(), &[]);
        check(
            |c| c.backend.grpc_endpoints = vec!["grpcs://a:443".into(), "grpcs://b:443".into()],
            &[],
        );
        check(
            |c| c.backend.grpc_endpoints = vec!["grpcs://a:443".into(), "tcp://b".into()],
            &[("backend.grpc_endpoints[1]", "\"tcp://b\"", "grpc://")],
        );
        check(
            |c| {
                c.backend.grpc_endpoints = vec!["grpcs://a:443".into()];
                c.backend.grpc_endpoint = "grpcs://a:443".into();
            },
            &[("backend.grpc_endpoint", "\"grpcs://a:443\"", "set one")],
        );
        check(|c| c.backend.proxy = "none".into(), &[]);
        check(|c| c.backend.proxy = "http://u:p@proxy:3128".into(), &[]);
        check(
            |c| c.backend.proxy = "https://u:hunter2@proxy:3128".into(),
            &[(
                "backend.proxy",
                "\"https://u:***@proxy:3128\"",
                "not supported",
            )],
        );
        check(
            |c| c.backend.grpc_endpoint = "tcp://b:1".into(),
            &[("backend.grpc_endpoint", "\"tcp://b:1\"", "grpc://")],
        );
        check(
            |c| c.backend.client_cert_file = "/tls/crt".into(),
            &[(
                "backend.client_cert_file",
                "\"/tls/crt\"",
                "client_key_file is empty",
            )],
        );
    }

    #[test]
    fn durations_and_sizes() {
        check(
            |c| c.connection.heartbeat_interval = Duration::ZERO,
            &[(
                "connection.heartbeat_interval",
                "\"0s\"",
                "longer than zero",
            )],
        );
        check(
            |c| c.connection.backoff_max = Duration::from_millis(100),
            &[("connection.backoff_max", "\"100ms\"", ">= backoff_base")],
        );
        check(
            |c| c.connection.breaker_failure_threshold = 0,
            &[(
                "connection.breaker_failure_threshold",
                "0",
                "between 1 and 1000",
            )],
        );
        check(
            |c| c.connection.max_frame_bytes = 100,
            // max_batch_bytes (1MiB) is then over the frame limit too.
            &[
                (
                    "connection.max_frame_bytes",
                    "\"100\"",
                    "\"64KiB\" and \"64MiB\"",
                ),
                (
                    "telemetry.max_batch_bytes",
                    "\"1MiB\"",
                    "\"1KiB\" and \"1KiB\"",
                ),
            ],
        );
        check(
            |c| c.connection.replay_buffer_bytes = 2 * MIB,
            &[(
                "connection.replay_buffer_bytes",
                "\"2MiB\"",
                "connection.max_frame_bytes (4MiB)",
            )],
        );
    }

    /// config.md "Bounds": each key just inside and just outside its range.
    #[test]
    fn bounds_of_config_md() {
        type Edit = fn(&mut RelayerConfig, u64);
        let rows: &[(&str, Edit, u64, u64, &str)] = &[
            // (key, set the value, lowest allowed, highest allowed, unit)
            (
                "connection.connect_timeout",
                |c, v| c.connection.connect_timeout = Duration::from_millis(v),
                100,
                300_000,
                "ms",
            ),
            (
                "connection.heartbeat_interval",
                |c, v| c.connection.heartbeat_interval = Duration::from_millis(v),
                100,
                300_000,
                "ms",
            ),
            (
                "connection.backoff_base",
                |c, v| {
                    c.connection.backoff_base = Duration::from_millis(v);
                    c.connection.backoff_max = Duration::from_secs(3600)
                },
                10,
                60_000,
                "ms",
            ),
            (
                "connection.backoff_max",
                |c, v| {
                    c.connection.backoff_base = Duration::from_millis(10);
                    c.connection.backoff_max = Duration::from_millis(v)
                },
                10,
                3_600_000,
                "ms",
            ),
            (
                "connection.breaker_failure_threshold",
                |c, v| c.connection.breaker_failure_threshold = v as u32,
                1,
                1000,
                "",
            ),
            (
                "connection.breaker_open_duration",
                |c, v| c.connection.breaker_open_duration = Duration::from_millis(v),
                100,
                3_600_000,
                "ms",
            ),
            (
                "connection.http2_keepalive_interval",
                |c, v| c.connection.http2_keepalive_interval = Duration::from_millis(v),
                1000,
                3_600_000,
                "ms",
            ),
            (
                "connection.max_frame_bytes",
                |c, v| {
                    c.connection.max_frame_bytes = v;
                    c.telemetry.max_batch_bytes = KIB
                },
                64 * KIB,
                64 * MIB,
                "B",
            ),
            (
                "connection.replay_buffer_bytes",
                |c, v| {
                    c.connection.replay_buffer_bytes = v;
                    c.connection.max_frame_bytes = 64 * KIB
                },
                MIB,
                4 * GIB,
                "B",
            ),
            (
                "commands.max_in_flight",
                |c, v| c.commands.max_in_flight = v as u32,
                1,
                100_000,
                "",
            ),
            (
                "commands.rate_per_second",
                |c, v| c.commands.rate_per_second = v as u32,
                1,
                100_000_000,
                "",
            ),
            (
                "commands.burst",
                |c, v| c.commands.burst = v as u32,
                1,
                100_000_000,
                "",
            ),
            (
                "commands.default_timeout",
                |c, v| c.commands.default_timeout = Duration::from_millis(v),
                1000,
                86_400_000,
                "ms",
            ),
            (
                "commands.dedup_retention",
                |c, v| c.commands.dedup_retention = Duration::from_millis(v),
                1000,
                86_400_000,
                "ms",
            ),
            (
                "commands.dedup_max_entries",
                |c, v| c.commands.dedup_max_entries = v,
                1,
                10_000_000,
                "",
            ),
            (
                "commands.dedup_max_bytes",
                |c, v| c.commands.dedup_max_bytes = v,
                64 * KIB,
                4 * GIB,
                "B",
            ),
            (
                "telemetry.buffer_bytes",
                |c, v| {
                    c.telemetry.buffer_bytes = v;
                    c.telemetry.max_batch_bytes = KIB
                },
                4 * KIB,
                4 * GIB,
                "B",
            ),
            (
                "telemetry.max_batch_bytes",
                |c, v| c.telemetry.max_batch_bytes = v,
                KIB,
                4 * MIB,
                "B",
            ),
            (
                "telemetry.flush_interval",
                |c, v| c.telemetry.flush_interval = Duration::from_millis(v),
                1,
                60_000,
                "ms",
            ),
        ];
        for (key, set, low, high, _unit) in rows {
            for (value, allowed) in [
                (*low, true),
                (*high, true),
                (low - 1, false),
                (high + 1, false),
            ] {
                let mut config = valid();
                set(&mut config, value);
                let errors = validate(&config);
                let named = errors.iter().any(|e| e.to_string().contains(key));
                assert_eq!(
                    !named,
                    allowed,
                    "{key} = {value}: {:?}",
                    errors.iter().map(ToString::to_string).collect::<Vec<_>>()
                );
                if !allowed {
                    let message = errors
                        .iter()
                        .find(|e| e.to_string().contains(key))
                        .unwrap()
                        .to_string();
                    assert!(
                        message.contains("between")
                            || message.contains("longer than zero")
                            || message.contains(">= backoff_base"),
                        "{message}"
                    );
                }
            }
        }
        // A duration that would overflow on the first dial is refused.
        let mut config = valid();
        config.connection.heartbeat_interval = Duration::from_secs(6_148_914_691_236_517_206);
        assert!(validate(&config)
            .iter()
            .any(|e| e.to_string().contains("connection.heartbeat_interval")));
    }

    #[test]
    fn tracing_and_request_limit() {
        check(
            |c| c.tracing.otlp_endpoint = "http://otel-collector:4317".into(),
            &[],
        );
        check(
            |c| c.tracing.otlp_endpoint = "otel-collector:4317".into(),
            &[(
                "tracing.otlp_endpoint",
                "\"otel-collector:4317\"",
                "http://",
            )],
        );
        check(
            |c| c.tracing.otlp_protocol = "http/json".into(),
            &[("tracing.otlp_protocol", "\"http/json\"", "http/protobuf")],
        );
        check(
            |c| c.tracing.sample_ratio = 1.5,
            &[("tracing.sample_ratio", "1.5", "between 0.0")],
        );
        check(
            |c| c.telemetry.max_request_bytes = 10,
            &[("telemetry.max_request_bytes", "\"10\"", "1KiB and 256MiB")],
        );
    }

    #[test]
    fn commands() {
        check(
            |c| c.commands.max_in_flight = 0,
            &[("commands.max_in_flight", "0", "between 1 and 100000")],
        );
        check(
            |c| c.commands.allowed_namespaces.clear(),
            &[("commands.allowed_namespaces", "[]", "at least one")],
        );
        check(
            |c| c.commands.allowed_actions = vec!["ping".into(), "exec".into()],
            &[("commands.allowed_actions", "\"exec\"", "ping, apply")],
        );
        check(
            |c| c.commands.signed_actions = vec!["scale".into(), "exec".into()],
            &[("commands.signed_actions", "\"exec\"", "ping, apply")],
        );
        let key = "ed25519:".to_string() + &"A".repeat(43) + "=";
        check(
            |c| {
                c.commands.verify_keys = [("ops-1".to_string(), key.clone())].into();
            },
            &[],
        );
        check(
            |c| {
                c.commands.verify_keys = [
                    ("ops 1".to_string(), key.clone()),
                    ("kms".to_string(), "ed25519:AAAA".to_string()),
                ]
                .into();
            },
            &[
                (
                    "commands.verify_keys.kms",
                    "\"ed25519:AAAA\"",
                    "decodes to 3 bytes",
                ),
                ("commands.verify_keys", "\"ops 1\"", "not a key id"),
            ],
        );
    }

    #[test]
    fn listen_addresses_and_logging() {
        check(
            |c| c.health.listen = "8080".into(),
            &[("health.listen", "\"8080\"", "IP:PORT")],
        );
        check(|c| c.telemetry.otlp_grpc_listen = "[::]:4317".into(), &[]);
        check(
            |c| c.logging.format = "yaml".into(),
            &[("logging.format", "\"yaml\"", "json")],
        );
        check(|c| c.logging.level = "WARN".into(), &[]);
        check(
            |c| c.logging.level = "info,consonant_relayer=debug".into(),
            &[],
        );
        check(
            |c| c.logging.level = "warning".into(),
            &[("logging.level", "\"warning\"", "EnvFilter")],
        );
        check(
            |c| c.logging.level = "a=notalevel".into(),
            &[("logging.level", "\"a=notalevel\"", "EnvFilter")],
        );
    }

    #[test]
    fn reports_every_problem_not_only_the_first() {
        check(
            |c| {
                c.cluster.name = "Bad".into();
                c.commands.burst = 0;
                c.logging.format = "xml".into();
            },
            &[
                ("cluster.name", "\"Bad\"", "DNS"),
                ("commands.burst", "0", "between 1 and 100000000"),
                ("logging.format", "\"xml\"", "json"),
            ],
        );
    }
}
