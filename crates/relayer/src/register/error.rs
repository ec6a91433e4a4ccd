//! Why `register` failed, as one line naming the cause and the fix, and the
//! exit code of each failure class (the table in `docs/register.md`).

use std::time::Duration;

use super::tls::TlsFailure;
use super::token::TokenError;
use crate::config::ConfigError;
use crate::tls::TlsError;

/// Exit codes of `consonant-relayer register`. 0 also covers "already
/// registered"; 1 is left to unexpected errors at the binary's edge.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const TOKEN_REFUSED: u8 = 3;
    pub const TOKEN_FORBIDDEN: u8 = 4;
    pub const NAME_TAKEN: u8 = 5;
    pub const INVALID_REQUEST: u8 = 6;
    pub const TLS: u8 = 7;
    pub const UNREACHABLE: u8 = 8;
    pub const KUBERNETES: u8 = 9;
    pub const UNEXPECTED_ANSWER: u8 = 10;
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    TlsSetup(#[from] TlsError),

    #[error("the backend refused the bootstrap token (401: {message}): it is wrong or was never issued by this backend; put the token the backend issued into the bootstrap Secret (chart: auth.existingSecret / auth.existingSecretKey) and run again")]
    TokenRefused { message: String },
    #[error("the backend refused the bootstrap token (403: {message}): bootstrap tokens are single-use and this one was already used or may not register clusters; issue a new bootstrap token in the backend and run again — or, if this cluster registered before, restore its Secret {secret} instead")]
    TokenForbidden { message: String, secret: String },
    #[error("the backend already has another cluster named {name:?} (409: {message}); set a different cluster.name (chart value cluster.name) or remove the old cluster in the backend, then run again")]
    NameTaken { name: String, message: String },
    #[error("the backend refused the registration request as invalid (422: {message}); check cluster.name (a DNS-1123 label), cluster.region, cluster.environment and cluster.labels in {config}")]
    InvalidRequest { message: String, config: String },

    #[error("{0}")]
    Tls(TlsFailure),
    #[error("the backend at {url} did not register the cluster within --timeout {} ({attempts} attempts; last: {last}); check that the backend is up and reachable from this namespace (DNS, NetworkPolicy egress, proxies), or raise --timeout", humantime::format_duration(*.budget))]
    Unreachable {
        url: String,
        budget: Duration,
        attempts: u32,
        last: String,
    },
    #[error("the proxy {proxy} answered 407 Proxy Authentication Required to CONNECT {target}: put the proxy's credentials in the proxy URL (http://user:password@host:port; chart: backend.proxySecret) — nothing was sent to the backend")]
    ProxyAuth { proxy: String, target: String },
    #[error("{0}")]
    Kubernetes(String),
    #[error("the backend at {url} answered {status} ({message}), which the registration API does not define; check that backend.url points at the Consonant backend (not a proxy or another service)")]
    UnexpectedAnswer {
        url: String,
        status: String,
        message: String,
    },
}

impl RegisterError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::Token(_) | Self::TlsSetup(_) => exit::USAGE,
            Self::TokenRefused { .. } => exit::TOKEN_REFUSED,
            Self::TokenForbidden { .. } => exit::TOKEN_FORBIDDEN,
            Self::NameTaken { .. } => exit::NAME_TAKEN,
            Self::InvalidRequest { .. } => exit::INVALID_REQUEST,
            Self::Tls(_) => exit::TLS,
            Self::Unreachable { .. } | Self::ProxyAuth { .. } => exit::UNREACHABLE,
            Self::Kubernetes(_) => exit::KUBERNETES,
            Self::UnexpectedAnswer { .. } => exit::UNEXPECTED_ANSWER,
        }
    }
}

/// A backend's error text made safe for one log line: the `error` field of
/// a JSON body when there is one, control characters dropped, at most 200
/// characters.
pub fn backend_message(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|key| v.get(key).and_then(|m| m.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| body.to_string());
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return "no message".to_string();
    }
    let mut short: String = clean.chars().take(200).collect();
    if clean.chars().count() > 200 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_messages_are_one_short_line() {
        assert_eq!(backend_message(r#"{"error": "name taken"}"#), "name taken");
        assert_eq!(backend_message("plain\ntext"), "plain text");
        assert_eq!(backend_message(""), "no message");
        assert_eq!(backend_message(&"x".repeat(500)).chars().count(), 201);
    }

    #[test]
    fn each_refusal_has_its_own_exit_code() {
        let codes = [
            RegisterError::TokenRefused {
                message: String::new(),
            }
            .exit_code(),
            RegisterError::TokenForbidden {
                message: String::new(),
                secret: String::new(),
            }
            .exit_code(),
            RegisterError::NameTaken {
                name: String::new(),
                message: String::new(),
            }
            .exit_code(),
            RegisterError::InvalidRequest {
                message: String::new(),
                config: String::new(),
            }
            .exit_code(),
        ];
        let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), 4, "{codes:?}");
        assert!(codes.iter().all(|c| *c != exit::OK && *c != exit::USAGE));
    }
}
