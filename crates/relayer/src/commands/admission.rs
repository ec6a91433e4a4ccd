//! Command admission: protocol.md's whole check order for one incoming
//! command, as one decision — data in, [`Admission`] out. The CommandRouter
//! only carries the decision out (answers, dedup bookkeeping, the span, the
//! hand-off to the executor).
//!
//! The order, first refusal wins:
//!
//! 1. `command_id` present and at most [`MAX_COMMAND_ID_BYTES`], else
//!    REJECTED INVALID_ARGUMENT, answered with an empty id (a huge id never
//!    reaches the dedup cache or a log line);
//! 2. **dedup**: in flight → accepted again; finished → the cached result;
//! 3. draining → REJECTED UNAVAILABLE, retryable;
//! 4. **signature** (the cluster lock, `commands::signature`): a signed
//!    command is unwrapped and, with `verify_keys` set, verified — bad,
//!    unknown, missing where `signed_actions` requires one, expired or for
//!    another cluster → REJECTED SIGNATURE_INVALID; an inconsistent
//!    envelope → REJECTED INVALID_ARGUMENT; a verified one that already
//!    ran within its deadline → REJECTED SIGNATURE_INVALID (the replay
//!    guard). Everything after this step sees the inner command;
//! 5. **validation** → REJECTED INVALID_ARGUMENT;
//! 6. deadline already passed → REJECTED DEADLINE_EXCEEDED;
//! 7. **policy** (`[commands]`) → REJECTED FORBIDDEN naming the key;
//! 8. a Kubernetes action while `kubernetes.enabled = false` → REJECTED
//!    UNAVAILABLE, not retryable;
//! 9. **rate limit** → REJECTED RATE_LIMITED, retryable;
//! 10. **capacity**: `commands.max_in_flight` Kubernetes commands running,
//!     or the replay buffer past its command limit → REJECTED UNAVAILABLE,
//!     retryable.
//!
//! Dedup, the replay guard and the rate limiter hold state, so they come in
//! as calls made at exactly their place in the order: a command refused by
//! an earlier check is never marked in flight and uses no rate-limit token.
//!
//! The decision comes in two halves around validation, because validating a
//! manifest may take a while and runs off the actors' thread: [`arrive`]
//! (steps 1–4) when the command is read, [`decide`] (steps 5–10) once
//! validation has answered. [`admit`] is the two with validation between
//! them, as one call — the whole order, which the table test pins.

use super::dedup::Seen;
use super::outcome::CommandError;
use super::policy::CommandPolicy;
use super::signature::{command_to_run, ClusterLock, Opened};
use super::validate::{validate, ValidatedCommand, ValidationLimits};
use crate::proto::{Command, CommandResult};

/// The longest `command_id` taken (protocol.md: a UUID is 36).
pub const MAX_COMMAND_ID_BYTES: usize = 128;

/// The namespace of a namespaced target that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What admission reads of the relayer's state at the moment a command is
/// decided.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub policy: &'a CommandPolicy,
    pub limits: &'a ValidationLimits,
    /// `kubernetes.enabled`.
    pub kubernetes_enabled: bool,
    /// Kubernetes commands running now, and `commands.max_in_flight`.
    pub in_flight: i64,
    pub max_in_flight: u32,
    /// The replay buffer can take another command's result.
    pub replay_has_room: bool,
    pub now_unix_ms: i64,
}

/// What the first half of admission reads of the relayer's state.
#[derive(Debug, Clone, Copy)]
pub struct Arriving<'a> {
    /// The command arrived after `Drain` on its stream.
    pub draining: bool,
    pub lock: &'a ClusterLock,
    /// This relayer's cluster id: signatures are bound to it.
    pub cluster_id: &'a str,
    pub now_unix_ms: i64,
}

