//! The relayer's configuration file (`config.md`): its typed model, its units,
//! and loading it with the `config` crate (TOML plus
//! `CONSONANT_RELAYER__<SECTION>__<KEY>` environment overrides).

pub mod model;
pub mod units;

pub use model::*;
