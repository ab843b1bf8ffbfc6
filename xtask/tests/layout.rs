//! The layout a reader relies on: within each crate, no two files import each other, directly
//! or around a circle, so every file can be read after the files it uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every module file of a crate's `src/` (binaries under `src/bin/` left out), by module path:
/// `ops/gemv.rs` is `ops::gemv`, `lib.rs` the empty path.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    out
}

/// The code of a file that is compiled into the library: comments (doc links are not imports)
/// and the unit tests at the end left out.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The paths a file names below `crate::` or `super::`, as module paths relative to the crate.
fn references(module: &str, code: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect::<String>();
    let mut out = Vec::new();
    for (marker, base) in [("crate::", String::new()), ("super::", module.rsplit_once("::").map_or(String::new(), |(parent, _)| parent.to_string()))] {
        let mut rest = code;
        while let Some(i) = rest.find(marker) {
            let before = rest[..i].chars().last();
            rest = &rest[i + marker.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let join = |path: &str| if base.is_empty() { path.to_string() } else { format!("{base}::{path}") };
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::B, c};`: each item of the group.
                let group = &group[..group.find("};").unwrap_or(group.len())];
                out.extend(group.split(',').map(|item| join(&ident(item.trim()))));
            } else {
                out.push(join(&ident(rest)));
            }
        }
    }
    out
}

/// The module a path lands in: its longest prefix that is a module of the crate.
fn owner<'a>(path: &str, mods: &'a BTreeMap<String, PathBuf>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len()).rev().find_map(|n| mods.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

/// Circles in `edges`: each strongly connected set of more than one module.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one circle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = edges.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in edges.keys() {
        if done.contains(m) || !reaches[m].contains(m) {
            continue;
        }
        let circle: Vec<String> = reaches[m].iter().filter(|o| reaches[*o].contains(m)).cloned().collect();
        done.extend(circle.iter().cloned());
        out.push(circle);
    }
    out
}

fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &mods {
        let text = code(&std::fs::read_to_string(path).unwrap());
        let uses = edges.entry(module.clone()).or_default();
        for r in references(module, &text) {
            if let Some(target) = owner(&r, &mods) {
                // The crate root and a module's own parents hold `mod` declarations, not imports.
                if !target.is_empty() && target != module && !module.starts_with(&format!("{target}::")) {
                    uses.insert(target.to_string());
                }
            }
        }
    }
    edges
}

#[test]
fn no_file_imports_around_a_circle() {
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(root().join("crates")).unwrap().map(|e| e.unwrap().path().join("src")).collect();
    srcs.push(root().join("xtask/src"));
    srcs.sort();
    let mut found = Vec::new();
    for src in &srcs {
        for circle in circles(&import_graph(src)) {
            found.push(format!("{}: {}", src.strip_prefix(root()).unwrap().display(), circle.join(" <-> ")));
        }
    }
    assert!(srcs.len() >= 9, "{srcs:?}");
    assert!(found.is_empty(), "files importing each other:\n{}", found.join("\n"));
}

/// The detector itself, on a made-up crate with one circle.
#[test]
fn a_circle_is_found_and_a_chain_is_not() {
    let refs = references("ops::gemv", "use crate::model::Model;\nuse super::matmul::x;\nuse crate::{a::B, c};\nlet y = my_crate::z;");
    assert_eq!(refs, ["model::Model", "a::B", "c", "ops::matmul::x"]);
    let edges = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(circles(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])), [vec!["a".to_string(), "b".into(), "c".into()]]);
    assert!(circles(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
}