/// The fate of one command.
#[derive(Debug)]
pub enum Admission {
    /// No usable `command_id` (empty, or longer than
    /// [`MAX_COMMAND_ID_BYTES`]): REJECTED INVALID_ARGUMENT, answered with an
    /// empty id; there is nothing to dedup or trace.
    Unidentified(CommandError),
    /// The same id is still running: `CommandAccepted` again, nothing runs.
    DuplicateInFlight,
    /// The same id finished: its cached result again, nothing runs.
    DuplicateFinished(CommandResult),
    /// Refused after dedup marked it in flight: REJECTED with this error,
    /// and the id is forgotten (it never ran, so the backend may retry it).
    Refused(CommandError),
    /// Run it: inline for Ping, on the WorkloadExecutor otherwise. `run`
    /// is the command that runs (the inner one of a signed command).
    Admitted {
        run: Box<Command>,
        validated: ValidatedCommand,
    },
}

/// Decides one command. `dedup` is asked once the id is known to be
/// present (and marks a new id in flight); `replay_check` only for a
/// verified signed command; `take_rate_token` only once every earlier check
/// passed.
pub fn admit(
    command: &Command,
    arriving: &Arriving<'_>,
    gate: &Gate<'_>,
    dedup: impl FnOnce(&str) -> Seen,
    replay_check: impl FnOnce(&str) -> Result<(), CommandError>,
    take_rate_token: impl FnOnce() -> Result<(), CommandError>,
) -> Admission {
    match arrive(command, arriving, dedup, replay_check) {
        Arrival::Unidentified(error) => Admission::Unidentified(error),
        Arrival::DuplicateInFlight => Admission::DuplicateInFlight,
        Arrival::DuplicateFinished(result) => Admission::DuplicateFinished(result),
        Arrival::Refused(error) => Admission::Refused(error),
        Arrival::Fresh(opened) => {
            let run = command_to_run(command.clone(), opened);
            match decide(&run, validate(&run, gate.limits), gate, take_rate_token) {
                Ok(validated) => Admission::Admitted {
                    run: Box::new(run),
                    validated,
                },
                Err(error) => Admission::Refused(error),
            }
        }
    }
}

/// Whether validating `command` may take long enough that it belongs off
/// the actors' thread: an `apply`, whose manifest is parsed (up to
/// `max_frame_bytes` of YAML). Every other action's validation is a few
/// field checks.
pub fn validates_off_thread(command: &Command) -> bool {
    matches!(
        command.action,
        Some(crate::proto::command::Action::Apply(_))
    )
}

/// What the first half of the order says of a command just read.
#[derive(Debug)]
pub enum Arrival {
    /// As [`Admission::Unidentified`].
    Unidentified(CommandError),
    DuplicateInFlight,
    DuplicateFinished(CommandResult),
    /// Refused after dedup marked it in flight (draining, the cluster
    /// lock): forget the id.
    Refused(CommandError),
    /// New and marked in flight: run [`command_to_run`] of it through
    /// validation, then [`decide`].
    Fresh(Opened),
}

/// Steps 1 to 4 of the order: the id, dedup, draining, the signature.
pub fn arrive(
    command: &Command,
    arriving: &Arriving<'_>,
    dedup: impl FnOnce(&str) -> Seen,
    replay_check: impl FnOnce(&str) -> Result<(), CommandError>,
) -> Arrival {
    if command.command_id.is_empty() {
        return Arrival::Unidentified(CommandError::InvalidArgument(
            "command_id is empty: every command needs a UUID command_id (the idempotency key)"
                .into(),
        ));
    }
    if command.command_id.len() > MAX_COMMAND_ID_BYTES {
        return Arrival::Unidentified(CommandError::InvalidArgument(format!(
            "command_id is {} bytes long; at most {MAX_COMMAND_ID_BYTES} are taken (a UUID is 36)",
            command.command_id.len()
        )));
    }
    match dedup(&command.command_id) {
        Seen::InFlight => return Arrival::DuplicateInFlight,
        Seen::Finished(result) => return Arrival::DuplicateFinished(result),
        Seen::New => {}
    }
    if arriving.draining {
        return Arrival::Refused(CommandError::busy(
            "the relayer is draining this stream; re-send the command on the next session",
        ));
    }
    let opened = match arriving
        .lock
        .open(command, arriving.cluster_id, arriving.now_unix_ms)
    {
        Ok(opened) => opened,
        Err(error) => return Arrival::Refused(error),
    };
    if let Opened::Signed {
        key_id: Some(_), ..
    } = &opened
    {
        if let Err(error) = replay_check(&command.command_id) {
            return Arrival::Refused(error);
        }
    }
    Arrival::Fresh(opened)
}

