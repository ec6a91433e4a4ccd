//! Apply manifests: splitting a multi-document YAML or JSON manifest at its
//! `---` / `...` markers, parsing each document, and checking the fields
//! server-side apply needs (apiVersion, kind, metadata.name,
//! metadata.namespace). Errors name the document (1-based) and its line in
//! the whole manifest. Values are kept untouched, as JSON. Each document's
//! nodes are counted against the manifest's [`NodeBudget`] before it is
//! built.

use super::grammar::{is_kind, is_label, parse_api_version};
use super::invalid;
use super::node_budget::NodeBudget;
use super::request::ManifestObject;
use crate::commands::outcome::CommandError;

/// One document's text and where it starts in the manifest.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the chunk's first line.
    first_line: usize,
}

/// Splits a manifest at document markers. A `---` line starts the next chunk
/// (so the chunk parses as an explicit document and its line numbers map
/// back with one offset); a `...` line ends the current one. Markers only
/// count at column 0, where YAML forbids content, so a block scalar cannot
/// contain one.
fn split_documents(manifest: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (number, line) in manifest.split_inclusive('\n').enumerate() {
        let number = number + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = |marker: &str| {
            bare == marker
                || bare
                    .strip_prefix(marker)
                    .is_some_and(|rest| rest.starts_with([' ', '\t']))
        };
        if is_marker("---") && offset > start {
            chunks.push(Chunk {
                text: &manifest[start..offset],
                first_line,
            });
            start = offset;
            first_line = number;
        }
        offset += line.len();
        if is_marker("...") {
            chunks.push(Chunk {
                text: &manifest[start..offset],
                first_line,
            });
            start = offset;
            first_line = number + 1;
        }
    }
    if offset > start {
        chunks.push(Chunk {
            text: &manifest[start..offset],
            first_line,
        });
    }
    chunks
}

/// The 1-based manifest line of a chunk's first content line, or `None` if
/// the chunk holds only markers, directives, comments and blank lines.
fn content_line(chunk: &Chunk<'_>) -> Option<usize> {
    chunk.text.lines().enumerate().find_map(|(i, line)| {
        let line = line.trim();
        let line = line
            .strip_prefix("---")
            .map(str::trim_start)
            .unwrap_or(line);
        let empty =
            line.is_empty() || line.starts_with('#') || line.starts_with('%') || line == "...";
        (!empty).then_some(chunk.first_line + i)
    })
}

pub(super) fn parse_manifest(
    manifest: &[u8],
    max_bytes: usize,
    default_namespace: Option<&str>,
) -> Result<Vec<ManifestObject>, CommandError> {
    if manifest.is_empty() {
        return Err(invalid(
            "apply.manifest is empty: send one or more YAML or JSON documents".to_string(),
        ));
    }
    if manifest.len() > max_bytes {
        return Err(invalid(format!(
            "apply.manifest is {} bytes, more than the {max_bytes} allowed: split it into several apply commands",
            manifest.len()
        )));
    }
    let manifest = std::str::from_utf8(manifest).map_err(|e| {
        invalid(format!(
            "apply.manifest is not valid UTF-8 (at byte {}): send YAML or JSON text",
            e.valid_up_to()
        ))
    })?;

    // Counted before each document is built: an alias bomb is refused
    // without being expanded (see `node_budget`).
    let budget = NodeBudget::for_manifest(manifest.len());
    let mut objects = Vec::new();
    let mut index = 0;
    // Directive lines (`%YAML 1.2`) belong to the document after them.
    let mut pending: Option<Chunk<'_>> = None;
    for chunk in split_documents(manifest) {
        let chunk = match pending.take() {
            Some(prev) => Chunk {
                text: &manifest[offset_of(manifest, prev.text)
                    ..offset_of(manifest, chunk.text) + chunk.text.len()],
                first_line: prev.first_line,
            },
            None => chunk,
        };
        let Some(line) = content_line(&chunk) else {
            if chunk.text.lines().any(|l| l.trim_start().starts_with('%')) {
                pending = Some(chunk);
            }
            continue;
        };
        index += 1;
        budget.count_document(chunk.text).map_err(|over| {
            invalid(format!(
                "apply.manifest document {index} (line {line}): {}",
                over.describe()
            ))
        })?;
        if let Some(object) = parse_document(&chunk, index, line, default_namespace)? {
            objects.push(object);
        } else {
            // `null` or `~` as a whole document: nothing to apply.
            index -= 1;
        }
    }
    if objects.is_empty() {
        return Err(invalid(
            "apply.manifest has no documents, only comments or empty documents: send at least one object".to_string(),
        ));
    }
    Ok(objects)
}

