//! The relayer crate's import graph, read from its sources: arrows between
//! its top-level modules only point down the layers `actors.md` lists, and
//! no module imports back into a module that imports it (no circle at file
//! level). Test modules (`#[cfg(test)] mod tests`) are left out: a test may
//! build whatever it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → layer. A module may import only from lower layers
/// (and from itself). Keep in step with the code map in actors.md.
const LAYERS: &[(&str, u8)] = &[
    // Neutral helpers: no arrow out of the crate's own modules.
    ("backoff", 0),
    ("clock", 0),
    ("error_chain", 0),
    ("logging", 0),
    ("metrics", 0),
    ("config", 0),
    ("tls", 1),
    // Which proxy a connection takes, and the CONNECT handshake.
    ("egress", 1),
    // Plain data and decisions; the credential store; supervision.
    ("commands", 1),
    ("credentials", 1),
    ("supervisor", 1),
    // The key holders' tools (keygen, sign): files and JSON over the lock's
    // formats.
    ("keytool", 1),
    // I/O edges below the actors.
    ("kube", 2),
    ("connection", 2),
    ("observability", 2),
    ("watch", 2),
    ("telemetry", 3),
    ("register", 3),
    // The actors, then what serves and assembles them.
    ("actors", 4),
    ("http", 5),
    ("relayer", 6),
    ("cli", 7),
    // Fuzz harnesses (feature `fuzzing`): drive commands, config and
    // telemetry (and later the session and router) from outside.
    ("fuzzing", 7),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every source file as its module path (`actors::context`) and text
/// without test modules and comment lines.
fn modules() -> BTreeMap<String, Source> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .split("#[cfg(test)]\npub(crate) mod testing")
                .next()
                .unwrap()
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(parts.join("::"), Source { code });
        }
    }
    out
}

struct Source {
    code: String,
}

/// The `crate::a::b…` paths a module names, and its `super::…` paths made
/// absolute (a module's `super` is its parent module, whatever its file).
fn crate_paths(module: &str, source: &Source) -> Vec<Vec<String>> {
    let mut parent: Vec<String> = module.split("::").map(String::from).collect();
    parent.pop();
    let mut paths = relative_paths(&source.code, "crate::");
    for path in relative_paths(&source.code, "super::") {
        let mut absolute = parent.clone();
        absolute.extend(path);
        paths.push(absolute);
    }
    paths
}

fn relative_paths(code: &str, prefix: &str) -> Vec<Vec<String>> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            // Not `consonant_relayer_crate::`-like identifiers.
            code[..*at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
        .map(|(at, _)| {
            code[at + prefix.len()..]
                .split("::")
                .map(|part| {
                    part.chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|part| !part.is_empty())
                .collect()
        })
        .filter(|path: &Vec<String>| !path.is_empty())
        .collect()
}

/// The longest known module a path names.
fn resolve(modules: &BTreeMap<String, Source>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    modules
        .iter()
        .map(|(module, source)| {
            let deps = crate_paths(module, source)
                .iter()
                .filter_map(|path| resolve(&modules, path))
                .filter(|dep| dep != module)
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn arrows_between_top_level_modules_point_down_the_layers() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut upward = Vec::new();
    for (module, deps) in edges() {
        if module.is_empty() {
            continue; // lib.rs / main.rs
        }
        let from = top(&module);
        let Some(&from_layer) = layers.get(from) else {
            panic!("module {from} has no layer in tests/architecture.rs (and actors.md)");
        };
        for dep in deps {
            let to = top(&dep);
            if to == from || dep.is_empty() {
                continue;
            }
            let to_layer = layers[to];
            if to_layer >= from_layer {
                upward.push(format!(
                    "{module} (layer {from_layer}) imports {dep} (layer {to_layer})"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "arrows not pointing down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_circle_between_files() {
    let edges = edges();
    // Depth-first search for a back edge; prints the circle it finds.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for dep in edges.get(node).into_iter().flatten() {
            // A folder's mod.rs re-exporting its own children is not a circle.
            if dep.starts_with(&format!("{node}::")) {
                continue;
            }
            if let Some(circle) = visit(dep, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_real_imports() {
    // Guards the two tests above against reading nothing.
    let edges = edges();
    assert!(edges.len() > 50, "{} modules", edges.len());
    assert!(edges["actors::context"].contains("actors::directory"));
    assert!(edges["connection::session"].contains("connection::messages"));
    assert!(!edges["connection::session"]
        .iter()
        .any(|dep| dep.starts_with("actors")));
}
