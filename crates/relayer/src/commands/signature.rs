//! The cluster lock (protocol.md "Signed commands"): which commands must be
//! signed, unwrapping a `SignedCommand` into the command to run, verifying
//! its Ed25519 signature against `commands.verify_keys` for this cluster,
//! and the deadline rule that keeps a signed command from running twice.
//!
//! Decisions only: [`ClusterLock::open`] takes the command as it arrived
//! and says what runs, or why nothing does. The [`ReplayGuard`] remembers
//! the verified signed commands that are running or ran until their
//! deadline, so a replay is refused even after the dedup cache evicted its
//! result under pressure.
//!
//! **After admission, a command's `signed` field holds only the key id that
//! verified it** (its `command` and `signature` bytes are cleared):
//! [`verified_key_id`] reads it for the audit line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use prost::Message as _;

use super::outcome::{action_name, CommandError};
use crate::config::verify_keys::{check_key_id, parse_public_key, ED25519_PUBLIC_KEY_BYTES};
use crate::config::{CommandsConfig, ALL_ACTIONS};
use crate::proto::signing::verify;
use crate::proto::{Command, SignedCommand};

/// `Hello.labels` key: the key ids the relayer verifies with.
pub const LABEL_SIGNATURE_KEYS: &str = "consonant.signature-keys";
/// `Hello.labels` key: the actions that must be signed.
pub const LABEL_SIGNED_ACTIONS: &str = "consonant.signed-actions";

/// A refusal's message quotes at most this much of a key id the backend sent.
const QUOTED_KEY_ID_BYTES: usize = 64;

/// `[commands] verify_keys` and `signed_actions`, ready to check commands.
#[derive(Debug, Clone, Default)]
pub struct ClusterLock {
    keys: BTreeMap<String, [u8; ED25519_PUBLIC_KEY_BYTES]>,
    signed_actions: BTreeSet<&'static str>,
    /// `commands.dedup_retention`: the furthest a signed command's deadline
    /// may lie ahead.
    max_ahead: Duration,
}

/// What a command is, once opened.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Not signed: it runs as it came.
    Plain,
    /// Signed: `inner` runs (its action, deadline and id; the outer trace).
    /// `key_id` names the key that verified it, `None` when no keys are
    /// configured and it runs unverified.
    Signed {
        inner: Box<Command>,
        key_id: Option<String>,
    },
}

