//! The format of `commands.verify_keys`: key ids, and Ed25519 public keys as
//! the config file writes them (`"ed25519:<base64 of 32 bytes>"`, parsed by
//! `consonant_proto::signing`). Both the config check and the cluster lock
//! (`commands::signature`) read them here.

pub use crate::proto::signing::{
    format_public_key, parse_public_key, ED25519_PREFIX, ED25519_PUBLIC_KEY_BYTES,
};

/// The longest key id taken.
pub const MAX_KEY_ID_BYTES: usize = 64;

/// Key ids go into `Hello.labels` (comma-separated) and audit lines: 1 to
/// [`MAX_KEY_ID_BYTES`] of letters, digits, `.`, `_` and `-`.
pub fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "is not a key id: use 1 to {MAX_KEY_ID_BYTES} letters, digits, '.', '_' or '-' (e.g. \"ops-2026\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        for ok in ["ops", "ops-2026", "kms.prod_1", &"k".repeat(64)] {
            assert_eq!(check_key_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a,b", "has space", "ключ", &"k".repeat(65)] {
            assert!(check_key_id(bad).is_err(), "{bad}");
        }
    }
}
