//! The bootstrap token: read from `--bootstrap-token-file` or the
//! `CONSONANT_BOOTSTRAP_TOKEN` variable — never from argv, which every
//! process on the node can read — trimmed and checked before it is sent.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::credentials::Secret;

/// The environment variable that may carry the bootstrap token.
pub const TOKEN_ENV: &str = "CONSONANT_BOOTSTRAP_TOKEN";
/// Shorter tokens are refused outright.
pub const MIN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no bootstrap token: pass --bootstrap-token-file PATH (the chart mounts the bootstrap Secret there) or set {TOKEN_ENV}; a token is never taken from the command line")]
    Missing,
    #[error("both --bootstrap-token-file and {TOKEN_ENV} are set; pass the token one way only")]
    Ambiguous,
    #[error("cannot read --bootstrap-token-file {}: {source}; check that the bootstrap Secret is mounted there (chart: auth.existingSecret / auth.existingSecretKey)", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bootstrap token from {origin} is empty; put the token the backend issued there")]
    Empty { origin: String },
    #[error("the bootstrap token from {origin} is {len} characters long; at least {MIN_LEN} are required (generate one with `openssl rand -base64 48`)")]
    TooShort { origin: String, len: usize },
    #[error("the bootstrap token from {origin} contains whitespace or control characters inside it; it must be one line of printable ASCII")]
    BadCharacters { origin: String },
}

/// A checked bootstrap token and where it came from.
#[derive(Debug, Clone)]
pub struct BootstrapToken {
    pub token: Secret,
    /// `--bootstrap-token-file PATH` or `CONSONANT_BOOTSTRAP_TOKEN`.
    pub origin: String,
}

impl BootstrapToken {
    /// Reads the token from `file`, else from `env` (the value of
    /// [`TOKEN_ENV`]); surrounding whitespace and newlines are trimmed.
    pub fn read(file: Option<&Path>, env: Option<String>) -> Result<Self, TokenError> {
        let env = env.filter(|value| !value.is_empty());
        let (raw, origin) = match (file, env) {
            (Some(_), Some(_)) => return Err(TokenError::Ambiguous),
            (None, None) => return Err(TokenError::Missing),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                (text, format!("--bootstrap-token-file {}", path.display()))
            }
            (None, Some(value)) => (value, TOKEN_ENV.to_string()),
        };
        Self::check(raw.trim(), origin)
    }

    /// A token handed over in process (the demo); `origin` names where it
    /// came from in messages.
    pub fn from_value(token: &str, origin: impl Into<String>) -> Result<Self, TokenError> {
        Self::check(token.trim(), origin.into())
    }

    fn check(token: &str, origin: String) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty { origin });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacters { origin });
        }
        let len = token.chars().count();
        if len < MIN_LEN {
            return Err(TokenError::TooShort { origin, len });
        }
        Ok(Self {
            token: Secret::new(token),
            origin,
        })
    }

    /// A warning when the token is not 32–64 bytes of base64 (what the
    /// chart's README advises: `openssl rand -base64 48`). Never contains
    /// the token.
    pub fn strength_warning(&self) -> Option<String> {
        let value = self.token.expose();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let decoded = engines.iter().find_map(|engine| engine.decode(value).ok());
        match decoded {
            Some(bytes) if (32..=64).contains(&bytes.len()) => None,
            Some(bytes) => Some(format!(
                "the bootstrap token from {} decodes to {} bytes; 32–64 random bytes of base64 are advised (openssl rand -base64 48)",
                self.origin,
                bytes.len()
            )),
            None => Some(format!(
                "the bootstrap token from {} is not base64; 32–64 random bytes of base64 are advised (openssl rand -base64 48)",
                self.origin
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3gH5iJ8kL1mN4oP7qR0sT3uV6wX9yZ2aB";

    fn check(file: Option<&str>, env: Option<&str>, expected: Result<&str, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        if let Some(content) = file {
            std::fs::write(&path, content).unwrap();
        }
        let got = BootstrapToken::read(file.map(|_| path.as_path()), env.map(str::to_string));
        match (got, expected) {
            (Ok(token), Ok(value)) => assert_eq!(token.token.expose(), value),
            (Err(err), Err(needle)) => {
                let text = err.to_string();
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
                assert!(
                    !text.contains("abcdefgh"),
                    "the message shows the token: {text}"
                );
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn reads_and_trims_from_a_file_or_the_environment() {
        check(Some(&format!("  {GOOD}\n")), None, Ok(GOOD));
        check(None, Some(GOOD), Ok(GOOD));
        check(None, Some(""), Err("no bootstrap token"));
        check(None, None, Err("--bootstrap-token-file PATH"));
        check(Some(GOOD), Some(GOOD), Err("one way only"));
        check(Some(" \n"), None, Err("is empty"));
        check(
            Some("abcdefgh"),
            None,
            Err("8 characters long; at least 16"),
        );
        check(Some("abcdefgh abcdefgh"), None, Err("printable ASCII"));
    }

    #[test]
    fn missing_file_is_named() {
        let err = BootstrapToken::read(Some(Path::new("/nonexistent/token")), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn warns_unless_32_to_64_bytes_of_base64() {
        let token = |value: &str| BootstrapToken::check(value, "test".into()).unwrap();
        assert_eq!(token(GOOD).strength_warning(), None);
        let short = token("c2hvcnQtYnV0LXZhbGlkLWJhc2U2NA==")
            .strength_warning()
            .unwrap();
        assert!(short.contains("decodes to 22 bytes"), "{short}");
        let not_b64 = token("not-base64-at-all!!").strength_warning().unwrap();
        assert!(not_b64.contains("not base64"), "{not_b64}");
        assert!(!not_b64.contains("not-base64-at-all"));
    }
}
