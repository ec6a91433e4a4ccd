//! The syntax of the names a command carries, as Kubernetes defines them:
//! DNS-1123 labels and subdomains, `apiVersion` (`v1`, `group/version`),
//! kinds (canonical CamelCase) and label selectors. The `is_*` predicates and
//! parsers are pure; the `check_*` helpers wrap them into the
//! INVALID_ARGUMENT error that names the command's field, the bad value and
//! what is allowed.

use super::invalid;
use super::request::ApiVersion;
use crate::commands::outcome::CommandError;

// ------------------------------------------------------- fields and names

/// `field`'s apiVersion, parsed; the error names the field.
pub(super) fn api_version(field: &str, value: &str) -> Result<ApiVersion, CommandError> {
    parse_api_version(value).map_err(|why| {
        if value.is_empty() {
            invalid(format!(
                "{field} is empty: use \"v1\" for the core group or \"group/version\" such as \"apps/v1\""
            ))
        } else {
            invalid(format!("{field} {value:?} {why}"))
        }
    })
}

/// Parses `v1` or `group/version`; the error completes `"<field> <value> ..."`.
pub fn parse_api_version(value: &str) -> Result<ApiVersion, String> {
    const FORM: &str = "use \"v1\" for the core group or \"group/version\" such as \"apps/v1\"";
    let (group, version) = match value.split_once('/') {
        None => ("", value),
        Some((group, version)) => (group, version),
    };
    if version.is_empty() || version.contains('/') || !is_label(version) {
        return Err(format!("is not an API version: {FORM}"));
    }
    if !group.is_empty() || value.contains('/') {
        if group == "core" {
            return Err("names the core group, which has no name: use \"v1\"".to_string());
        }
        if !is_subdomain(group) {
            return Err(format!("has an invalid group {group:?}: {FORM}"));
        }
    }
    Ok(ApiVersion {
        group: group.to_string(),
        version: version.to_string(),
    })
}

/// Kinds are matched case-sensitively by the policy, so only the canonical
/// CamelCase form is accepted: "secret" must not slip past a "Secret" rule.
pub(super) fn check_kind(field: &str, kind: &str) -> Result<(), CommandError> {
    if kind.is_empty() {
        return Err(invalid(format!(
            "{field} is empty: name the kind, such as \"Deployment\""
        )));
    }
    if !is_kind(kind) {
        return Err(invalid(format!(
            "{field} {kind:?} is not a kind: use the CamelCase kind as in the object's \"kind\" field, such as \"Deployment\""
        )));
    }
    Ok(())
}

pub(crate) fn is_kind(kind: &str) -> bool {
    kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric())
}

pub(super) fn optional_label(field: &str, value: &str) -> Result<Option<String>, CommandError> {
    if value.is_empty() {
        return Ok(None);
    }
    check_label(field, value)?;
    Ok(Some(value.to_string()))
}

pub(super) fn check_label(field: &str, value: &str) -> Result<(), CommandError> {
    if is_label(value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {value:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )))
    }
}

pub(super) fn check_subdomain(field: &str, value: &str) -> Result<(), CommandError> {
    if is_subdomain(value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} {value:?} is not a DNS-1123 subdomain: use at most 253 lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit"
        )))
    }
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels (each without the 63 limit), at most 253.
pub fn is_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

// ---------------------------------------------------------------- selectors

/// Checks that a label selector is plausible, as Kubernetes would parse it:
/// comma-separated requirements `key`, `!key`, `key=v`, `key==v`, `key!=v`,
/// `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`. The error completes
/// `"... is not a label selector: <why>"`.
pub fn label_selector(selector: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("')' at position {} has no matching '('", i + 1));
                }
            }
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '(' is never closed".to_string());
    }
    parts.push(&selector[start..]);
    for part in parts {
        requirement(part.trim())?;
    }
    Ok(())
}

fn requirement(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("it has an empty requirement (a stray comma)".to_string());
    }
    if let Some(key) = part.strip_prefix('!') {
        return selector_key(key.trim(), part);
    }
    let key_end = part
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>' | '(' | ')'))
        .unwrap_or(part.len());
    let (key, rest) = part.split_at(key_end);
    selector_key(key, part)?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Ok(()); // `key`: exists
    }
    for op in ["==", "!=", "=", ">", "<"] {
        if let Some(value) = rest.strip_prefix(op) {
            let value = value.trim();
            if value.is_empty() {
                return Err(format!(
                    "{part:?} has no value after {op:?}: write key{op}value"
                ));
            }
            if matches!(op, ">" | "<") && value.parse::<i64>().is_err() {
                return Err(format!(
                    "{part:?} compares with {value:?}, which is not an integer"
                ));
            }
            return selector_value(value, part);
        }
    }
    let (word, set) = rest.split_at(rest.find(['(', ' ', '\t']).unwrap_or(rest.len()));
    if word != "in" && word != "notin" {
        return Err(format!(
            "{part:?} has no operator after the key: use =, ==, !=, in (...), notin (...), or the key alone"
        ));
    }
    let set = set.trim();
    let Some(inner) = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')) else {
        return Err(format!(
            "{part:?} needs a parenthesised set after {word:?}, such as (a,b)"
        ));
    };
    if inner.contains(['(', ')']) {
        return Err(format!("{part:?} has nested parentheses"));
    }
    for value in inner.split(',') {
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{part:?} has an empty value in its set"));
        }
        selector_value(value, part)?;
    }
    Ok(())
}

