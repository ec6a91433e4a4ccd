//! Values computed from the configuration rather than written in it, as
//! methods on the model: the gRPC target the connection dials.

use http::Uri;

use super::error::{ConfigError, Invalid};
use super::model::BackendConfig;

/// Port of the backend's gRPC listener when `grpc_endpoint` is empty.
pub const DEFAULT_GRPC_PORT: u16 = 50051;

/// Where tonic dials: `uri` is always `http://host:port` or
/// `https://host:port`, and `tls` says whether to wrap the stream in TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    pub uri: String,
    pub tls: bool,
}

impl BackendConfig {
    /// The contract's rules: empty `grpc_endpoint` = host of `url` on port
    /// 50051, TLS iff `url` is https; `https://`/`grpcs://` are TLS,
    /// `http://` is plaintext, `grpc://` follows `url`'s scheme. An endpoint
    /// without a port gets 443/80 for https/http and 50051 for grpcs/grpc.
    /// Every endpoint to dial, in failover order: `grpc_endpoints` when
    /// set, else the one [`Self::grpc_target`].
    pub fn grpc_targets(&self) -> Result<Vec<GrpcTarget>, ConfigError> {
        if self.grpc_endpoints.is_empty() {
            return Ok(vec![self.grpc_target()?]);
        }
        self.grpc_endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                BackendConfig {
                    grpc_endpoint: endpoint.clone(),
                    grpc_endpoints: Vec::new(),
                    ..self.clone()
                }
                .grpc_target()
                .map_err(|error| match error {
                    ConfigError::Invalid(mut invalid) => {
                        for item in &mut invalid {
                            if item.key == "backend.grpc_endpoint" {
                                item.key = format!("backend.grpc_endpoints[{i}]");
                            }
                        }
                        ConfigError::Invalid(invalid)
                    }
                    other => other,
                })
            })
            .collect()
    }

    pub fn grpc_target(&self) -> Result<GrpcTarget, ConfigError> {
        let url = parse("backend.url", &self.url)?;
        let url_tls =
            match url.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                _ => return Err(invalid(
                    "backend.url",
                    &self.url,
                    "has no http:// or https:// scheme: use e.g. \"https://backend.company.com\"",
                )),
            };
        let url_host = url.host().unwrap_or_default();

        if self.grpc_endpoint.is_empty() {
            return Ok(target(url_tls, url_host, DEFAULT_GRPC_PORT));
        }
        let endpoint = parse("backend.grpc_endpoint", &self.grpc_endpoint)?;
        let (tls, default_port) = match endpoint.scheme_str() {
            Some("https") => (true, 443),
            Some("grpcs") => (true, DEFAULT_GRPC_PORT),
            Some("http") => (false, 80),
            Some("grpc") => (url_tls, DEFAULT_GRPC_PORT),
            _ => {
                return Err(invalid(
                    "backend.grpc_endpoint",
                    &self.grpc_endpoint,
                    "has no supported scheme: use grpc://, grpcs://, http:// or https://, or leave it empty",
                ))
            }
        };
        let host = endpoint.host().unwrap_or_default();
        Ok(target(
            tls,
            host,
            endpoint.port_u16().unwrap_or(default_port),
        ))
    }
}

fn target(tls: bool, host: &str, port: u16) -> GrpcTarget {
    let scheme = if tls { "https" } else { "http" };
    GrpcTarget {
        uri: format!("{scheme}://{host}:{port}"),
        tls,
    }
}

fn parse(key: &str, value: &str) -> Result<Uri, ConfigError> {
    match value.parse::<Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err(invalid(
            key,
            value,
            "is not a URL with a host, e.g. \"https://backend.company.com\"",
        )),
    }
}

fn invalid(key: &str, value: &str, problem: &str) -> ConfigError {
    ConfigError::Invalid(vec![Invalid::new(key, format!("{value:?}"), problem)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, grpc_endpoint: &str, expected: Result<(&str, bool), &str>) {
        let backend = BackendConfig {
            url: url.into(),
            grpc_endpoint: grpc_endpoint.into(),
            ..BackendConfig::default()
        };
        let got = backend.grpc_target();
        match (got, expected) {
            (Ok(t), Ok((uri, tls))) => {
                assert_eq!((t.uri.as_str(), t.tls), (uri, tls), "{url} {grpc_endpoint}")
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, expected) => panic!("{url} {grpc_endpoint}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn derived_from_url_when_empty() {
        check(
            "https://backend.company.com",
            "",
            Ok(("https://backend.company.com:50051", true)),
        );
        check(
            "http://backend.local:8080",
            "",
            Ok(("http://backend.local:50051", false)),
        );
        check("https://[::1]/api", "", Ok(("https://[::1]:50051", true)));
    }

    #[test]
    fn explicit_schemes() {
        check(
            "http://b",
            "https://g.example.com:8443",
            Ok(("https://g.example.com:8443", true)),
        );
        check(
            "http://b",
            "https://g.example.com",
            Ok(("https://g.example.com:443", true)),
        );
        check("http://b", "grpcs://g:9000", Ok(("https://g:9000", true)));
        check("http://b", "grpcs://g", Ok(("https://g:50051", true)));
        check("https://b", "http://g:9000", Ok(("http://g:9000", false)));
        check("https://b", "http://g", Ok(("http://g:80", false)));
    }

    #[test]
    fn grpc_follows_url_scheme() {
        check("https://b", "grpc://g:9000", Ok(("https://g:9000", true)));
        check("http://b", "grpc://g:9000", Ok(("http://g:9000", false)));
        check("http://b", "grpc://g", Ok(("http://g:50051", false)));
    }

    #[test]
    fn failover_list_in_order() {
        let backend = BackendConfig {
            url: "https://b".into(),
            grpc_endpoints: vec!["grpcs://a.example:443".into(), "grpc://b.example".into()],
            ..BackendConfig::default()
        };
        let targets = backend.grpc_targets().unwrap();
        let uris: Vec<&str> = targets.iter().map(|t| t.uri.as_str()).collect();
        assert_eq!(uris, ["https://a.example:443", "https://b.example:50051"]);
        let bad = BackendConfig {
            grpc_endpoints: vec!["grpcs://a:1".into(), "tcp://b".into()],
            ..backend
        };
        let error = bad.grpc_targets().unwrap_err().to_string();
        assert!(error.contains("backend.grpc_endpoints[1]"), "{error}");
        let single = BackendConfig {
            url: "https://b".into(),
            ..BackendConfig::default()
        };
        assert_eq!(single.grpc_targets().unwrap().len(), 1);
    }

    #[test]
    fn bad_inputs_name_the_key() {
        check("", "", Err("backend.url = \"\""));
        check("ftp://b", "", Err("backend.url = \"ftp://b\""));
        check(
            "https://b",
            "tcp://g:1",
            Err("backend.grpc_endpoint = \"tcp://g:1\""),
        );
        check("https://b", "g:1", Err("backend.grpc_endpoint"));
    }
}
