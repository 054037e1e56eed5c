//! `cargo xtask layers`: checks that tcpstate's modules import only
//! downwards (docs/ARCHITECTURE.md, "Layers") and that no two modules import
//! each other, directly or around a circle; prints files and lines per layer.
//!
//! It reads `use` trees and `crate::`/`super::` paths as text, outside
//! `#[cfg(test)]` modules (tests may reach anywhere). Enough for this crate,
//! whose imports rustfmt keeps in one shape.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Top to bottom. A module may import from its own layer (without cycles)
/// and from any layer below; `lib` is the crate root (its error type).
pub const LAYERS: [&str; 9] =
    ["main", "commands", "session", "config", "cli", "sink", "source", "model", "lib"];

/// One source file: its module path (`model::timewait::exact`) and text
/// without its test modules.
struct Module {
    path: Vec<String>,
    lines: usize,
    code: String,
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    match last.trim_end_matches(".rs") {
        "mod" => {}
        "lib" if parts.is_empty() => parts.push("lib".into()),
        "main" if parts.is_empty() => parts.push("main".into()),
        name => parts.push(name.into()),
    }
    parts
}

/// The code before the first `#[cfg(test)]` item (test modules come
/// last), without line comments.
fn without_tests(text: &str) -> String {
    let code = text.find("#[cfg(test)]").map_or(text, |i| &text[..i]);
    code.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Expands a `use` tree (`crate::{a::b, c::{d, e}}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| expand(&format!("{prefix}{p}"))).collect()
}

/// Every path the module names: its `use` trees and inline `crate::` and
/// `super::` paths, resolved to absolute module paths.
fn references(module: &Module) -> BTreeSet<Vec<String>> {
    let mut paths = Vec::new();
    let code = &module.code;
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let before_ok =
            i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let tail = &rest[i + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if before_ok {
            paths.extend(expand(&tail[..end]));
        }
        rest = &tail[end.min(tail.len())..];
    }
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            let path: String =
                code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(path);
            from = at + start.len();
        }
    }
    // The module's own path, as `super::` sees it from a file.
    let own = &module.path;
    paths
        .into_iter()
        .filter_map(|p| {
            let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let (first, rest) = segs.split_first()?;
            let mut abs: Vec<String> = match *first {
                "crate" => Vec::new(),
                "super" => {
                    // `mod.rs` and leaf files alike: super is the parent of
                    // the module the file is.
                    let mut base = own.clone();
                    base.pop();
                    let mut rest = rest;
                    while let Some(("super", r)) = rest.split_first().map(|(a, b)| (*a, b)) {
                        base.pop();
                        rest = r;
                    }
                    let mut abs = base;
                    abs.extend(rest.iter().map(|s| s.to_string()));
                    return Some(abs);
                }
                _ => return None,
            };
            abs.extend(rest.iter().map(|s| s.to_string()));
            Some(abs)
        })
        .filter(|p| !p.is_empty())
        .collect()
}

fn layer_of(path: &[String]) -> usize {
    let top = path.first().map_or("lib", String::as_str);
    LAYERS.iter().position(|l| *l == top).unwrap_or(LAYERS.len() - 1)
}

/// The module a path lands in: its longest prefix that is a file.
fn target_module<'a>(path: &[String], modules: &'a BTreeSet<Vec<String>>) -> Option<&'a Vec<String>> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n].to_vec())).or_else(|| {
        // Items of the crate root (`crate::UsageError`).
        modules.get(&vec!["lib".to_string()])
    })
}

pub fn check() -> anyhow::Result<()> {
    let src = crate::workspace_root().join("tcpstate/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let modules: Vec<Module> = files
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f)?;
            Ok(Module { path: module_path(&src, f), lines: text.lines().count(), code: without_tests(&text) })
        })
        .collect::<anyhow::Result<_>>()?;
    let names: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();

    let mut upward = Vec::new();
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for m in &modules {
        let here = layer_of(&m.path);
        for r in references(m) {
            let Some(target) = target_module(&r, &names) else { continue };
            if target == &m.path {
                continue;
            }
            if layer_of(target) < here {
                let (from, to) = (m.path.join("::"), r.join("::"));
                upward.push(format!("{from} imports {to}, from layer {}", LAYERS[layer_of(target)]));
            }
            edges.entry(&m.path).or_default().insert(target);
        }
    }
    let cycles = find_cycles(&edges);

    println!("{:<10} {:>5} {:>7}  longest", "layer", "files", "lines");
    for (i, layer) in LAYERS.iter().enumerate() {
        let in_layer: Vec<&Module> = modules.iter().filter(|m| layer_of(&m.path) == i).collect();
        let lines: usize = in_layer.iter().map(|m| m.lines).sum();
        let longest = in_layer.iter().max_by_key(|m| m.lines);
        println!(
            "{layer:<10} {:>5} {lines:>7}  {}",
            in_layer.len(),
            longest.map_or(String::new(), |m| format!("{} ({})", m.path.join("::"), m.lines))
        );
    }
    let total: usize = modules.iter().map(|m| m.lines).sum();
    println!("{:<10} {:>5} {total:>7}", "total", modules.len());

    for line in &upward {
        eprintln!("upward import: {line}");
    }
    for cycle in &cycles {
        eprintln!("import cycle: {}", cycle.iter().map(|p| p.join("::")).collect::<Vec<_>>().join(" -> "));
    }
    if !upward.is_empty() || !cycles.is_empty() {
        bail!("{} upward imports, {} import cycles", upward.len(), cycles.len());
    }
    println!("layers: every import points down, and no modules import each other in a circle");
    Ok(())
}

/// Circles in the module graph, each once (by its smallest member).
fn find_cycles<'a>(
    edges: &BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
) -> Vec<Vec<&'a Vec<String>>> {
    let mut cycles = Vec::new();
    let mut seen_starts = BTreeSet::new();
    for &start in edges.keys() {
        // Depth-first from `start`, through nodes greater than it only, so
        // each circle is found from its smallest node.
        let mut stack = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for &next in edges.get(node).into_iter().flatten() {
                if next == start {
                    if seen_starts.insert(path.clone()) {
                        cycles.push(path.clone());
                    }
                } else if next > start && visited.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        assert_eq!(
            expand("crate::{\n    config,\n    model::{a::B, c},\n}"),
            ["crate::config", "crate::model::a::B", "crate::model::c"]
        );
        assert_eq!(expand("super::tracer::Tracer"), ["super::tracer::Tracer"]);
    }

    #[test]
    fn super_resolves_from_the_file() {
        let m = Module {
            path: vec!["model".into(), "timewait".into(), "exact".into()],
            lines: 0,
            code: "use super::{Entry, Tracker};\nuse crate::model::transition::TcpState;\n".into(),
        };
        let refs: Vec<String> = references(&m).into_iter().map(|p| p.join("::")).collect();
        // `super::{` also names the parent module itself.
        let want = [
            "model::timewait",
            "model::timewait::Entry",
            "model::timewait::Tracker",
            "model::transition::TcpState",
        ];
        assert_eq!(refs, want);
    }

    #[test]
    fn circles_are_found_once() {
        let (a, b, c) = (vec!["a".to_string()], vec!["b".to_string()], vec!["c".to_string()]);
        let mut edges = BTreeMap::new();
        edges.insert(&a, BTreeSet::from([&b]));
        edges.insert(&b, BTreeSet::from([&c]));
        edges.insert(&c, BTreeSet::from([&a]));
        assert_eq!(find_cycles(&edges).len(), 1);
        edges.insert(&c, BTreeSet::new());
        assert!(find_cycles(&edges).is_empty());
    }
}
