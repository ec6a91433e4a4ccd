//! The registration request and answer (protocol.md, "Registration HTTP
//! API"): `POST {backend.url}/api/v1/clusters`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RelayerConfig;
use crate::credentials::Secret;

/// The JSON body of `POST /api/v1/clusters`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegistrationRequest {
    pub name: String,
    pub region: String,
    pub environment: String,
    pub labels: BTreeMap<String, String>,
    /// The API server's `gitVersion`, "" when `/version` was not reachable.
    pub kubernetes_version: String,
    pub relayer_version: String,
}

impl RegistrationRequest {
    pub fn new(cfg: &RelayerConfig, kubernetes_version: String) -> Self {
        Self {
            name: cfg.cluster.name.clone(),
            region: cfg.cluster.region.clone(),
            environment: cfg.cluster.environment.clone(),
            labels: cfg.cluster.labels.clone(),
            kubernetes_version,
            relayer_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The 201 answer. The token is a [`Secret`] from the moment it is parsed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Registration {
    pub cluster_id: String,
    pub cluster_token: Secret,
}

impl Registration {
    /// Parses a 201 body; the error never contains the body (it holds the
    /// token).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let parsed: Self = serde_json::from_slice(body).map_err(|err| {
            format!(
                "the 201 answer is not {{\"cluster_id\", \"cluster_token\"}} JSON (line {}, column {})",
                err.line(),
                err.column()
            )
        })?;
        if parsed.cluster_id.trim().is_empty() || parsed.cluster_token.expose().trim().is_empty() {
            return Err("the 201 answer has an empty cluster_id or cluster_token".into());
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_has_the_protocol_keys() {
        let mut cfg = RelayerConfig::default();
        cfg.cluster.name = "prod-1".into();
        cfg.cluster.region = "us-east-1".into();
        cfg.cluster.labels.insert("team".into(), "relay".into());
        let body = serde_json::to_value(RegistrationRequest::new(&cfg, "v1.32.3".into())).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "prod-1", "region": "us-east-1", "environment": "",
                "labels": {"team": "relay"}, "kubernetes_version": "v1.32.3",
                "relayer_version": env!("CARGO_PKG_VERSION")})
        );
    }

    #[test]
    fn answer_parsing_never_echoes_the_body() {
        let ok =
            Registration::parse(br#"{"cluster_id": "cls_1", "cluster_token": "tok-secret-value"}"#)
                .unwrap();
        assert_eq!(
            (ok.cluster_id.as_str(), ok.cluster_token.expose()),
            ("cls_1", "tok-secret-value")
        );
        let bad = Registration::parse(br#"{"cluster_token": "tok-secret-value"}"#).unwrap_err();
        assert!(!bad.contains("tok-secret-value"), "{bad}");
        let empty =
            Registration::parse(br#"{"cluster_id": "", "cluster_token": "t"}"#).unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
    }
}
