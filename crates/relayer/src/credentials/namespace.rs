//! Where the cluster Secret lives: the namespace a relayer or the `register`
//! hook writes `clusterId`/`clusterToken` to when no flag names one.

use std::path::Path;

/// The ServiceAccount namespace file every pod gets.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// A namespace and where it came from (for log lines and error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNamespace {
    pub namespace: String,
    pub origin: &'static str,
}

/// `configured` (a flag or `credentials.secret_namespace`), else the
/// `POD_NAMESPACE` variable, else the in-cluster ServiceAccount namespace
/// file. `None` when none of them is set.
pub fn resolve(configured: &str) -> Option<ResolvedNamespace> {
    resolve_with(
        configured,
        std::env::var("POD_NAMESPACE").ok(),
        Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
    )
}

fn resolve_with(
    configured: &str,
    pod_namespace: Option<String>,
    service_account_file: &Path,
) -> Option<ResolvedNamespace> {
    let found = |namespace: &str, origin| {
        let namespace = namespace.trim();
        (!namespace.is_empty()).then(|| ResolvedNamespace {
            namespace: namespace.to_string(),
            origin,
        })
    };
    found(configured, "configured")
        .or_else(|| found(pod_namespace.as_deref().unwrap_or(""), "POD_NAMESPACE"))
        .or_else(|| {
            let text = std::fs::read_to_string(service_account_file).ok()?;
            found(&text, "the ServiceAccount namespace file")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_then_pod_namespace_then_service_account_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("namespace");
        std::fs::write(&file, "from-file\n").unwrap();
        let check =
            |configured: &str, pod: Option<&str>, file: &Path, expected: Option<(&str, &str)>| {
                let got = resolve_with(configured, pod.map(str::to_string), file);
                assert_eq!(
                    got.as_ref().map(|r| (r.namespace.as_str(), r.origin)),
                    expected
                );
            };
        check("ns-a", Some("pod-ns"), &file, Some(("ns-a", "configured")));
        check("", Some("pod-ns"), &file, Some(("pod-ns", "POD_NAMESPACE")));
        check(
            " ",
            Some(""),
            &file,
            Some(("from-file", "the ServiceAccount namespace file")),
        );
        check("", None, &dir.path().join("missing"), None);
    }
}
