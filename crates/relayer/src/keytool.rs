//! The key holders' side of the cluster lock, in the production binary:
//! `keygen` (a fresh Ed25519 key pair into files) and `sign` (one command,
//! as JSON, signed for one cluster). The crypto and formats are
//! `consonant_proto::signing`'s; this module owns the files, the JSON and
//! the error messages.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::now_unix_ms;
use crate::config::verify_keys::check_key_id;
use crate::proto::signing::{generate, Signer, SignerError};
use crate::proto::Command;

/// Why `keygen` or `sign` failed; each message names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyToolError {
    #[error("{path}: already exists; keygen never overwrites a key: choose another --out prefix or remove it first")]
    Exists { path: PathBuf },
    #[error("{path}: cannot write it ({source})")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: cannot read it ({source})")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("--key-file {path}: {source}")]
    Key { path: PathBuf, source: SignerError },
    #[error("--key-id {0:?} {1}")]
    KeyId(String, String),
    #[error("--cluster-id is empty: name the cluster the command is for (its cluster_id, e.g. cls_…); a signature binds to it")]
    NoCluster,
    #[error("{what} is not one Command in the proto3 JSON mapping ({source}); e.g. {{\"scale\": {{\"target\": {{\"api_version\": \"apps/v1\", \"kind\": \"Deployment\", \"namespace\": \"default\", \"name\": \"web\"}}, \"replicas\": 3}}}}")]
    NotACommand {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0} already has `signed` set: give the plain command; sign wraps it")]
    AlreadySigned(String),
    #[error("{0} has no action: give one of ping, apply, delete, get, list, scale, restart, logs, cluster_info")]
    NoAction(String),
    #[error("{0} has no deadline_unix_ms: pass --ttl (e.g. --ttl 5m, at most the relayer's commands.dedup_retention, 10m by default); a signed command must expire")]
    NoDeadline(String),
    #[error("{0} has deadline_unix_ms and --ttl was given as well: use one")]
    TwoDeadlines(String),
}