/// Byte offset of `part` (a subslice) within `whole`.
fn offset_of(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

fn parse_document(
    chunk: &Chunk<'_>,
    index: usize,
    line: usize,
    default_namespace: Option<&str>,
) -> Result<Option<ManifestObject>, CommandError> {
    let at = |line: usize| format!("apply.manifest document {index} (line {line})");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(chunk.text).map_err(|e| {
        // The error's line is within the chunk; report it within the
        // manifest. At the end of input the parser can place the error a
        // line past the text (found by fuzzing): cite the line where the
        // text ends instead.
        let last_line = chunk.first_line + chunk.text.matches('\n').count();
        let line = e
            .location()
            .map(|loc| (chunk.first_line + loc.line().saturating_sub(1)).min(last_line))
            .unwrap_or(line);
        invalid(format!("{}: {}", at(line), yaml_problem(&e)))
    })?;
    let mut yaml = yaml;
    // Kubernetes' own YAML reader honours merge keys (`<<: *base`).
    yaml.apply_merge()
        .map_err(|e| invalid(format!("{}: {}", at(line), yaml_problem(&e))))?;
    if yaml.is_null() {
        return Ok(None);
    }
    let value = serde_json::to_value(&yaml).map_err(|e| {
        invalid(format!(
            "{}: cannot be represented as JSON ({e}): use string keys and plain values",
            at(line)
        ))
    })?;
    let Some(map) = value.as_object() else {
        return Err(invalid(format!(
            "{} is a {}, not an object: each document must be a mapping with apiVersion, kind and metadata.name",
            at(line),
            json_type(&value)
        )));
    };
    let field = |name: &str| -> Result<&str, CommandError> {
        match map.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
            Some(serde_json::Value::String(_)) | None => Err(invalid(format!(
                "{} has no {name}: each object needs apiVersion, kind and metadata.name",
                at(line)
            ))),
            Some(other) => Err(invalid(format!(
                "{} has a {} as {name}: it must be a string",
                at(line),
                json_type(other)
            ))),
        }
    };
    let api_version_text = field("apiVersion")?;
    let api_version = parse_api_version(api_version_text).map_err(|why| {
        invalid(format!(
            "{} apiVersion {api_version_text:?} {why}",
            at(line)
        ))
    })?;
    let kind = field("kind")?;
    if !is_kind(kind) {
        return Err(invalid(format!(
            "{} kind {kind:?} is not a kind: use the CamelCase kind, such as \"Deployment\"",
            at(line)
        )));
    }
    let metadata = match map.get("metadata") {
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => {
            return Err(invalid(format!(
                "{} has a {} as metadata: it must be a mapping with a name",
                at(line),
                json_type(other)
            )))
        }
        None => {
            return Err(invalid(format!(
                "{} has no metadata: each object needs metadata.name",
                at(line)
            )))
        }
    };
    let name = match metadata.get("name") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => {
            return Err(invalid(format!(
                "{} ({kind}) has no metadata.name: server-side apply needs a name (generateName is not supported)",
                at(line)
            )))
        }
    };
    // Names are path segments; many kinds allow more than DNS names (e.g. "system:x"
    // for RBAC), so only what can never be a path segment is refused here.
    if name == "." || name == ".." || name.contains(['/', '%']) || name.len() > 253 {
        return Err(invalid(format!(
            "{} metadata.name {name:?} cannot be an object name: avoid '/', '%', \".\" and \"..\" and keep it to 253 characters",
            at(line)
        )));
    }
    let (namespace, namespace_in_manifest) = match metadata.get("namespace") {
        None | Some(serde_json::Value::Null) => (default_namespace.map(str::to_string), false),
        Some(serde_json::Value::String(ns)) if ns.is_empty() => {
            (default_namespace.map(str::to_string), false)
        }
        Some(serde_json::Value::String(ns)) => {
            if !is_label(ns) {
                return Err(invalid(format!(
                    "{} metadata.namespace {ns:?} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-'",
                    at(line)
                )));
            }
            (Some(ns.clone()), true)
        }
        Some(other) => {
            return Err(invalid(format!(
                "{} has a {} as metadata.namespace: it must be a string",
                at(line),
                json_type(other)
            )))
        }
    };
    Ok(Some(ManifestObject {
        index,
        line,
        api_version,
        kind: kind.to_string(),
        name: name.to_string(),
        namespace,
        namespace_in_manifest,
        value,
    }))
}

