//! The format of `commands.verify_keys`: key ids and Ed25519 public keys as
//! the config file writes them (`"ed25519:<base64 of 32 bytes>"`). Both the
//! config check and the cluster lock (`commands::signature`) parse them here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The prefix of a public key in `verify_keys`, and of `keygen`'s output.
pub const ED25519_PREFIX: &str = "ed25519:";

/// The longest key id taken.
pub const MAX_KEY_ID_BYTES: usize = 64;

/// An Ed25519 public key's length.
pub const ED25519_PUBLIC_KEY_BYTES: usize = 32;

/// Parses `"ed25519:<base64>"` into the 32 key bytes; the error says what is
/// wrong (never repeating more of the value than its length).
pub fn parse_public_key(value: &str) -> Result<[u8; ED25519_PUBLIC_KEY_BYTES], String> {
    let Some(encoded) = value.strip_prefix(ED25519_PREFIX) else {
        return Err(format!(
            "is not \"{ED25519_PREFIX}<base64 of the 32-byte public key>\" (the form `consonant-relayer keygen` prints)"
        ));
    };
    let bytes = STANDARD.decode(encoded.trim()).map_err(|_| {
        format!(
            "is not valid base64 after \"{ED25519_PREFIX}\": use the public key `consonant-relayer keygen` prints"
        )
    })?;
    <[u8; ED25519_PUBLIC_KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes; an Ed25519 public key is {ED25519_PUBLIC_KEY_BYTES}",
            bytes.len()
        )
    })
}

/// The `ed25519:…` form of a public key.
pub fn format_public_key(key: &[u8; ED25519_PUBLIC_KEY_BYTES]) -> String {
    format!("{ED25519_PREFIX}{}", STANDARD.encode(key))
}

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
    fn public_keys() {
        let key = [7u8; 32];
        let text = format_public_key(&key);
        assert!(text.starts_with("ed25519:"));
        assert_eq!(parse_public_key(&text), Ok(key));
        let cases: [(&str, &str); 4] = [
            ("AAAA", "is not \"ed25519:"),
            ("rsa:AAAA", "is not \"ed25519:"),
            ("ed25519:!!!", "not valid base64"),
            ("ed25519:AAAA", "decodes to 3 bytes"),
        ];
        for (value, error) in cases {
            let got = parse_public_key(value).unwrap_err();
            assert!(got.contains(error), "{value}: {got}");
        }
    }

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