/// `keygen --out PREFIX`: writes the private key to `PREFIX.key` (PKCS#8
/// PEM, mode 0600, created new: never overwritten) and the public key to
/// `PREFIX.pub`, and returns the public key's `ed25519:…` form.
pub fn keygen(prefix: &Path) -> Result<String, KeyToolError> {
    let (private, public) = generate().map_err(|source| KeyToolError::Key {
        path: prefix.into(),
        source,
    })?;
    let key_path = with_suffix(prefix, "key");
    let pub_path = with_suffix(prefix, "pub");
    for path in [&key_path, &pub_path] {
        if path.exists() {
            return Err(KeyToolError::Exists { path: path.clone() });
        }
    }
    write_new(&key_path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(public)
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` with `mode` from the start (no moment at which a private
/// key is readable by others) and refuses an existing file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyToolError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write_error = |source| KeyToolError::Write {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyToolError::Exists { path: path.into() },
            _ => write_error(source),
        })?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// What `sign` needs besides the command.
#[derive(Debug)]
pub struct SignRequest<'a> {
    pub key_file: &'a Path,
    pub key_id: &'a str,
    pub cluster_id: &'a str,
    /// Fills `deadline_unix_ms` (now + ttl) when the command has none.
    pub ttl: Option<Duration>,
}

/// `sign`: the command in `json` (named `what` in errors), signed, as the
/// outer command in the proto3 JSON mapping. A missing `command_id` gets a
/// fresh UUID (it must be inside the signature).
pub fn sign(request: &SignRequest<'_>, what: &str, json: &str) -> Result<String, KeyToolError> {
    if let Err(problem) = check_key_id(request.key_id) {
        return Err(KeyToolError::KeyId(request.key_id.into(), problem));
    }
    if request.cluster_id.is_empty() {
        return Err(KeyToolError::NoCluster);
    }
    let pem = std::fs::read(request.key_file).map_err(|source| KeyToolError::Read {
        what: format!("--key-file {}", request.key_file.display()),
        source,
    })?;
    let signer = Signer::from_pem(request.key_id, &pem).map_err(|source| KeyToolError::Key {
        path: request.key_file.into(),
        source,
    })?;
    let mut command: Command =
        serde_json::from_str(json).map_err(|source| KeyToolError::NotACommand {
            what: what.into(),
            source,
        })?;
    if command.signed.is_some() {
        return Err(KeyToolError::AlreadySigned(what.into()));
    }
    if command.action.is_none() {
        return Err(KeyToolError::NoAction(what.into()));
    }
    match (command.deadline_unix_ms, request.ttl) {
        (0, None) => return Err(KeyToolError::NoDeadline(what.into())),
        (0, Some(ttl)) => {
            command.deadline_unix_ms =
                now_unix_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        }
        (_, None) => {}
        (_, Some(_)) => return Err(KeyToolError::TwoDeadlines(what.into())),
    }
    if command.command_id.is_empty() {
        command.command_id = uuid::Uuid::new_v4().to_string();
    }
    let outer = signer.sign(&command, request.cluster_id);
    Ok(serde_json::to_string(&outer).expect("a Command always serializes"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use prost::Message as _;

    use super::*;
    use crate::proto::command::Action;
    use crate::proto::signing::{parse_public_key, verify};

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("ops");
        let public = keygen(&prefix).unwrap();
        let key = dir.path().join("ops.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ops.pub")).unwrap(),
            format!("{public}\n")
        );
        assert!(parse_public_key(&public).is_ok());
        let again = keygen(&prefix).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn sign_wraps_the_command_for_one_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let public = keygen(&dir.path().join("ops")).unwrap();
        let key_file = dir.path().join("ops.key");
        let request = SignRequest {
            key_file: &key_file,
            key_id: "ops",
            cluster_id: "cls_1",
            ttl: Some(Duration::from_secs(300)),
        };
        let scale = r#"{"scale": {"target": {"api_version": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"}, "replicas": 3}}"#;
        let before = now_unix_ms();
        let out = sign(&request, "stdin", scale).unwrap();
        let outer: Command = serde_json::from_str(&out).unwrap();
        let signed = outer.signed.as_ref().unwrap();
        assert_eq!(signed.key_id, "ops");
        assert!(outer.action.is_none());
        let key = parse_public_key(&public).unwrap();
        assert!(verify(&key, "cls_1", &signed.command, &signed.signature));
        let inner = Command::decode(signed.command.as_ref()).unwrap();
        assert_eq!(inner.command_id, outer.command_id);
        assert_eq!(inner.command_id.len(), 36, "a fresh UUID");
        assert!(matches!(inner.action, Some(Action::Scale(ref s)) if s.replicas == 3));
        let ahead = inner.deadline_unix_ms - before;
        assert!((300_000..310_000).contains(&ahead), "{ahead}");
        // The output names fields as the admin API reads them.
        assert!(out.contains("\"command_id\""), "{out}");
    }

    #[test]
    fn sign_refuses_what_cannot_be_signed_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("ops")).unwrap();
        let key_file = dir.path().join("ops.key");
        let missing = dir.path().join("missing.key");
        let public_file = dir.path().join("ops.pub");
        let request = |key_file, key_id, ttl| SignRequest {
            key_file,
            key_id,
            cluster_id: "cls_1",
            ttl,
        };
        let ping = r#"{"ping": {}}"#;
        let ttl = Some(Duration::from_secs(60));
        let cases: Vec<(SignRequest<'_>, &str, &str)> = vec![
            (
                request(&key_file, "ops", None),
                ping,
                "no deadline_unix_ms: pass --ttl",
            ),
            (
                request(&key_file, "ops", ttl),
                r#"{"ping": {}, "deadline_unix_ms": "1"}"#,
                "use one",
            ),
            (request(&key_file, "ops", ttl), r#"{}"#, "has no action"),
            (
                request(&key_file, "ops", ttl),
                r#"{"scael": {}}"#,
                "not one Command",
            ),
            (
                request(&key_file, "ops", ttl),
                r#"{"signed": {"key_id": "x"}, "ping": {}}"#,
                "already has `signed`",
            ),
            (request(&key_file, "ops 1", ttl), ping, "--key-id \"ops 1\""),
            (request(&missing, "ops", ttl), ping, "cannot read it"),
            (
                request(&public_file, "ops", ttl),
                ping,
                "no PEM \"PRIVATE KEY\" block",
            ),
        ];
        for (request, json, expected) in cases {
            let error = sign(&request, "command.json", json)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }
}
