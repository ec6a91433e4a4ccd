//! Which proxy, if any, a connection to the backend goes through:
//! `backend.proxy` first (`"none"` = always direct, a URL = that proxy),
//! else the environment as curl reads it — `https_proxy`/`HTTPS_PROXY` for
//! TLS targets, `http_proxy`/`HTTP_PROXY` for plaintext ones,
//! `all_proxy`/`ALL_PROXY` for both, a value without a scheme taken as
//! `http://`. `no_proxy`/`NO_PROXY` applies to an explicit proxy and to the
//! environment's alike.

use crate::config::proxy::{ProxySetting, ProxyUrl};

/// Why the proxy settings are unusable; names the variable or key, never
/// the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("backend.proxy {problem}")]
    Config { problem: String },
    #[error("the environment variable {var} = {shown:?} {problem}; fix or unset it, or set backend.proxy (\"none\" for direct)")]
    Environment {
        var: &'static str,
        shown: String,
        problem: String,
    },
}

/// The proxies and the bypass list every backend connection is routed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRoute {
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    no_proxy: super::NoProxy,
    /// Where the proxy came from, for logs and `/debug/actors`.
    source: &'static str,
}

impl EgressRoute {
    /// Always direct.
    pub fn direct() -> Self {
        Self::default()
    }

    /// From `backend.proxy` and this process's environment.
    pub fn from_config(proxy: &str) -> Result<Self, EgressError> {
        Self::resolve(proxy, |var| std::env::var(var).ok())
    }

    /// From `backend.proxy` and an environment given as a lookup.
    pub fn resolve(proxy: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, EgressError> {
        let read = |names: [&'static str; 2]| -> Option<(&'static str, String)> {
            names.into_iter().find_map(|name| {
                env(name)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
        };
        let no_proxy = read(["no_proxy", "NO_PROXY"])
            .map(|(_, list)| super::NoProxy::parse(&list))
            .unwrap_or_default();
        match ProxySetting::parse(proxy).map_err(|problem| EgressError::Config { problem })? {
            ProxySetting::Direct => Ok(Self {
                source: "backend.proxy = \"none\"",
                ..Self::default()
            }),
            ProxySetting::Url(url) => Ok(Self {
                https: Some(url.clone()),
                http: Some(url),
                no_proxy,
                source: "backend.proxy",
            }),
            ProxySetting::Environment => {
                let parse = |found: Option<(&'static str, String)>| -> Result<Option<ProxyUrl>, EgressError> {
                    let Some((var, value)) = found else {
                        return Ok(None);
                    };
                    let url = if value.contains("://") {
                        value.clone()
                    } else {
                        format!("http://{value}")
                    };
                    ProxyUrl::parse(&url).map(Some).map_err(|problem| EgressError::Environment {
                        var,
                        shown: crate::config::redact::redact_url_password(&value).unwrap_or(value),
                        problem,
                    })
                };
                let all = read(["all_proxy", "ALL_PROXY"]);
                let https = parse(read(["https_proxy", "HTTPS_PROXY"]).or_else(|| all.clone()))?;
                let http = parse(read(["http_proxy", "HTTP_PROXY"]).or(all))?;
                Ok(Self {
                    https,
                    http,
                    no_proxy,
                    source: "the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)",
                })
            }
        }
    }

    /// The proxy a connection to `host` takes (`tls`: the target is
    /// https/grpcs), or `None` for direct.
    pub fn proxy_for(&self, tls: bool, host: &str) -> Option<&ProxyUrl> {
        let proxy = if tls { &self.https } else { &self.http };
        proxy.as_ref().filter(|_| !self.no_proxy.matches(host))
    }

    /// Whether any proxy is configured at all.
    pub fn has_proxy(&self) -> bool {
        self.https.is_some() || self.http.is_some()
    }

    /// Where the settings came from.
    pub fn source(&self) -> &'static str {
        self.source
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn route(proxy: &str, env: &[(&str, &str)]) -> Result<EgressRoute, EgressError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EgressRoute::resolve(proxy, |var| env.get(var).cloned())
    }

    fn via(route: &EgressRoute, tls: bool, host: &str) -> Option<String> {
        route.proxy_for(tls, host).map(ProxyUrl::authority)
    }

    #[test]
    fn which_proxy_each_connection_takes() {
        let env = [
            ("HTTPS_PROXY", "http://tls-proxy:3128"),
            ("http_proxy", "plain-proxy:8080"),
            ("NO_PROXY", ".internal,10.0.0.0/8"),
        ];
        // (backend.proxy, env, tls, host, expected)
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            bool,
            &'a str,
            Option<&'a str>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "",
                &env,
                true,
                "backend.company.com",
                Some("tls-proxy:3128"),
            ),
            (
                "",
                &env,
                false,
                "backend.company.com",
                Some("plain-proxy:8080"),
            ),
            ("", &env, true, "backend.internal", None),
            ("", &env, true, "10.2.3.4", None),
            ("none", &env, true, "backend.company.com", None),
            (
                "http://explicit:3128",
                &env,
                true,
                "backend.company.com",
                Some("explicit:3128"),
            ),
            (
                "http://explicit:3128",
                &env,
                false,
                "backend.company.com",
                Some("explicit:3128"),
            ),
            // NO_PROXY applies to an explicit proxy too.
            ("http://explicit:3128", &env, true, "backend.internal", None),
            ("", &[], true, "backend.company.com", None),
            (
                "",
                &[("ALL_PROXY", "http://all:1")],
                true,
                "b",
                Some("all:1"),
            ),
            (
                "",
                &[("ALL_PROXY", "http://all:1")],
                false,
                "b",
                Some("all:1"),
            ),
            // Lowercase wins, as curl reads it.
            (
                "",
                &[
                    ("https_proxy", "http://lower:1"),
                    ("HTTPS_PROXY", "http://upper:2"),
                ],
                true,
                "b",
                Some("lower:1"),
            ),
            ("", &[("HTTPS_PROXY", "  ")], true, "b", None),
            (
                "",
                &[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")],
                true,
                "b",
                None,
            ),
        ];
        for (proxy, env, tls, host, expected) in rows {
            let route = route(proxy, env).unwrap();
            assert_eq!(
                via(&route, tls, host).as_deref(),
                expected,
                "backend.proxy {proxy:?}, env {env:?}, tls {tls}, host {host}"
            );
        }
    }

    #[test]
    fn bad_settings_name_their_source_and_hide_the_password() {
        let error = route("", &[("HTTPS_PROXY", "https://u:hunter2@p:3128")]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("HTTPS_PROXY"), "{text}");
        assert!(text.contains("not supported"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let error = route("http://p", &[]).unwrap_err().to_string();
        assert!(error.starts_with("backend.proxy has no port"), "{error}");
    }
}
