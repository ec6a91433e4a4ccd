//! Label and field selectors: parsing the query-string syntax and matching
//! objects against it.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses `a=b,c!=d,e in (x,y),!f,g`. An empty string matches all.
    pub(crate) fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_top_level(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_term(term)?);
        }
        Ok(Selector { requirements })
    }

    /// Matches against a lookup function (a label map or object fields).
    pub(crate) fn matches_with(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }

    /// Matches an object's `metadata.labels`.
    pub(crate) fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches_with(|k| labels.get(k).and_then(Value::as_str).map(str::to_string))
    }

    /// Matches an object's fields by dotted path (`metadata.name`,
    /// `status.phase`, `spec.nodeName`), as a field selector.
    pub(crate) fn matches_fields(&self, object: &Value) -> bool {
        self.matches_with(|path| {
            let mut cur = object;
            for part in path.split('.') {
                cur = cur.get(part)?;
            }
            match cur {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        })
    }
}

fn split_top_level(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn parse_set(key: &str, rest: &str, term: &str) -> Result<(String, Vec<String>), String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement {term:?}: expected a (value,...) set")
        })?;
    let values = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    Ok((check_key(key, term)?, values))
}

fn check_key(key: &str, term: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!(
            "unable to parse requirement {term:?}: invalid label key {key:?}"
        ));
    }
    Ok(key.to_string())
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key, term)?));
    }
    if let Some((key, rest)) = term.split_once(" notin ") {
        let (k, v) = parse_set(key, rest, term)?;
        return Ok(Requirement::NotIn(k, v));
    }
    if let Some((key, rest)) = term.split_once(" in ") {
        let (k, v) = parse_set(key, rest, term)?;
        return Ok(Requirement::In(k, v));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            check_key(key, term)?,
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            check_key(key, term)?,
            value.trim().to_string(),
        ));
    }
    Ok(Requirement::Exists(check_key(term, term)?))
}

/// Renders `matchLabels` as a selector string (`a=b,c=d`), as the scale
/// subresource reports it.
pub(crate) fn match_labels_string(match_labels: &Value) -> String {
    match_labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(selector: &str, labels: Value, expected: bool) {
        let s = Selector::parse(selector).unwrap();
        let obj = json!({"metadata": {"labels": labels}});
        assert_eq!(s.matches_labels(&obj), expected, "{selector} against {obj}");
    }

    #[test]
    fn selector_syntax() {
        check("", json!({}), true);
        check("app=web", json!({"app": "web"}), true);
        check("app==web", json!({"app": "web"}), true);
        check("app=web", json!({"app": "db"}), false);
        check("app!=web", json!({}), true);
        check("app!=web", json!({"app": "web"}), false);
        check("tier in (a, b)", json!({"tier": "b"}), true);
        check("tier in (a,b)", json!({}), false);
        check("tier notin (a,b)", json!({}), true);
        check("tier notin (a,b)", json!({"tier": "a"}), false);
        check("!canary", json!({"app": "web"}), true);
        check("!canary", json!({"canary": "yes"}), false);
        check("app", json!({"app": ""}), true);
        check(
            "app=web,tier in (a,b),!canary",
            json!({"app": "web", "tier": "a"}),
            true,
        );
        check(
            "app=web,tier in (a,b),!canary",
            json!({"app": "web", "tier": "c"}),
            false,
        );
    }

    #[test]
    fn field_selector_and_errors() {
        let s = Selector::parse("metadata.name=x,status.phase!=Failed").unwrap();
        assert!(
            s.matches_fields(&json!({"metadata": {"name": "x"}, "status": {"phase": "Running"}}))
        );
        assert!(!s.matches_fields(&json!({"metadata": {"name": "y"}})));
        assert!(Selector::parse("a in b").is_err());
        assert_eq!(
            match_labels_string(&json!({"app": "web", "tier": "a"})),
            "app=web,tier=a"
        );
    }
}