impl ClusterLock {
    /// The lock as configured; the config check has already refused bad
    /// keys, ids and actions, so an error here is a bug's, reported as such.
    pub fn from_config(config: &CommandsConfig) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        for (id, key) in &config.verify_keys {
            check_key_id(id).map_err(|problem| format!("commands.verify_keys {id:?} {problem}"))?;
            let key = parse_public_key(key)
                .map_err(|problem| format!("commands.verify_keys.{id} {problem}"))?;
            keys.insert(id.clone(), key);
        }
        let mut signed_actions = BTreeSet::new();
        for action in &config.signed_actions {
            let known = ALL_ACTIONS
                .iter()
                .find(|a| **a == action.as_str())
                .ok_or_else(|| format!("commands.signed_actions {action:?} is not an action"))?;
            signed_actions.insert(*known);
        }
        Ok(Self {
            keys,
            signed_actions,
            max_ahead: config.dedup_retention,
        })
    }

    /// Whether signatures are verified (`verify_keys` is not empty).
    pub fn is_locked(&self) -> bool {
        !self.keys.is_empty()
    }

    /// What `Hello.labels` tells the backend it must sign (nothing when the
    /// lock is off).
    pub fn hello_labels(&self) -> Vec<(String, String)> {
        if !self.is_locked() {
            return Vec::new();
        }
        let ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        // In protocol order, as `allowed_actions` lists them.
        let actions: Vec<&str> = ALL_ACTIONS
            .iter()
            .copied()
            .filter(|a| self.signed_actions.contains(a))
            .collect();
        vec![
            (LABEL_SIGNATURE_KEYS.to_string(), ids.join(",")),
            (LABEL_SIGNED_ACTIONS.to_string(), actions.join(",")),
        ]
    }

    /// Opens `outer` as it arrived for `cluster_id` at `now_unix_ms`: the
    /// signature step of the check order. Refusals are SIGNATURE_INVALID
    /// (a signature required, unknown, bad, expired or for another cluster)
    /// or INVALID_ARGUMENT (an inconsistent envelope); the message says
    /// which check failed and never holds key or signature bytes.
    pub fn open(
        &self,
        outer: &Command,
        cluster_id: &str,
        now_unix_ms: i64,
    ) -> Result<Opened, CommandError> {
        let Some(signed) = &outer.signed else {
            return match action_name(outer) {
                Some(action) if self.is_locked() && self.signed_actions.contains(action) => {
                    Err(CommandError::SignatureInvalid(format!(
                        "this cluster is locked: action {action} must be signed with one of the keys in commands.verify_keys ({}) (commands.signed_actions); the command came unsigned",
                        self.key_ids()
                    )))
                }
                _ => Ok(Opened::Plain),
            };
        };
        if outer.action.is_some() {
            return Err(CommandError::InvalidArgument(
                "a signed command carries its action inside signed.command; this one has an outer action as well"
                    .into(),
            ));
        }
        let key_id = if self.is_locked() {
            self.verify(signed, cluster_id)?;
            Some(signed.key_id.clone())
        } else {
            None
        };
        let mut inner = Command::decode(signed.command.as_ref()).map_err(|error| {
            CommandError::InvalidArgument(format!(
                "signed.command is not a serialized Command ({error})"
            ))
        })?;
        if inner.signed.is_some() {
            return Err(CommandError::InvalidArgument(
                "signed.command is itself signed: sign the plain command once".into(),
            ));
        }
        if inner.command_id != outer.command_id {
            return Err(CommandError::InvalidArgument(format!(
                "the signed command's command_id ({} bytes) differs from the outer command_id; they must be equal",
                inner.command_id.len()
            )));
        }
        if key_id.is_some() {
            self.check_deadline(inner.deadline_unix_ms, now_unix_ms)?;
        }
        if outer.trace.is_some() {
            inner.trace = outer.trace.clone();
        }
        Ok(Opened::Signed {
            inner: Box::new(inner),
            key_id,
        })
    }

    fn verify(&self, signed: &SignedCommand, cluster_id: &str) -> Result<(), CommandError> {
        let Some(key) = self.keys.get(&signed.key_id) else {
            return Err(CommandError::SignatureInvalid(format!(
                "key_id {:?} is not one of this relayer's commands.verify_keys ({})",
                quoted_key_id(&signed.key_id),
                self.key_ids()
            )));
        };
        if verify(key, cluster_id, &signed.command, &signed.signature) {
            return Ok(());
        }
        Err(CommandError::SignatureInvalid(format!(
            "the signature does not verify with key {:?} for cluster {cluster_id}: it was made with another key, for another cluster, or over other bytes",
            signed.key_id
        )))
    }

    fn check_deadline(&self, deadline_unix_ms: i64, now_unix_ms: i64) -> Result<(), CommandError> {
        let retention = humantime::format_duration(self.max_ahead);
        if deadline_unix_ms == 0 {
            return Err(CommandError::SignatureInvalid(format!(
                "the signed command has no deadline_unix_ms: a signed command must expire within commands.dedup_retention ({retention}) so that it can never run twice; sign it with a deadline"
            )));
        }
        if deadline_unix_ms <= now_unix_ms {
            return Err(CommandError::SignatureInvalid(format!(
                "the signed command expired: its deadline_unix_ms {deadline_unix_ms} passed {} ms ago; have it signed again",
                now_unix_ms.saturating_sub(deadline_unix_ms)
            )));
        }
        let max_ahead_ms = i64::try_from(self.max_ahead.as_millis()).unwrap_or(i64::MAX);
        if deadline_unix_ms.saturating_sub(now_unix_ms) > max_ahead_ms {
            return Err(CommandError::SignatureInvalid(format!(
                "the signed command's deadline_unix_ms is {} s ahead, more than commands.dedup_retention ({retention}): sign it with a shorter time to live",
                deadline_unix_ms.saturating_sub(now_unix_ms) / 1000
            )));
        }
        Ok(())
    }

    fn key_ids(&self) -> String {
        self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A key id the backend sent, cut to a length fit for a message.
fn quoted_key_id(key_id: &str) -> &str {
    if key_id.len() <= QUOTED_KEY_ID_BYTES {
        return key_id;
    }
    let mut end = QUOTED_KEY_ID_BYTES;
    while !key_id.is_char_boundary(end) {
        end -= 1;
    }
    &key_id[..end]
}

/// The command to run for an opened one, marked with the key that verified
/// it (see the module docs).
pub fn command_to_run(outer: Command, opened: Opened) -> Command {
    match opened {
        Opened::Plain => outer,
        Opened::Signed { mut inner, key_id } => {
            inner.signed = key_id.map(|key_id| SignedCommand {
                key_id,
                ..Default::default()
            });
            *inner
        }
    }
}

/// The key id that verified a command admission let through, if it was
/// signed and verified.
pub fn verified_key_id(command: &Command) -> Option<&str> {
    command.signed.as_ref().map(|signed| signed.key_id.as_str())
}

/// The verified signed commands that ran, each until its deadline: a
/// replay within the deadline is refused even when the dedup cache no
/// longer holds the result (evicted by its bounds). A command is recorded
/// when it starts running — one refused earlier may be retried — and while
/// it runs dedup answers its copies as in flight. Bounded: when full, new
/// signed commands are refused as busy (retryable) rather than forgetting
/// one that could then run twice; commands already admitted may still add
/// up to `commands.max_in_flight` beyond the bound.
#[derive(Debug)]
pub struct ReplayGuard {
    deadlines: HashMap<String, i64>,
    by_deadline: BTreeSet<(i64, String)>,
    max_entries: usize,
}

impl ReplayGuard {
    pub fn new(max_entries: usize) -> Self {
        Self {
            deadlines: HashMap::new(),
            by_deadline: BTreeSet::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// Whether a verified signed command may go on: not if the same id ran
    /// within its deadline, nor while the guard is full.
    pub fn check(&mut self, command_id: &str, now_unix_ms: i64) -> Result<(), CommandError> {
        self.expire(now_unix_ms);
        if self.deadlines.contains_key(command_id) {
            return Err(CommandError::SignatureInvalid(
                "replay: a signed command with this command_id already ran on this relayer, and its deadline has not passed; sign a new command to run it again"
                    .into(),
            ));
        }
        if self.deadlines.len() >= self.max_entries {
            return Err(CommandError::busy(format!(
                "{} signed commands that ran are still within their deadlines (commands.dedup_max_entries); retry once some expire",
                self.deadlines.len()
            )));
        }
        Ok(())
    }

    /// A verified signed command started running.
    pub fn record(&mut self, command_id: &str, deadline_unix_ms: i64) {
        if let Some(old) = self
            .deadlines
            .insert(command_id.to_string(), deadline_unix_ms)
        {
            self.by_deadline.remove(&(old, command_id.to_string()));
        }
        self.by_deadline
            .insert((deadline_unix_ms, command_id.to_string()));
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    fn expire(&mut self, now_unix_ms: i64) {
        while let Some((deadline, _)) = self.by_deadline.first() {
            if *deadline > now_unix_ms {
                break;
            }
            let (_, id) = self.by_deadline.pop_first().expect("first exists");
            self.deadlines.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::Action;
    use crate::proto::signing::{generate, Signer};
    use crate::proto::{error::Code, Ping, ScaleWorkload, TraceContext};

    const NOW: i64 = 1_700_000_000_000;
    const CLUSTER: &str = "cls_locked";

    fn signer(key_id: &str) -> Signer {
        Signer::from_pem(key_id, generate().unwrap().0.as_bytes()).unwrap()
    }

    fn lock(signers: &[&Signer]) -> ClusterLock {
        let config = CommandsConfig {
            verify_keys: signers
                .iter()
                .map(|s| (s.key_id().to_string(), s.public_key()))
                .collect(),
            dedup_retention: Duration::from_secs(600),
            ..Default::default()
        };
        ClusterLock::from_config(&config).unwrap()
    }

    fn scale(id: &str, deadline: i64) -> Command {
        Command {
            command_id: id.into(),
            deadline_unix_ms: deadline,
            action: Some(Action::Scale(ScaleWorkload::default())),
            ..Default::default()
        }
    }

    fn ping(id: &str) -> Command {
        Command {
            command_id: id.into(),
            action: Some(Action::Ping(Ping::default())),
            ..Default::default()
        }
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Plain,
        Verified(&'static str),
        Unverified,
        Refused(Code, &'static str),
    }

    #[test]
    fn every_case_of_the_spec() {
        let ops = signer("ops");
        let kms = signer("kms");
        let rogue = signer("ops"); // same id, another key
        let locked = lock(&[&ops, &kms]);
        let open = ClusterLock::default();
        let ahead = NOW + 60_000;
        let mut beside = ops.sign(&scale("c1", ahead), CLUSTER);
        beside.action = Some(Action::Ping(Ping::default()));
        let mut tampered = ops.sign(&scale("c1", ahead), CLUSTER);
        let mut bytes = tampered.signed.as_ref().unwrap().command.to_vec();
        bytes.push(0x10); // a varint field 2 appended: another command
        bytes.push(0x01);
        tampered.signed.as_mut().unwrap().command = bytes.into();
        let mut twice = ops.sign(&ops.sign(&scale("c1", ahead), CLUSTER), CLUSTER);
        twice.command_id = "c1".into();
        let mut other_id = ops.sign(&scale("c1", ahead), CLUSTER);
        other_id.command_id = "c2".into();
        let mut unknown = ops.sign(&scale("c1", ahead), CLUSTER);
        unknown.signed.as_mut().unwrap().key_id = "x".repeat(500);
        let mut garbage = ops.sign(&scale("c1", ahead), CLUSTER);
        garbage.signed.as_mut().unwrap().signature = vec![0u8; 64].into();
        let rows: Vec<(&str, &ClusterLock, Command, Expect)> = vec![
            (
                "lock off: unsigned scale",
                &open,
                scale("c1", 0),
                Expect::Plain,
            ),
            (
                "locked: unsigned scale",
                &locked,
                scale("c1", ahead),
                Expect::Refused(Code::SignatureInvalid, "must be signed"),
            ),
            ("locked: unsigned ping", &locked, ping("c1"), Expect::Plain),
            (
                "locked: signed scale",
                &locked,
                ops.sign(&scale("c1", ahead), CLUSTER),
                Expect::Verified("ops"),
            ),
            (
                "locked: second key",
                &locked,
                kms.sign(&scale("c1", ahead), CLUSTER),
                Expect::Verified("kms"),
            ),
            (
                "locked: signed read verified all the same",
                &locked,
                ops.sign(&ping("c1"), CLUSTER),
                Expect::Refused(Code::SignatureInvalid, "no deadline_unix_ms"),
            ),
            (
                "locked: signed for another cluster",
                &locked,
                ops.sign(&scale("c1", ahead), "cls_other"),
                Expect::Refused(Code::SignatureInvalid, "does not verify with key \"ops\""),
            ),
            (
                "locked: another key under a trusted id",
                &locked,
                rogue.sign(&scale("c1", ahead), CLUSTER),
                Expect::Refused(Code::SignatureInvalid, "does not verify"),
            ),
            (
                "locked: bytes changed after signing",
                &locked,
                tampered,
                Expect::Refused(Code::SignatureInvalid, "does not verify"),
            ),
            (
                "locked: garbage signature",
                &locked,
                garbage,
                Expect::Refused(Code::SignatureInvalid, "does not verify"),
            ),
            (
                "locked: unknown key id",
                &locked,
                unknown,
                Expect::Refused(Code::SignatureInvalid, "is not one of this relayer's"),
            ),
            (
                "locked: no deadline",
                &locked,
                ops.sign(&scale("c1", 0), CLUSTER),
                Expect::Refused(Code::SignatureInvalid, "no deadline_unix_ms"),
            ),
            (
                "locked: expired",
                &locked,
                ops.sign(&scale("c1", NOW - 1), CLUSTER),
                Expect::Refused(Code::SignatureInvalid, "expired"),
            ),
            (
                "locked: deadline exactly the retention ahead",
                &locked,
                ops.sign(&scale("c1", NOW + 600_000), CLUSTER),
                Expect::Verified("ops"),
            ),
            (
                "locked: deadline too far ahead",
                &locked,
                ops.sign(&scale("c1", NOW + 600_001), CLUSTER),
                Expect::Refused(Code::SignatureInvalid, "more than commands.dedup_retention"),
            ),
            (
                "outer action beside signed",
                &locked,
                beside,
                Expect::Refused(Code::InvalidArgument, "outer action"),
            ),
            (
                "inner signed",
                &locked,
                twice,
                Expect::Refused(Code::InvalidArgument, "itself signed"),
            ),
            (
                "differing ids",
                &locked,
                other_id,
                Expect::Refused(Code::InvalidArgument, "differs"),
            ),
            (
                "lock off: signed command unwrapped unverified",
                &open,
                ops.sign(&scale("c1", 0), "any cluster"),
                Expect::Unverified,
            ),
        ];
        for (name, lock, command, expect) in rows {
            let got = match lock.open(&command, CLUSTER, NOW) {
                Ok(Opened::Plain) => Expect::Plain,
                Ok(Opened::Signed { inner, key_id }) => {
                    assert_eq!(inner.command_id, command.command_id, "{name}");
                    assert!(inner.signed.is_none(), "{name}");
                    match key_id {
                        Some(id) if id == "ops" => Expect::Verified("ops"),
                        Some(id) if id == "kms" => Expect::Verified("kms"),
                        Some(other) => panic!("{name}: verified by {other}"),
                        None => Expect::Unverified,
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    let mentions = match &expect {
                        Expect::Refused(_, mentions) => *mentions,
                        _ => "",
                    };
                    assert!(message.contains(mentions), "{name}: {message}");
                    // Never key or signature bytes, never a whole huge id.
                    assert!(message.len() < 400, "{name}: {message}");
                    assert!(
                        !message.contains(&ops.public_key()["ed25519:".len()..]),
                        "{name}"
                    );
                    Expect::Refused(error.code(), mentions)
                }
            };
            assert_eq!(got, expect, "{name}");
        }
    }

    #[test]
    fn the_inner_command_runs_with_the_outer_trace() {
        let ops = signer("ops");
        let mut outer = ops.sign(&scale("c1", NOW + 1000), CLUSTER);
        outer.trace = Some(TraceContext {
            traceparent: "00-aa-bb-01".into(),
            ..Default::default()
        });
        let opened = lock(&[&ops]).open(&outer, CLUSTER, NOW).unwrap();
        let run = command_to_run(outer, opened);
        assert_eq!(run.deadline_unix_ms, NOW + 1000);
        assert!(matches!(run.action, Some(Action::Scale(_))));
        assert_eq!(run.trace.as_ref().unwrap().traceparent, "00-aa-bb-01");
        assert_eq!(verified_key_id(&run), Some("ops"));
        assert!(run.signed.unwrap().signature.is_empty());
    }

    #[test]
    fn hello_labels_only_when_locked() {
        assert!(ClusterLock::default().hello_labels().is_empty());
        let labels = lock(&[&signer("ops"), &signer("kms")]).hello_labels();
        assert_eq!(
            labels,
            [
                (LABEL_SIGNATURE_KEYS.to_string(), "kms,ops".to_string()),
                (
                    LABEL_SIGNED_ACTIONS.to_string(),
                    "apply,delete,scale,restart".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_replay_guard_refuses_a_replay_until_the_deadline() {
        let mut guard = ReplayGuard::new(2);
        assert_eq!(guard.check("a", NOW), Ok(()));
        guard.record("a", NOW + 10);
        let replay = guard.check("a", NOW + 5).unwrap_err();
        assert_eq!(replay.code(), Code::SignatureInvalid);
        assert!(replay.to_string().contains("replay"));
        // Full: refused as busy, nothing forgotten.
        guard.record("b", NOW + 20);
        let full = guard.check("c", NOW).unwrap_err();
        assert!(full.retryable(), "{full}");
        assert_eq!(
            guard.check("b", NOW).unwrap_err().code(),
            Code::SignatureInvalid
        );
        // Past its deadline an entry is gone (admission refuses the expired
        // command itself before the guard is asked).
        assert_eq!(guard.check("a", NOW + 10), Ok(()));
        assert_eq!(guard.len(), 1);
        guard.record("a", NOW + 30);
        assert_eq!(
            guard.check("a", NOW + 21).unwrap_err().code(),
            Code::SignatureInvalid
        );
        assert_eq!(guard.len(), 1, "b expired at NOW + 20");
    }
}
