//! Redacting a URL's password for display: the one rule `check-config`,
//! config errors and the egress messages share.

/// `https://user:pass@host` → `https://user:***@host`.
pub fn redact_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:***@{host}{tail}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_password_goes() {
        assert_eq!(
            super::redact_url_password("http://u:pw@proxy:3128/x").as_deref(),
            Some("http://u:***@proxy:3128/x")
        );
        assert_eq!(super::redact_url_password("http://u@proxy:3128"), None);
        assert_eq!(super::redact_url_password("http://proxy:3128"), None);
    }
}
