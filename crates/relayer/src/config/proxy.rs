//! `backend.proxy` as the config file writes it: `""` (the environment),
//! `"none"` (always direct) or `"http://[user:pass@]host:port"` (HTTP
//! CONNECT). Parsing lives here so the config check and the egress code
//! (`crate::egress`) read the same rules; the credentials are a [`Secret`]
//! from the moment they are parsed, and [`ProxyUrl`] prints only
//! [`ProxyUrl::redacted`].

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use consonant_secret::Secret;

/// What `backend.proxy` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `""`: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY, as curl reads them.
    Environment,
    /// `"none"`: always direct, whatever the environment says.
    Direct,
    /// An explicit proxy (NO_PROXY from the environment still applies).
    Url(ProxyUrl),
}

impl ProxySetting {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "" => Ok(Self::Environment),
            "none" => Ok(Self::Direct),
            url => ProxyUrl::parse(url).map(Self::Url),
        }
    }
}

/// An HTTP proxy to tunnel through with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    username: String,
    password: Secret,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl ProxyUrl {
    /// `http://[user[:pass]@]host:port[/]`; user and password may be
    /// percent-encoded. The error never repeats the password.
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some(rest) = value.strip_prefix("http://") else {
            let scheme = value.split_once("://").map(|(s, _)| s);
            return Err(match scheme {
                Some("https") => "is an https:// proxy: TLS to the proxy is not supported; use http://host:port (the tunnel to the backend is TLS end to end, the proxy sees only ciphertext)".into(),
                Some("socks5" | "socks5h" | "socks4") => "is a SOCKS proxy: only HTTP CONNECT proxies are supported (http://host:port)".into(),
                _ => "is not \"none\" or an http://[user:password@]host:port proxy URL".into(),
            });
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(
                "has a path, query or fragment: a proxy URL is http://[user:password@]host:port"
                    .into(),
            );
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (String::new(), String::new()),
            Some(userinfo) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (decode(user, "user")?, decode(pass, "password")?)
            }
        };
        let (host, port) = split_host_port(hostport)?;
        Ok(Self {
            host,
            port,
            username,
            password: Secret::new(password),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` to dial (IPv6 in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The URL with the password replaced by `***`: the only form that is
    /// ever logged or shown.
    pub fn redacted(&self) -> String {
        match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => format!("http://{}", self.authority()),
            (_, true) => format!("http://{}@{}", self.username, self.authority()),
            _ => format!("http://{}:***@{}", self.username, self.authority()),
        }
    }

    /// The `Proxy-Authorization` value (Basic), when the URL has a user.
    pub fn basic_auth(&self) -> Option<Secret> {
        if self.username.is_empty() {
            return None;
        }
        let credentials = format!("{}:{}", self.username, self.password.expose());
        Some(Secret::new(format!(
            "Basic {}",
            STANDARD.encode(credentials)
        )))
    }

    /// The user and password, for an HTTP client's own proxy settings
    /// (`register`'s reqwest). Never log them.
    pub fn expose_credentials(&self) -> Option<(&str, &str)> {
        (!self.username.is_empty()).then(|| (self.username.as_str(), self.password.expose()))
    }

    /// The URL with credentials, for an HTTP client that does its own
    /// CONNECT. Never log it.
    pub fn expose_url(&self) -> String {
        if self.username.is_empty() {
            return format!("http://{}", self.authority());
        }
        format!(
            "http://{}:{}@{}",
            encode(&self.username),
            encode(self.password.expose()),
            self.authority()
        )
    }
}

/// `host:port` with IPv6 hosts in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("has an IPv6 host without its closing ']'")?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("has no host: use http://host:port".into());
    }
    let Some(port) = port else {
        return Err("has no port: give the proxy's port, e.g. http://proxy.corp:3128".into());
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host.to_ascii_lowercase(), port)),
        _ => Err(format!("has port {port:?}: use a port from 1 to 65535")),
    }
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("has a {what} that is not UTF-8 once percent-decoded"))
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_urls() {
        assert_eq!(ProxySetting::parse(""), Ok(ProxySetting::Environment));
        assert_eq!(ProxySetting::parse("none"), Ok(ProxySetting::Direct));
        let ProxySetting::Url(url) = ProxySetting::parse("http://Proxy.Corp:3128/").unwrap() else {
            panic!()
        };
        assert_eq!(url.authority(), "proxy.corp:3128");
        assert_eq!(url.redacted(), "http://proxy.corp:3128");
        assert!(url.basic_auth().is_none());

        let url = ProxyUrl::parse("http://relay%40corp:p%3Ass@10.0.0.5:8080").unwrap();
        assert_eq!(url.redacted(), "http://relay@corp:***@10.0.0.5:8080");
        assert_eq!(format!("{url:?} {url}"), format!("{0} {0}", url.redacted()));
        // base64("relay@corp:p:ss")
        assert_eq!(
            url.basic_auth().unwrap().expose(),
            "Basic cmVsYXlAY29ycDpwOnNz"
        );
        assert_eq!(
            ProxyUrl::parse(&url.expose_url()).unwrap().basic_auth(),
            url.basic_auth()
        );
        let v6 = ProxyUrl::parse("http://[fd00::1]:3128").unwrap();
        assert_eq!(v6.authority(), "[fd00::1]:3128");
    }

    #[test]
    fn bad_proxies_say_what_to_write_and_never_echo_the_password() {
        let cases = [
            ("https://p:3128", "TLS to the proxy is not supported"),
            ("socks5://p:1080", "only HTTP CONNECT"),
            ("proxy.corp:3128", "is not \"none\""),
            ("http://p", "has no port"),
            ("http://u:hunter2@p", "has no port"),
            ("http://p:0", "port \"0\""),
            ("http://p:99999", "port \"99999\""),
            ("http://:3128", "has no host"),
            ("http://p:3128/path", "has a path"),
        ];
        for (value, expected) in cases {
            let error = ProxyUrl::parse(value).unwrap_err();
            assert!(error.contains(expected), "{value}: {error}");
            assert!(!error.contains("hunter2"), "{value}: {error}");
        }
    }
}
