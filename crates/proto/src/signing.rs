//! Signed commands (protocol.md "Signed commands"), both sides: the signing
//! input, the `ed25519:<base64>` public key form of `verify_keys`, Ed25519
//! key pairs in PKCS#8 PEM, a command wrapped in a `SignedCommand` for one
//! cluster, and verifying one. The relayer (its lock, `keygen`, `sign`) and
//! the reference backend use this one implementation, so they cannot
//! disagree on a byte. No I/O: files are the caller's.

#![warn(clippy::all)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use ring::signature::{UnparsedPublicKey, ED25519};

use crate::{Command, SignedCommand};

/// The first line of every signing input.
pub const SIGNING_CONTEXT: &[u8] = b"consonant-relayer/v1/command";

/// The prefix of a public key in `verify_keys`, and of `keygen`'s output.
pub const ED25519_PREFIX: &str = "ed25519:";

/// An Ed25519 public key's length.
pub const ED25519_PUBLIC_KEY_BYTES: usize = 32;

/// The signing input: `consonant-relayer/v1/command`, a newline, the
/// relayer's `cluster_id`, a newline, then `SignedCommand.command` exactly
/// as sent.
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

/// Whether `signature` is `key`'s Ed25519 signature of `command` for
/// `cluster_id`.
pub fn verify(
    key: &[u8; ED25519_PUBLIC_KEY_BYTES],
    cluster_id: &str,
    command: &[u8],
    signature: &[u8],
) -> bool {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signing_input(cluster_id, command), signature)
        .is_ok()
}

/// Parses `"ed25519:<base64>"` into the 32 key bytes; the error says what is
/// wrong (never repeating the value).
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

/// Why a key could not be made or read. Messages never hold key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignerError {
    #[error("no PEM \"PRIVATE KEY\" block: the key file must be an Ed25519 private key in PKCS#8 PEM (what `consonant-relayer keygen` or `openssl genpkey -algorithm ed25519` writes)")]
    NotPem,
    #[error("the PRIVATE KEY block is not an Ed25519 PKCS#8 key ({0}): use a key from `consonant-relayer keygen` or `openssl genpkey -algorithm ed25519`")]
    NotEd25519(String),
    #[error("the system random number generator failed")]
    Random,
}

/// One Ed25519 private key and the key id `verify_keys` knows it by.
pub struct Signer {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .field("public", &self.public_key())
            .finish()
    }
}

/// A fresh key pair: the private key as PKCS#8 PEM, and the public key in
/// `verify_keys`' `ed25519:…` form.
pub fn generate() -> Result<(String, String), SignerError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignerError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|error| SignerError::NotEd25519(error.to_string()))?;
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), public_key_of(&pair)))
}

impl Signer {
    /// Reads a PKCS#8 PEM private key (v1 as openssl writes it, or v2 with
    /// the public key, as `keygen` writes it).
    pub fn from_pem(key_id: &str, pem_text: &[u8]) -> Result<Self, SignerError> {
        let der = rustls_pemfile::read_all(&mut &pem_text[..])
            .filter_map(Result::ok)
            .find_map(|item| match item {
                rustls_pemfile::Item::Pkcs8Key(key) => Some(key.secret_pkcs8_der().to_vec()),
                _ => None,
            })
            .ok_or(SignerError::NotPem)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|error| SignerError::NotEd25519(error.to_string()))?;
        Ok(Self {
            key_id: key_id.to_string(),
            pair,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `ed25519:…` form of this key's public half.
    pub fn public_key(&self) -> String {
        public_key_of(&self.pair)
    }

    /// `inner` (with `signed` unset) as the outer command a backend sends:
    /// the id, and `signed` over its serialized bytes for `cluster_id`.
    pub fn sign(&self, inner: &Command, cluster_id: &str) -> Command {
        let bytes = inner.encode_to_vec();
        let signature = self.pair.sign(&signing_input(cluster_id, &bytes));
        Command {
            command_id: inner.command_id.clone(),
            signed: Some(SignedCommand {
                command: bytes.into(),
                key_id: self.key_id.clone(),
                signature: signature.as_ref().to_vec().into(),
            }),
            ..Default::default()
        }
    }
}

fn public_key_of(pair: &Ed25519KeyPair) -> String {
    let mut key = [0u8; ED25519_PUBLIC_KEY_BYTES];
    key.copy_from_slice(pair.public_key().as_ref());
    format_public_key(&key)
}

/// RFC 7468 text: base64 in lines of 64.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_input_is_context_cluster_and_command_on_lines() {
        assert_eq!(
            signing_input("cls_1", b"\x0a\x02id"),
            b"consonant-relayer/v1/command\ncls_1\n\x0a\x02id".to_vec()
        );
    }

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
    fn a_signature_verifies_for_its_cluster_and_bytes_only() {
        let (private, public) = generate().unwrap();
        let signer = Signer::from_pem("ops", private.as_bytes()).unwrap();
        let key = parse_public_key(&public).unwrap();
        let inner = Command {
            command_id: "c1".into(),
            ..Default::default()
        };
        let outer = signer.sign(&inner, "cls_1");
        let signed = outer.signed.unwrap();
        assert!(verify(&key, "cls_1", &signed.command, &signed.signature));
        assert!(!verify(&key, "cls_2", &signed.command, &signed.signature));
        assert!(!verify(&key, "cls_1", b"other", &signed.signature));
    }

    #[test]
    fn a_generated_key_reads_back_with_the_same_public_key() {
        let (private, public) = generate().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(private.lines().all(|l| l.len() <= 64));
        let signer = Signer::from_pem("ops", private.as_bytes()).unwrap();
        assert_eq!(signer.public_key(), public);
        assert!(!format!("{signer:?}").contains(&private[30..60]));
    }

    #[test]
    fn an_openssl_pkcs8_v1_key_is_read() {
        // `openssl genpkey -algorithm ed25519` (RFC 8410 test vector key).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let signer = Signer::from_pem("ops", pem.as_bytes()).unwrap();
        assert_eq!(
            signer.public_key(),
            "ed25519:Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
        );
    }

    #[test]
    fn bad_key_files_say_what_to_use() {
        assert_eq!(
            Signer::from_pem("ops", b"not a key").unwrap_err(),
            SignerError::NotPem
        );
        // A PKCS#8 block that is not Ed25519 (truncated).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp\n-----END PRIVATE KEY-----\n";
        let error = Signer::from_pem("ops", pem.as_bytes()).unwrap_err();
        assert!(matches!(error, SignerError::NotEd25519(_)), "{error}");
    }
}
