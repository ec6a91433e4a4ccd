//! TLS failures talking to the backend, classified the way a user fixes
//! them: the certificate's **CA** is not trusted (`backend.caFile`), the
//! certificate is not valid for the **name** in `backend.url`, or the
//! **protocol** failed (not TLS on that port, no common version or cipher).

use std::fmt;

use rustls::CertificateError;

/// Which part of TLS failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailureKind {
    /// The certificate chain does not lead to a trusted CA (or is expired,
    /// revoked, badly signed).
    Ca,
    /// The certificate is valid but not for the host name in the url.
    Name,
    /// The handshake itself failed.
    Protocol,
}

/// A classified TLS failure with the rustls detail and the fix.
#[derive(Debug, Clone)]
pub struct TlsFailure {
    pub kind: TlsFailureKind,
    pub url: String,
    pub host: String,
    pub detail: String,
    /// `backend.ca_file` as configured ("" = system roots only).
    pub ca_file: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ca = if self.ca_file.is_empty() {
            "not set: only the system roots are trusted".to_string()
        } else {
            format!("{:?}", self.ca_file)
        };
        match self.kind {
            TlsFailureKind::Ca => write!(
                f,
                "TLS to {url} failed: the CA — the backend's certificate is not signed by a CA this relayer trusts ({detail}); set the chart value backend.caFile (config key backend.ca_file, now {ca}) to the PEM of the CA that issued it, or for development only set backend.tlsVerify=false (backend.tls_verify = false)",
                url = self.url,
                detail = self.detail,
            ),
            TlsFailureKind::Name => write!(
                f,
                "TLS to {url} failed: the name — the backend's certificate is not valid for the host name {host:?} ({detail}); use the host name the certificate was issued for in backend.url, or reissue the certificate with {host:?} in its subject alternative names (backend.caFile / backend.ca_file does not change this; backend.tlsVerify=false / backend.tls_verify = false skips the check, for development only)",
                url = self.url,
                host = self.host,
                detail = self.detail,
            ),
            TlsFailureKind::Protocol => write!(
                f,
                "TLS to {url} failed: the protocol — the TLS handshake did not complete ({detail}); check that backend.url's port serves HTTPS (not plain HTTP; use http:// for a plaintext backend) with TLS 1.2 or 1.3, and the chart values backend.caFile / backend.tlsVerify (config keys backend.ca_file, now {ca}, and backend.tls_verify)",
                url = self.url,
                detail = self.detail,
            ),
        }
    }
}

/// Finds a rustls error in `err`'s source chain (also inside `io::Error`s)
/// and classifies it. `None` when the failure was not TLS.
pub fn classify(
    err: &(dyn std::error::Error + 'static),
    url: &str,
    host: &str,
    ca_file: &str,
) -> Option<TlsFailure> {
    let (kind, detail) = find_rustls(err)
        .map(|tls| (kind_of(tls), tls.to_string()))
        .or_else(|| {
            // A plain-HTTP server on an https:// url answers bytes that are
            // no TLS record; some stacks surface it only as text.
            let text = crate::error_chain::error_chain(err);
            (text.contains("InvalidContentType") || text.contains("corrupt message"))
                .then_some((TlsFailureKind::Protocol, text))
        })?;
    Some(TlsFailure {
        kind,
        url: url.to_string(),
        host: host.to_string(),
        detail,
        ca_file: ca_file.to_string(),
    })
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls wraps the rustls error in an io::Error, which hyper
        // may wrap in another: look inside each layer.
        let mut io = cause.downcast_ref::<std::io::Error>();
        while let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            io = inner.downcast_ref::<std::io::Error>();
        }
        current = cause.source();
    }
    None
}

fn kind_of(err: &rustls::Error) -> TlsFailureKind {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailureKind::Name
            }
            _ => TlsFailureKind::Ca,
        },
        _ => TlsFailureKind::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_wrapped(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    fn check(err: rustls::Error, kind: TlsFailureKind, needles: &[&str]) {
        // As hyper hands it over: an io::Error around tokio-rustls' io::Error.
        let io = std::io::Error::other(io_wrapped(err));
        let failure =
            classify(&io, "https://backend.test", "backend.test", "").expect("a TLS failure");
        assert_eq!(failure.kind, kind);
        let text = failure.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }

    #[test]
    fn classifies_ca_name_and_protocol() {
        check(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            TlsFailureKind::Ca,
            &[
                "the CA",
                "backend.caFile",
                "backend.ca_file",
                "backend.tlsVerify",
                "UnknownIssuer",
            ],
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::Expired),
            TlsFailureKind::Ca,
            &["the CA"],
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            TlsFailureKind::Name,
            &["the name", "\"backend.test\"", "backend.tlsVerify"],
        );
        check(
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            TlsFailureKind::Protocol,
            &[
                "the protocol",
                "plain HTTP",
                "backend.caFile",
                "backend.tlsVerify",
            ],
        );
    }

    #[test]
    fn non_tls_errors_are_not_classified() {
        let err = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(classify(&err, "https://b", "b", "").is_none());
    }
}