/// The parser's message without its position, which is relative to the
/// document and would mislead; the caller adds the manifest line.
fn yaml_problem(error: &serde_yaml_ng::Error) -> String {
    let text = error.to_string();
    match text
        .find(" at line ")
        .or_else(|| text.find(" at position "))
    {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "mapping",
    }
}

#[cfg(test)]
mod tests {
    use crate::commands::validate::testing::{check_outcome, run};
    use crate::commands::validate::{KubeRequest, ValidatedCommand};
    use crate::proto::{command::Action, ApplyManifest};

    /// (index, line, kind, name, namespace, namespace_in_manifest) per object.
    type Summary = (
        usize,
        usize,
        &'static str,
        &'static str,
        Option<&'static str>,
        bool,
    );

    /// Objects expected from a manifest, or part of the error message.
    type ManifestCase = Result<&'static [Summary], &'static str>;

    #[test]
    fn manifests() {
        fn check(manifest: &str, namespace: &str, expected: Result<&[Summary], &str>) {
            let got = run(Action::Apply(ApplyManifest {
                manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
                namespace: namespace.into(),
                dry_run: false,
                force: false,
            }))
            .map(|v| match v {
                ValidatedCommand::Kube(KubeRequest::Apply(plan)) => plan
                    .objects
                    .iter()
                    .map(|o| {
                        (
                            o.index,
                            o.line,
                            o.kind.clone(),
                            o.name.clone(),
                            o.namespace.clone(),
                            o.namespace_in_manifest,
                        )
                    })
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            });
            let expected = expected.map(|objects| {
                objects
                    .iter()
                    .map(|&(i, l, k, n, ns, m)| {
                        (
                            i,
                            l,
                            k.to_string(),
                            n.to_string(),
                            ns.map(str::to_string),
                            m,
                        )
                    })
                    .collect::<Vec<_>>()
            });
            check_outcome(manifest, got, expected);
        }
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n";
        let two = format!("{cm}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: web\n");
        let leading = format!("# generated\n---\n{cm}---\n---\n# only a comment\n");
        let broken = format!(
            "{cm}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  bad: a: b\n"
        );
        let json = r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "web"}}"#;
        let directive = format!("%YAML 1.2\n---\n{cm}");
        let merge = "base: &b\n  name: m\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  <<: {name: merged}\n";
        let too_big = format!("{cm}data:\n  blob: {}\n", "x".repeat(5000));
        // 600 items aliased 600 times: 3 KB of text, 360,000 nodes.
        let bomb = format!(
            "{cm}---\na: &a [{}]\nb: [{}]\n",
            vec!["x"; 600].join(","),
            vec!["*a"; 600].join(",")
        );
        let table: Vec<(&str, &str, ManifestCase)> = vec![
            (cm, "", Ok(&[(1, 1, "ConfigMap", "settings", None, false)])),
            (cm, "web", Ok(&[(1, 1, "ConfigMap", "settings", Some("web"), false)])),
            (
                &two,
                "dflt",
                Ok(&[
                    (1, 1, "ConfigMap", "settings", Some("dflt"), false),
                    (2, 6, "Deployment", "api", Some("web"), true),
                ]),
            ),
            (&leading, "", Ok(&[(1, 3, "ConfigMap", "settings", None, false)])),
            (json, "", Ok(&[(1, 1, "Secret", "db", Some("web"), true)])),
            (&directive, "", Ok(&[(1, 3, "ConfigMap", "settings", None, false)])),
            ("--- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n", "", Ok(&[(1, 1, "ConfigMap", "a", None, false)])),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n...\n---\nnull\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
                "",
                Ok(&[(1, 1, "ConfigMap", "a", None, false), (2, 8, "ConfigMap", "b", None, false)]),
            ),
            (
                "apiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: a}\r\n--- # next\r\napiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: b}\r\n",
                "",
                Ok(&[
                    (1, 1, "ConfigMap", "a", None, false),
                    (2, 5, "ConfigMap", "b", None, false),
                ]),
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  script: |\n    echo ---\n    ---x\n",
                "",
                Ok(&[(1, 1, "ConfigMap", "a", None, false)]),
            ),
            ("", "", Err("apply.manifest is empty")),
            ("---\n# nothing\n---\n", "", Err("has no documents")),
            (&too_big, "", Err("more than the 4096 allowed")),
            (&bomb, "", Err("apply.manifest document 2 (line 6): its YAML aliases expand to more than")),
            (&broken, "", Err("apply.manifest document 2 (line 10): mapping values are not allowed")),
            ("a: [1, 2\n", "", Err("apply.manifest document 1 (line 2)")),
            // Fuzzing found the parser citing line 3 of this two-line manifest.
            ("apiVersion: v1\nkin{d:\"", "", Err("apply.manifest document 1 (line 2)")),
            ("- a\n- b\n", "", Err("document 1 (line 1) is a list, not an object")),
            ("just text\n", "", Err("document 1 (line 1) is a string, not an object")),
            ("kind: ConfigMap\nmetadata: {name: a}\n", "", Err("document 1 (line 1) has no apiVersion")),
            ("apiVersion: v1\nmetadata: {name: a}\n", "", Err("has no kind")),
            ("apiVersion: v1\nkind: 3\nmetadata: {name: a}\n", "", Err("has a number as kind")),
            ("apiVersion: v1\nkind: ConfigMap\n", "", Err("has no metadata")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: a-}\n", "", Err("(ConfigMap) has no metadata.name")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a/b}\n", "", Err("metadata.name \"a/b\" cannot be an object name")),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: Web}\n", "", Err("metadata.namespace \"Web\" is not a DNS-1123 label")),
            ("apiVersion: apps/v1/x\nkind: ConfigMap\nmetadata: {name: a}\n", "", Err("apiVersion \"apps/v1/x\" is not an API version")),
            ("apiVersion: v1\nkind: configMap\nmetadata: {name: a}\n", "", Err("kind \"configMap\" is not a kind")),
            ("apiVersion: v1\nkind: ConfigMap\nkind: Secret\nmetadata: {name: a}\n", "", Err("document 1 (line 1): duplicate entry with key \"kind\"")),
            (cm, "Web", Err("apply.namespace \"Web\" is not a DNS-1123 label")),
        ];
        for (manifest, namespace, expected) in table {
            check(manifest, namespace, expected);
        }
        // Merge keys resolve as in Kubernetes; the first document has no kind.
        check(merge, "", Err("document 1 (line 1) has no apiVersion"));
        let merged = &merge[merge.find("apiVersion").unwrap()..];
        check(
            merged,
            "",
            Ok(&[(1, 1, "ConfigMap", "merged", None, false)]),
        );
    }

    #[test]
    fn manifest_errors_are_not_utf8_safe_panics() {
        let got = run(Action::Apply(ApplyManifest {
            manifest: bytes::Bytes::from_static(b"apiVersion: v1\n\xff\n"),
            ..Default::default()
        }));
        check_outcome("invalid utf-8", got, Err("not valid UTF-8 (at byte 15)"));
    }

    #[test]
    fn manifest_values_are_kept_untouched() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  n: \"1\"\n  flag: \"true\"\n";
        let Ok(ValidatedCommand::Kube(KubeRequest::Apply(plan))) =
            run(Action::Apply(ApplyManifest {
                manifest: bytes::Bytes::copy_from_slice(manifest.as_bytes()),
                namespace: "web".into(),
                ..Default::default()
            }))
        else {
            panic!("valid manifest refused");
        };
        assert_eq!(
            plan.objects[0].value,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a"}, "data": {"n": "1", "flag": "true"}})
        );
        assert_eq!(plan.default_namespace.as_deref(), Some("web"));
    }
}