/// Steps 5 (validation's answer) to 10 of the order. `gate` is read when
/// validation has answered, so the deadline and capacity are current.
pub fn decide(
    command: &Command,
    validation: Result<ValidatedCommand, CommandError>,
    gate: &Gate<'_>,
    take_rate_token: impl FnOnce() -> Result<(), CommandError>,
) -> Result<ValidatedCommand, CommandError> {
    let validated = validation?;
    let action = validated.action_name();
    if command.deadline_unix_ms != 0 && command.deadline_unix_ms <= gate.now_unix_ms {
        return Err(CommandError::DeadlineExceeded(format!(
            "deadline_unix_ms {} had already passed when the command arrived",
            command.deadline_unix_ms
        )));
    }
    gate.policy.check(action, &validated, DEFAULT_NAMESPACE)?;
    let kubernetes = !matches!(validated, ValidatedCommand::Ping { .. });
    if kubernetes && !gate.kubernetes_enabled {
        return Err(CommandError::Unavailable {
            message: format!(
                "action {action} needs the Kubernetes API, and kubernetes.enabled is false on this relayer"
            ),
            retryable: false,
        });
    }
    take_rate_token()?;
    if kubernetes && gate.in_flight >= i64::from(gate.max_in_flight) {
        return Err(CommandError::busy(format!(
            "{} commands already running (commands.max_in_flight); retry later",
            gate.in_flight
        )));
    }
    if !gate.replay_has_room {
        return Err(CommandError::busy(
            "the replay buffer is full of unacknowledged frames; retry once the backend acknowledges them",
        ));
    }
    Ok(validated)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::config::CommandsConfig;
    use crate::proto::command::Action;
    use crate::proto::signing::{generate, Signer};
    use crate::proto::{error::Code, GetClusterInfo, ObjectRef, Ping, ScaleWorkload};

    const NOW: i64 = 1_700_000_000_000;
    const CLUSTER: &str = "cls_admission";

    /// The key `Row::locked` trusts, as "ops".
    fn ops() -> &'static Signer {
        static OPS: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
        OPS.get_or_init(|| Signer::from_pem("ops", generate().unwrap().0.as_bytes()).unwrap())
    }

    /// One row: the command, the state it meets, and what must come out.
    struct Row {
        name: &'static str,
        command: Command,
        seen: Seen,
        draining: bool,
        kubernetes_enabled: bool,
        in_flight: i64,
        replay_has_room: bool,
        rate_ok: bool,
        allowed_actions: &'static [&'static str],
        /// `verify_keys` holds [`ops`]'s key.
        locked: bool,
        /// The replay guard says the command already ran.
        replayed: bool,
        expect: Expect,
        /// Whether the rate limiter must have been asked.
        rate_asked: bool,
        /// Whether the replay guard must have been asked.
        replay_asked: bool,
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Unidentified,
        DuplicateInFlight,
        DuplicateFinished,
        Refused {
            code: Code,
            retryable: bool,
            mentions: &'static str,
        },
        Admitted(&'static str),
        /// Admitted, signed by this key.
        AdmittedSigned(&'static str, &'static str),
    }

    fn command(id: &str, action: Action) -> Command {
        Command {
            command_id: id.into(),
            action: Some(action),
            ..Default::default()
        }
    }

    fn ping(id: &str) -> Command {
        command(id, Action::Ping(Ping::default()))
    }

    fn info(id: &str) -> Command {
        command(id, Action::ClusterInfo(GetClusterInfo {}))
    }

    fn row(name: &'static str, command: Command, expect: Expect) -> Row {
        let rate_asked = matches!(expect, Expect::Admitted(_) | Expect::AdmittedSigned(..));
        Row {
            name,
            command,
            seen: Seen::New,
            draining: false,
            kubernetes_enabled: true,
            in_flight: 0,
            replay_has_room: true,
            rate_ok: true,
            allowed_actions: &[],
            locked: false,
            replayed: false,
            expect,
            rate_asked,
            replay_asked: false,
        }
    }

    fn scale(id: &str, deadline_unix_ms: i64) -> Command {
        Command {
            deadline_unix_ms,
            ..command(
                id,
                Action::Scale(ScaleWorkload {
                    target: Some(ObjectRef {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        namespace: "default".into(),
                        name: "web".into(),
                        ..Default::default()
                    }),
                    replicas: 2,
                }),
            )
        }
    }

    fn signed(inner: Command) -> Command {
        ops().sign(&inner, CLUSTER)
    }

    fn refused(code: Code, retryable: bool, mentions: &'static str) -> Expect {
        Expect::Refused {
            code,
            retryable,
            mentions,
        }
    }

    fn check(row: Row) {
        let mut config = CommandsConfig::default();
        if !row.allowed_actions.is_empty() {
            config.allowed_actions = row.allowed_actions.iter().map(|a| a.to_string()).collect();
        }
        config.max_in_flight = 2;
        if row.locked {
            config.verify_keys = [("ops".to_string(), ops().public_key())].into();
        }
        let lock = ClusterLock::from_config(&config).expect("lock");
        let policy = CommandPolicy::from_config(&config).expect("policy");
        let limits = ValidationLimits {
            max_manifest_bytes: 1 << 20,
            max_log_bytes: 1 << 20,
        };
        let arriving = Arriving {
            draining: row.draining,
            lock: &lock,
            cluster_id: CLUSTER,
            now_unix_ms: NOW,
        };
        let gate = Gate {
            policy: &policy,
            limits: &limits,
            kubernetes_enabled: row.kubernetes_enabled,
            in_flight: row.in_flight,
            max_in_flight: config.max_in_flight,
            replay_has_room: row.replay_has_room,
            now_unix_ms: NOW,
        };
        let dedup_asked = Cell::new(false);
        let rate_asked = Cell::new(false);
        let replay_asked = Cell::new(false);
        let seen = row.seen;
        let decision = admit(
            &row.command,
            &arriving,
            &gate,
            |_| {
                dedup_asked.set(true);
                seen
            },
            |_| {
                replay_asked.set(true);
                if row.replayed {
                    Err(CommandError::SignatureInvalid("replay: already ran".into()))
                } else {
                    Ok(())
                }
            },
            || {
                rate_asked.set(true);
                if row.rate_ok {
                    Ok(())
                } else {
                    Err(CommandError::RateLimited(
                        "over commands.rate_per_second".into(),
                    ))
                }
            },
        );
        let got = match decision {
            Admission::Unidentified(error) => {
                assert_eq!(error.code(), Code::InvalidArgument, "{}", row.name);
                Expect::Unidentified
            }
            Admission::DuplicateInFlight => Expect::DuplicateInFlight,
            Admission::DuplicateFinished(_) => Expect::DuplicateFinished,
            Admission::Refused(error) => {
                let mentions = match &row.expect {
                    Expect::Refused { mentions, .. } => *mentions,
                    _ => "",
                };
                assert!(
                    error.to_string().contains(mentions),
                    "{}: {error} should mention {mentions:?}",
                    row.name
                );
                Expect::Refused {
                    code: error.code(),
                    retryable: error.retryable(),
                    mentions,
                }
            }
            Admission::Admitted { run, validated } => {
                assert_eq!(run.command_id, row.command.command_id, "{}", row.name);
                match crate::commands::signature::verified_key_id(&run) {
                    Some("ops") => Expect::AdmittedSigned(validated.action_name(), "ops"),
                    Some(other) => panic!("{}: signed by {other}", row.name),
                    None => Expect::Admitted(validated.action_name()),
                }
            }
        };
        assert_eq!(got, row.expect, "{}", row.name);
        assert_eq!(
            dedup_asked.get(),
            !row.command.command_id.is_empty()
                && row.command.command_id.len() <= MAX_COMMAND_ID_BYTES,
            "{}: dedup asked",
            row.name
        );
        assert_eq!(rate_asked.get(), row.rate_asked, "{}: rate token", row.name);
        assert_eq!(
            replay_asked.get(),
            row.replay_asked,
            "{}: replay guard",
            row.name
        );
    }

    #[test]
    fn the_check_order_of_protocol_md() {
        let finished = CommandResult {
            command_id: "c1".into(),
            ..Default::default()
        };
        let rows = vec![
            row("1 empty id", ping(""), Expect::Unidentified),
            row(
                "1 id longer than 128 bytes",
                ping(&"x".repeat(129)),
                Expect::Unidentified,
            ),
            row(
                "1 id of 128 bytes",
                ping(&"x".repeat(128)),
                Expect::Admitted("ping"),
            ),
            Row {
                seen: Seen::InFlight,
                ..row(
                    "2 duplicate in flight",
                    info("c1"),
                    Expect::DuplicateInFlight,
                )
            },
            Row {
                seen: Seen::Finished(finished),
                // A finished duplicate is answered even while draining.
                draining: true,
                ..row(
                    "2 duplicate finished",
                    info("c1"),
                    Expect::DuplicateFinished,
                )
            },
            Row {
                draining: true,
                ..row(
                    "3 draining",
                    ping("c1"),
                    refused(Code::Unavailable, true, "draining"),
                )
            },
            row(
                "5 invalid: scale without a target",
                command("c1", Action::Scale(ScaleWorkload::default())),
                refused(Code::InvalidArgument, false, "target"),
            ),
            Row {
                // Validation comes before the deadline.
                command: Command {
                    deadline_unix_ms: 1,
                    ..command("c1", Action::Scale(ScaleWorkload::default()))
                },
                ..row(
                    "5 invalid beats a passed deadline",
                    ping("c1"),
                    refused(Code::InvalidArgument, false, "target"),
                )
            },
            Row {
                command: Command {
                    deadline_unix_ms: NOW - 1,
                    ..info("c1")
                },
                ..row(
                    "6 deadline passed",
                    ping("c1"),
                    refused(Code::DeadlineExceeded, false, "deadline_unix_ms"),
                )
            },
            Row {
                command: Command {
                    deadline_unix_ms: NOW + 60_000,
                    ..info("c1")
                },
                ..row(
                    "6 deadline ahead",
                    ping("c1"),
                    Expect::Admitted("cluster_info"),
                )
            },
            Row {
                allowed_actions: &["ping"],
                // The policy comes before the Kubernetes switch.
                kubernetes_enabled: false,
                ..row(
                    "7 policy: action not allowed",
                    info("c1"),
                    refused(Code::Forbidden, false, "allowed_actions"),
                )
            },
            Row {
                kubernetes_enabled: false,
                ..row(
                    "8 Kubernetes off",
                    info("c1"),
                    refused(Code::Unavailable, false, "kubernetes.enabled"),
                )
            },
            Row {
                kubernetes_enabled: false,
                ..row(
                    "8 Kubernetes off: ping still runs",
                    ping("c1"),
                    Expect::Admitted("ping"),
                )
            },
            Row {
                rate_ok: false,
                rate_asked: true,
                // The rate limit comes before capacity.
                in_flight: 2,
                ..row(
                    "9 rate limited",
                    info("c1"),
                    refused(Code::RateLimited, true, "rate_per_second"),
                )
            },
            Row {
                in_flight: 2,
                rate_asked: true,
                ..row(
                    "10 max_in_flight reached",
                    info("c1"),
                    refused(Code::Unavailable, true, "max_in_flight"),
                )
            },
            Row {
                in_flight: 2,
                ..row(
                    "10 max_in_flight counts Kubernetes commands only",
                    ping("c1"),
                    Expect::Admitted("ping"),
                )
            },
            Row {
                replay_has_room: false,
                rate_asked: true,
                ..row(
                    "10 replay buffer full",
                    ping("c1"),
                    refused(Code::Unavailable, true, "replay buffer"),
                )
            },
            row("admitted", info("c1"), Expect::Admitted("cluster_info")),
            // 4: the cluster lock.
            Row {
                locked: true,
                ..row(
                    "4 locked: unsigned scale refused, no rate token",
                    scale("c1", NOW + 60_000),
                    refused(Code::SignatureInvalid, false, "must be signed"),
                )
            },
            Row {
                locked: true,
                ..row(
                    "4 locked: unsigned read runs",
                    info("c1"),
                    Expect::Admitted("cluster_info"),
                )
            },
            Row {
                locked: true,
                replay_asked: true,
                ..row(
                    "4 locked: signed scale runs, signed by ops",
                    signed(scale("c1", NOW + 60_000)),
                    Expect::AdmittedSigned("scale", "ops"),
                )
            },
            Row {
                locked: true,
                replay_asked: true,
                replayed: true,
                ..row(
                    "4 locked: a replay the dedup cache forgot is refused",
                    signed(scale("c1", NOW + 60_000)),
                    refused(Code::SignatureInvalid, false, "replay"),
                )
            },
            Row {
                locked: true,
                ..row(
                    "4 locked: an expired signature beats everything after it",
                    signed(Command {
                        deadline_unix_ms: NOW - 1,
                        ..command("c1", Action::Scale(ScaleWorkload::default()))
                    }),
                    refused(Code::SignatureInvalid, false, "expired"),
                )
            },
            Row {
                locked: true,
                replay_asked: true,
                ..row(
                    "5 locked: validation checks the inner command",
                    signed(Command {
                        deadline_unix_ms: NOW + 1000,
                        ..command("c1", Action::Scale(ScaleWorkload::default()))
                    }),
                    refused(Code::InvalidArgument, false, "target"),
                )
            },
            Row {
                locked: true,
                replay_asked: true,
                allowed_actions: &["ping"],
                ..row(
                    "7 locked: the policy checks the inner action",
                    signed(scale("c1", NOW + 60_000)),
                    refused(Code::Forbidden, false, "allowed_actions"),
                )
            },
            Row {
                seen: Seen::Finished(CommandResult::default()),
                locked: true,
                ..row(
                    "2 dedup comes before the signature",
                    scale("c1", NOW + 60_000),
                    Expect::DuplicateFinished,
                )
            },
            Row {
                draining: true,
                locked: true,
                ..row(
                    "3 draining comes before the signature",
                    scale("c1", NOW + 60_000),
                    refused(Code::Unavailable, true, "draining"),
                )
            },
            row(
                "4 lock off: a signed command is unwrapped and runs unverified",
                signed(scale("c1", 0)),
                Expect::Admitted("scale"),
            ),
            row(
                "4 an action beside signed is refused",
                Command {
                    action: Some(Action::Ping(Ping::default())),
                    ..signed(scale("c1", 0))
                },
                refused(Code::InvalidArgument, false, "outer action"),
            ),
        ];
        for row in rows {
            check(row);
        }
    }
}
