//! The generated relay protocol v1 types (`proto/consonant/relayer/v1/relay.proto`):
//! prost messages, the tonic client and server, and (feature `json`, for the
//! reference backend's admin API) the proto3 JSON mapping; (feature
//! `signing`) Ed25519 signing of commands.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/consonant.relayer.v1.rs"));
#[cfg(feature = "json")]
include!(concat!(env!("OUT_DIR"), "/consonant.relayer.v1.serde.rs"));

/// The protocol version this relayer speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

impl std::fmt::Debug for RotateCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCredentials")
            .field("cluster_token", &"***")
            .finish()
    }
}

#[cfg(feature = "signing")]
pub mod signing;
