//! The generated relay protocol v1 types (`proto/consonant/relayer/v1/relay.proto`):
//! prost messages, the tonic client and server, and (feature `json`, for the
//! reference backend's admin API) the proto3 JSON mapping.
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

/// The signing input of a `SignedCommand` (protocol.md "Signed commands"):
/// `consonant-relayer/v1/command`, a newline, the relayer's `cluster_id`, a
/// newline, then `SignedCommand.command` exactly as sent. Signers and the
/// relayer build it here, so they cannot disagree on a byte.
pub fn signing_input(cluster_id: &str, command: &[u8]) -> Vec<u8> {
    let mut input =
        Vec::with_capacity(SIGNING_CONTEXT.len() + cluster_id.len() + command.len() + 2);
    input.extend_from_slice(SIGNING_CONTEXT);
    input.push(b'\n');
    input.extend_from_slice(cluster_id.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(command);
    input
}

/// The first line of every signing input.
pub const SIGNING_CONTEXT: &[u8] = b"consonant-relayer/v1/command";

#[cfg(test)]
mod tests {
    #[test]
    fn signing_input_is_context_cluster_and_command_on_lines() {
        assert_eq!(
            super::signing_input("cls_1", b"\x0a\x02id"),
            b"consonant-relayer/v1/command\ncls_1\n\x0a\x02id".to_vec()
        );
    }
}
