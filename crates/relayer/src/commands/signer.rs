//! The signer's side of the cluster lock, for `consonant-relayer keygen`
//! and `sign` (the people who hold the keys run the same binary) and the
//! tests: Ed25519 key pairs in PKCS#8 PEM, and a command wrapped in a
//! `SignedCommand` for one cluster. No I/O: files are the caller's.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::config::verify_keys::{format_public_key, ED25519_PUBLIC_KEY_BYTES};
use crate::proto::{signing_input, Command, SignedCommand};

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
