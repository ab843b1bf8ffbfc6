//! The README and the guide under docs/ say what works: every `cargo xtask` command they show
//! names a real subcommand, every option on its line is one that subcommand takes, and every
//! relative link points at a file that exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// README.md and every docs/*.md, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
    docs.sort();
    paths.extend(docs);
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

/// The command lines a page shows: lines of its code blocks and inline code spans that run
/// `cargo xtask` (or the built `target/release/xtask`), cut after the xtask and before a `#`
/// comment or a closing backtick.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut push = |s: &str| {
        for marker in ["cargo xtask ", "target/release/xtask "] {
            if let Some(i) = s.find(marker) {
                let rest = &s[i + marker.len()..];
                let rest = rest.split(" #").next().unwrap().split('`').next().unwrap().trim();
                // A bare mention of the tool (`cargo xtask`, `cargo xtask ...`) is no command.
                if !rest.is_empty() && !rest.starts_with("...") {
                    out.push(rest.to_string());
                }
                return;
            }
        }
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            push(line);
        } else {
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 {
                    push(&format!("{span} "));
                }
            }
        }
    }
    out
}

/// The subcommand words at the start of a command line (`sandbox exec`, `fetch-model`), up to
/// the first option, placeholder or path.
fn subcommand(line: &str) -> Vec<&str> {
    line.split_whitespace().take_while(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()) && !w.starts_with('-')).collect()
}

/// `xtask <words> --help`, or `None` when that is no subcommand. A trailing word may be a
/// positional value (`fetch-model smollm2-135m`), so shorter paths are tried too.
fn help(words: &[&str], cache: &mut HashMap<Vec<String>, Option<String>>) -> Option<(usize, String)> {
    for n in (1..=words.len()).rev() {
        let key: Vec<String> = words[..n].iter().map(|s| s.to_string()).collect();
        let text = cache
            .entry(key.clone())
            .or_insert_with(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(&key).arg("--help").output().unwrap();
                out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
            })
            .clone();
        if let Some(text) = text {
            return Some((n, text));
        }
    }
    None
}

#[test]
fn every_documented_command_and_option_exists() {
    let mut cache = HashMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in pages() {
        let page = path.strip_prefix(root()).unwrap().display().to_string();
        for line in commands(&text) {
            let words = subcommand(&line);
            if words.is_empty() {
                problems.push(format!("{page}: `cargo xtask {line}` names no subcommand"));
                continue;
            }
            let Some((_, help_text)) = help(&words, &mut cache) else {
                problems.push(format!("{page}: `cargo xtask {line}`: `{}` is not a subcommand", words.join(" ")));
                continue;
            };
            let mut rest = line.as_str();
            while let Some(i) = rest.find("--") {
                let flag: String = rest[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                rest = &rest[i + 2 + flag.len()..];
                if !flag.is_empty() && !help_text.contains(&format!("--{flag}")) {
                    problems.push(format!("{page}: `cargo xtask {line}`: `{}` takes no --{flag}", words.join(" ")));
                }
            }
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 40, "only {checked} command lines found in the README and docs/");
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    for (path, text) in pages() {
        let dir = path.parent().unwrap();
        for piece in text.split("](").skip(1) {
            let target = piece.split(')').next().unwrap().split('#').next().unwrap();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !dir.join(target).exists() {
                broken.push(format!("{}: {target}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_door() {
    let lines = std::fs::read_to_string(root().join("README.md")).unwrap().lines().count();
    assert!(lines <= 250, "README.md has {lines} lines: details belong in docs/");
}

/// The extraction itself, on lines whose answers are known.
#[test]
fn command_lines_are_read_as_written() {
    let text = "see `cargo xtask eval --model M` and `cargo xtask`\nxtask/  `cargo xtask ...` (train)\n```sh\ncargo xtask sandbox exec [--timeout-ms N]   # a comment --not-a-flag\nmpirun -n 2 target/release/xtask train --device cpu\n```\n";
    assert_eq!(commands(text), ["eval --model M", "sandbox exec [--timeout-ms N]", "train --device cpu"]);
    assert_eq!(subcommand("sandbox exec [--timeout-ms N]"), ["sandbox", "exec"]);
    assert_eq!(subcommand("fetch-model smollm2-135m"), ["fetch-model", "smollm2-135m"]);
    assert_eq!(subcommand("compare runs/tiny runs/b"), ["compare"]);
}