fn selector_key(key: &str, part: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_subdomain(p)) || !is_label_name(name) {
        return Err(format!(
            "{part:?} has an invalid key {key:?}: use an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn selector_value(value: &str, part: &str) -> Result<(), String> {
    if is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{part:?} has an invalid value {value:?}: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A label name or value: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
fn is_label_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::validate::testing::check_outcome;

    #[test]
    fn dns_names() {
        fn check(value: &str, label: bool, subdomain: bool) {
            assert_eq!(is_label(value), label, "label {value:?}");
            assert_eq!(is_subdomain(value), subdomain, "subdomain {value:?}");
        }
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_sub = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let too_long_sub = format!("{long_sub}e");
        let table: &[(&str, bool, bool)] = &[
            ("web", true, true),
            ("web-1", true, true),
            ("0web", true, true),
            ("web.example.com", false, true),
            ("", false, false),
            ("-web", false, false),
            ("web-", false, false),
            ("Web", false, false),
            ("web_1", false, false),
            ("web..x", false, false),
            ("web.-x", false, false),
            (".web", false, false),
            (&long_label, true, true),
            (&too_long_label, false, true),
            (&long_sub, false, true),
            (&too_long_sub, false, false),
        ];
        for &(value, label, subdomain) in table {
            check(value, label, subdomain);
        }
    }

    /// (group, version)
    type GroupVersion = (&'static str, &'static str);

    #[test]
    fn api_versions() {
        fn check(input: &str, expected: Result<GroupVersion, &str>) {
            let got = parse_api_version(input).map(|v| {
                let text = v.to_string();
                assert_eq!(text, input, "round trip");
                (v.group, v.version)
            });
            let expected = expected.map(|(g, v)| (g.to_string(), v.to_string()));
            check_outcome(input, got, expected);
        }
        let table: &[(&str, Result<GroupVersion, &str>)] = &[
            ("v1", Ok(("", "v1"))),
            ("apps/v1", Ok(("apps", "v1"))),
            ("kagent.dev/v1alpha2", Ok(("kagent.dev", "v1alpha2"))),
            ("", Err("is not an API version")),
            ("apps/", Err("is not an API version")),
            ("/v1", Err("invalid group \"\"")),
            ("apps/v1/x", Err("is not an API version")),
            ("Apps/v1", Err("invalid group \"Apps\"")),
            ("core/v1", Err("use \"v1\"")),
            ("V1", Err("is not an API version")),
        ];
        for &(input, expected) in table {
            check(input, expected);
        }
    }

    #[test]
    fn label_selectors() {
        fn check(selector: &str, expected: Result<(), &str>) {
            check_outcome(selector, label_selector(selector), expected);
        }
        let table: &[(&str, Result<(), &str>)] = &[
            ("app=web", Ok(())),
            ("app==web", Ok(())),
            ("app!=web", Ok(())),
            ("app", Ok(())),
            ("!app", Ok(())),
            ("app.kubernetes.io/name=web, tier in (front,back)", Ok(())),
            ("tier notin (a, b),env", Ok(())),
            ("tier in(a)", Ok(())),
            ("replicas>2", Ok(())),
            ("app = web , tier", Ok(())),
            ("example.com/app_name=v_1.2", Ok(())),
            ("app==", Err("\"app==\" has no value after \"==\"")),
            ("app=", Err("no value after \"=\"")),
            ("a,,b", Err("empty requirement")),
            ("a,", Err("empty requirement")),
            ("tier in (a,b", Err("never closed")),
            ("tier in a,b)", Err("no matching '('")),
            ("tier in ((a))", Err("nested parentheses")),
            ("tier in (a,)", Err("empty value in its set")),
            ("tier in", Err("needs a parenthesised set")),
            ("tier within (a)", Err("no operator after the key")),
            ("app===web", Err("invalid value \"=web\"")),
            ("app=we b", Err("invalid value")),
            ("-app=web", Err("invalid key \"-app\"")),
            ("Bad_Prefix/app=web", Err("invalid key")),
            ("replicas>two", Err("not an integer")),
        ];
        for &(input, expected) in table {
            check(input, expected);
        }
    }
}
