//! `ConfigError`: everything that can go wrong loading the configuration,
//! worded for the person who has to fix the file. Every message names the
//! key, where its value came from (the file or an environment variable), the
//! bad value and what is allowed.

use std::fmt;
use std::path::PathBuf;

/// One rejected value, as found by [`crate::config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key, e.g. `cluster.name`.
    pub key: String,
    /// The offending value as the user wrote it (quoted when a string).
    pub value: String,
    /// Where the value came from: `in /etc/consonant/relayer.toml` or
    /// `from CONSONANT_RELAYER__CLUSTER__NAME`. Empty until the loader
    /// attributes it.
    pub origin: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl Invalid {
    pub fn new(key: &str, value: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            value: value.into(),
            origin: String::new(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.key, self.value)?;
        if !self.origin.is_empty() {
            write!(f, " {}", self.origin)?;
        }
        write!(f, " {}", self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path given to --config and that the file is readable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },

    /// A key could not be deserialised: unknown, or of the wrong type/format.
    #[error("{key} {origin}: {message}")]
    Parse {
        key: String,
        origin: String,
        message: String,
    },

    /// All validation failures, reported together, one per line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Invalid>),
}

fn lines(errors: &[Invalid]) -> String {
    let mut text = format!(
        "the configuration has {} invalid value{}:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for error in errors {
        text.push_str("\n  ");
        text.push_str(&error.to_string());
    }
    text
}
