//! The relayer's configuration file (`config.md`): its typed model, its units,
//! loading it with the `config` crate (TOML plus
//! `CONSONANT_RELAYER__<SECTION>__<KEY>` environment overrides), validating
//! it, and the values derived from it.

pub mod derived;
pub mod error;
pub mod load;
pub mod model;
pub mod proxy;
pub mod redact;
pub mod units;
pub mod validate;
pub mod verify_keys;

pub use derived::{GrpcTarget, DEFAULT_GRPC_PORT};
pub use error::{ConfigError, Invalid};
pub use load::{load, load_with_env, parse_str, redacted_toml, ENV_PREFIX};
pub use model::*;
pub use validate::validate;
