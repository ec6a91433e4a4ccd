//! Command outcomes: the one place where relayer errors become the
//! protocol's `Status` and `Error.Code`, plus the result builders.

use crate::clock::now_unix_ms;

use bytes::Bytes;

use crate::proto::{command, command_result::Status, error::Code, Command, CommandResult, Error};

/// Why a command did not succeed. The message is one sentence a human can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Forbidden(String),
    /// The `[commands]` policy refuses it, decided only once the Kubernetes
    /// API's discovery answered (a cluster-scoped kind while
    /// `allowed_namespaces` is not `["*"]`): answered REJECTED/FORBIDDEN and
    /// not cached, exactly like the refusals decided before anything runs.
    #[error("{0}")]
    PolicyForbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{message}")]
    Unavailable { message: String, retryable: bool },
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Cancelled(String),
    /// The cluster lock refuses it (protocol.md "Signed commands"): a
    /// signature required, missing, unknown, bad, expired or for another
    /// cluster. Not retryable, not cached.
    #[error("{0}")]
    SignatureInvalid(String),
}

impl CommandError {
    pub fn code(&self) -> Code {
        match self {
            CommandError::InvalidArgument(_) => Code::InvalidArgument,
            CommandError::Forbidden(_) | CommandError::PolicyForbidden(_) => Code::Forbidden,
            CommandError::NotFound(_) => Code::NotFound,
            CommandError::Conflict(_) => Code::Conflict,
            CommandError::RateLimited(_) => Code::RateLimited,
            CommandError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CommandError::Unavailable { .. } => Code::Unavailable,
            CommandError::Internal(_) => Code::Internal,
            CommandError::Unsupported(_) => Code::Unsupported,
            CommandError::Cancelled(_) => Code::Cancelled,
            CommandError::SignatureInvalid(_) => Code::SignatureInvalid,
        }
    }

    /// Whether the backend may retry the same command later.
    pub fn retryable(&self) -> bool {
        match self {
            CommandError::RateLimited(_) => true,
            CommandError::Unavailable { retryable, .. } => *retryable,
            _ => false,
        }
    }

    pub fn to_proto(&self) -> Error {
        Error {
            code: self.code() as i32,
            message: self.to_string(),
            retryable: self.retryable(),
        }
    }

    /// The relayer is overloaded or draining: try again later, elsewhere or after reconnect.
    pub fn busy(message: impl Into<String>) -> Self {
        CommandError::Unavailable {
            message: message.into(),
            retryable: true,
        }
    }
}

/// A command refused before it ran (never cached for dedup).
pub fn rejected(command: &Command, error: &CommandError) -> CommandResult {
    let now = now_unix_ms();
    CommandResult {
        command_id: command.command_id.clone(),
        status: Status::Rejected as i32,
        error: Some(error.to_proto()),
        output_json: Bytes::new(),
        started_at_unix_ms: now,
        finished_at_unix_ms: now,
        trace: command.trace.clone(),
    }
}

/// A command that ran and succeeded with `output` (a JSON value).
pub fn succeeded(
    command: &Command,
    output: &serde_json::Value,
    started_at_unix_ms: i64,
) -> CommandResult {
    CommandResult {
        command_id: command.command_id.clone(),
        status: Status::Succeeded as i32,
        error: None,
        output_json: Bytes::from(serde_json::to_vec(output).unwrap_or_default()),
        started_at_unix_ms,
        finished_at_unix_ms: now_unix_ms(),
        trace: command.trace.clone(),
    }
}

/// A ping's result with `output_json` from [`ping_output`], run at
/// `at_unix_ms` (a ping takes no measurable time: it started and finished
/// then). The command ends here, so its id and trace move into the result.
pub fn ping_succeeded(command: Command, output_json: Bytes, at_unix_ms: i64) -> CommandResult {
    CommandResult {
        command_id: command.command_id,
        status: Status::Succeeded as i32,
        error: None,
        output_json,
        started_at_unix_ms: at_unix_ms,
        finished_at_unix_ms: at_unix_ms,
        trace: command.trace,
    }
}

/// A ping's output, `{"payload_len":N}`, written directly rather than
/// through a JSON value: the same bytes `serde_json` gives, and pings are
/// the hottest path there is.
pub fn ping_output(payload_len: usize) -> Bytes {
    const HEAD: &[u8] = b"{\"payload_len\":";
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = payload_len;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(HEAD.len() + digits.len() - start + 1);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(&digits[start..]);
    out.push(b'}');
    Bytes::from(out)
}

/// A command that ran and ended with `status` (FAILED, CANCELLED, TIMED_OUT).
pub fn ended(
    command: &Command,
    status: Status,
    error: &CommandError,
    started_at_unix_ms: i64,
) -> CommandResult {
    CommandResult {
        command_id: command.command_id.clone(),
        status: status as i32,
        error: Some(error.to_proto()),
        output_json: Bytes::new(),
        started_at_unix_ms,
        finished_at_unix_ms: now_unix_ms(),
        trace: command.trace.clone(),
    }
}

/// The action's name as in `commands.allowed_actions` and `Hello.capabilities`.
pub fn action_name(command: &Command) -> Option<&'static str> {
    use command::Action;
    command.action.as_ref().map(|action| match action {
        Action::Ping(_) => "ping",
        Action::Apply(_) => "apply",
        Action::Delete(_) => "delete",
        Action::Get(_) => "get",
        Action::List(_) => "list",
        Action::Scale(_) => "scale",
        Action::Restart(_) => "restart",
        Action::Logs(_) => "logs",
        Action::ClusterInfo(_) => "cluster_info",
    })
}

/// The status name used in metrics and audit lines.
pub fn status_name(status: i32) -> &'static str {
    match Status::try_from(status) {
        Ok(Status::Succeeded) => "succeeded",
        Ok(Status::Failed) => "failed",
        Ok(Status::Rejected) => "rejected",
        Ok(Status::Cancelled) => "cancelled",
        Ok(Status::TimedOut) => "timed_out",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_answers_what_serde_json_would() {
        for len in [0, 7, 64, 1_000, 65_536, usize::MAX] {
            let expected = serde_json::to_vec(&serde_json::json!({ "payload_len": len })).unwrap();
            assert_eq!(ping_output(len), expected, "{len}");
        }
    }

    #[test]
    fn only_rate_limits_and_marked_unavailable_are_retryable() {
        assert!(CommandError::RateLimited("slow down".into()).retryable());
        assert!(CommandError::busy("draining").retryable());
        assert!(!CommandError::Unavailable {
            message: "kubernetes disabled".into(),
            retryable: false
        }
        .retryable());
        assert!(!CommandError::Forbidden("policy".into()).retryable());
    }

    #[test]
    fn rejection_carries_code_message_and_trace() {
        let command = Command {
            command_id: "c1".into(),
            ..Default::default()
        };
        let result = rejected(
            &command,
            &CommandError::InvalidArgument("command has no action".into()),
        );
        assert_eq!(result.status, Status::Rejected as i32);
        let error = result.error.unwrap();
        assert_eq!(error.code, Code::InvalidArgument as i32);
        assert_eq!(error.message, "command has no action");
        assert!(!error.retryable);
    }
}
