//! Registration as `POST /api/v1/clusters` does it: single-use bootstrap
//! tokens, DNS-1123 cluster names and fresh cluster ids.

use rand::distr::{Alphanumeric, SampleString};

use super::credentials::{new_token, tokens_equal};
use super::DevBackendState;
use consonant_secret::Secret;

/// Why a registration failed (maps onto the HTTP statuses of protocol.md).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the bootstrap token is missing or not accepted by this backend")]
    WrongBootstrapToken,
    #[error("the bootstrap token was used already; bootstrap tokens are single-use")]
    BootstrapTokenUsed,
    #[error("{0}")]
    InvalidName(String),
    #[error("cluster name {0:?} is taken by another cluster")]
    NameTaken(String),
}

impl DevBackendState {
    /// Registers a cluster without a bootstrap token (in-process use).
    pub fn register_cluster(&self, name: &str) -> Result<(String, Secret), RegisterError> {
        self.register(None, name)
    }

    /// Registration as `POST /api/v1/clusters` does it. `bootstrap` is the
    /// bearer presented; `None` skips the check (in-process callers).
    pub(crate) fn register(
        &self,
        bootstrap: Option<Option<&str>>,
        name: &str,
    ) -> Result<(String, Secret), RegisterError> {
        // Held until the end, so that two registrations cannot both use a
        // single-use token.
        let mut tokens = self.bootstrap.lock();
        let index = match bootstrap {
            Some(presented) => tokens.check(presented).map_err(|refusal| match refusal {
                BootstrapRefusal::Wrong => RegisterError::WrongBootstrapToken,
                BootstrapRefusal::Used => RegisterError::BootstrapTokenUsed,
            })?,
            None => None,
        };
        validate_cluster_name(name).map_err(RegisterError::InvalidName)?;
        let (id, token) = (new_cluster_id(), new_token());
        if !self.clusters.insert_named(&id, name, token.clone()) {
            return Err(RegisterError::NameTaken(name.to_string()));
        }
        tokens.consume(index);
        tracing::info!(cluster_id = %id, name, "cluster registered");
        Ok((id, token))
    }
}

/// Checks a cluster name against DNS-1123 (subdomain: lowercase letters,
/// digits, '-' and '.', labels starting and ending alphanumeric, <= 253).
fn validate_cluster_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "cluster name {name:?} is not a DNS-1123 name: {why}"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("use only lowercase letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("it must start and end with a letter or digit");
        }
    }
    Ok(())
}

/// A fresh cluster id, `cls_` and 20 random lowercase alphanumerics.
fn new_cluster_id() -> String {
    format!(
        "cls_{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 20)
            .to_ascii_lowercase()
    )
}

/// Why a bootstrap token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootstrapRefusal {
    /// Missing or not one of the configured tokens (401).
    Wrong,
    /// A configured token that registered a cluster already (403).
    Used,
}

/// The registration bootstrap tokens: single-use when configured; with
/// none configured any non-empty bearer is accepted.
#[derive(Debug, Default)]
pub(crate) struct BootstrapTokens {
    tokens: Vec<(Secret, bool)>,
}

impl BootstrapTokens {
    pub(crate) fn new(tokens: impl IntoIterator<Item = Secret>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|t| (t, false))
                .collect(),
        }
    }

    /// Checks a presented token; `Ok(Some(i))` names the token to `consume`
    /// once the registration succeeds.
    fn check(&self, presented: Option<&str>) -> Result<Option<usize>, BootstrapRefusal> {
        let presented = presented
            .filter(|t| !t.is_empty())
            .ok_or(BootstrapRefusal::Wrong)?;
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let index = self
            .tokens
            .iter()
            .position(|(token, _)| tokens_equal(token.expose(), presented))
            .ok_or(BootstrapRefusal::Wrong)?;
        if self.tokens[index].1 {
            return Err(BootstrapRefusal::Used);
        }
        Ok(Some(index))
    }

    fn consume(&mut self, index: Option<usize>) {
        if let Some(entry) = index.and_then(|i| self.tokens.get_mut(i)) {
            entry.1 = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_follow_dns_1123() {
        for good in ["production-us-east-1", "a", "prod.eu-1", "0abc"] {
            assert!(validate_cluster_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "-a", "a-", "a_b", "a..b", &"x".repeat(64)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
        assert!(new_cluster_id().starts_with("cls_"));
    }

    #[test]
    fn bootstrap_tokens_are_single_use() {
        let mut tokens = BootstrapTokens::new([Secret::new("boot-1"), Secret::new("boot-2")]);
        assert_eq!(tokens.check(None), Err(BootstrapRefusal::Wrong));
        assert_eq!(tokens.check(Some("nope")), Err(BootstrapRefusal::Wrong));
        let index = tokens.check(Some("boot-2")).unwrap();
        tokens.consume(index);
        assert_eq!(tokens.check(Some("boot-2")), Err(BootstrapRefusal::Used));
        assert!(tokens.check(Some("boot-1")).is_ok());
        let open = BootstrapTokens::new([]);
        assert_eq!(open.check(Some("anything")), Ok(None));
        assert_eq!(open.check(Some("")), Err(BootstrapRefusal::Wrong));
    }
}
