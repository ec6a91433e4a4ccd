//! The one place where Kubernetes answers become command errors:
//! 403 FORBIDDEN, 404 NOT_FOUND, 409 CONFLICT, 400/422 INVALID_ARGUMENT,
//! 429/5xx/timeouts/connection failures UNAVAILABLE (retryable).

use crate::commands::outcome::CommandError;

/// Maps a `kube` error met while doing `what` (e.g. "get apps/v1 Deployment
/// default/web") to a command error whose message says what to do.
pub fn from_kube(what: &str, err: &::kube::Error) -> CommandError {
    match err {
        ::kube::Error::Api(status) => {
            from_status(what, status.code, &status.message, &status.reason)
        }
        other => CommandError::Unavailable {
            message: format!(
                "{what}: the Kubernetes API could not be reached ({other}); retry shortly"
            ),
            retryable: true,
        },
    }
}

pub fn from_status(what: &str, code: u16, message: &str, reason: &str) -> CommandError {
    let detail = if message.is_empty() { reason } else { message };
    match code {
        403 if is_rbac_denial(detail) => CommandError::Forbidden(format!(
            "{what}: Kubernetes RBAC denied it ({detail}); grant the relayer's ServiceAccount this permission or change the command"
        )),
        403 => CommandError::Forbidden(format!(
            "{what}: Kubernetes admission refused it ({detail}); change the object to satisfy the namespace's policy (Pod Security, quota, webhooks) or retry once what it names exists"
        )),
        404 => CommandError::NotFound(format!("{what}: not found ({detail})")),
        409 => CommandError::Conflict(format!("{what}: conflict ({detail}); re-read the object and retry, or use force")),
        400 | 422 => CommandError::InvalidArgument(format!("{what}: Kubernetes rejected it as invalid ({detail})")),
        429 => CommandError::Unavailable {
            message: format!("{what}: the Kubernetes API is throttling requests ({detail}); retry later"),
            retryable: true,
        },
        500..=599 => CommandError::Unavailable {
            message: format!("{what}: the Kubernetes API failed with {code} ({detail}); retry later"),
            retryable: true,
        },
        _ => CommandError::Internal(format!("{what}: unexpected Kubernetes answer {code} ({detail})")),
    }
}

/// The authorizer's refusal reads `User "…" cannot <verb> resource "…"`;
/// any other 403 comes from admission (Pod Security, a missing
/// ServiceAccount, quota, a webhook), where RBAC advice would mislead.
fn is_rbac_denial(detail: &str) -> bool {
    detail.contains(" cannot ") && detail.contains("resource")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::Code;

    fn check(code: u16, expected: Code, retryable: bool) {
        let err = from_status("get v1 Pod default/x", code, "boom", "Reason");
        assert_eq!(err.code(), expected, "HTTP {code}");
        assert_eq!(err.retryable(), retryable, "HTTP {code}");
        assert!(err.to_string().contains("get v1 Pod default/x"));
    }

    #[test]
    fn a_403_names_rbac_only_when_the_authorizer_said_it() {
        for (detail, mentions) in [
            (
                r#"deployments.apps is forbidden: User "system:serviceaccount:ns:nobody" cannot create resource "deployments" in API group "apps" in the namespace "ns""#,
                "RBAC denied it",
            ),
            (
                r#"pods "slow" is forbidden: error looking up service account ns/default: serviceaccount "default" not found"#,
                "admission refused it",
            ),
            (
                r#"pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#,
                "admission refused it",
            ),
        ] {
            let error = from_status("apply", 403, detail, "Forbidden");
            assert_eq!(error.code(), Code::Forbidden);
            assert!(error.to_string().contains(mentions), "{error}");
            assert!(
                error.to_string().contains(detail),
                "the API server's words are kept"
            );
        }
    }

    #[test]
    fn kubernetes_statuses_map_to_protocol_codes() {
        check(403, Code::Forbidden, false);
        check(404, Code::NotFound, false);
        check(409, Code::Conflict, false);
        check(400, Code::InvalidArgument, false);
        check(422, Code::InvalidArgument, false);
        check(429, Code::Unavailable, true);
        check(500, Code::Unavailable, true);
        check(503, Code::Unavailable, true);
    }
}
