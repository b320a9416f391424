//! The layering test (rust-analyzer's "tidy" tests do the same): `docs/ARCHITECTURE.md`'s code
//! map gives each module a layer, and a module may use only modules of a lower one. This reads
//! the table and every path in `src/` that names a module (`crate::x`, `crate::{x::y, z}`,
//! `super::super::x`, `self::x`; outside comments, strings and test code), resolves it from the
//! file's place in the tree, and fails on a path that points up or sideways, or a module the
//! table does not name. A second test fails on a circle between the files of one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `module -> layer`, from the code map's table.
fn layers() -> BTreeMap<String, u32> {
    let doc = include_str!("../docs/ARCHITECTURE.md");
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let (Ok(layer), Some(module)) = (
            cells[1].parse::<u32>(),
            cells[2].strip_prefix('`').and_then(|m| m.strip_suffix('`')),
        ) else {
            continue;
        };
        out.insert(module.to_string(), layer);
    }
    out
}

/// The code of a source file without comments and without its `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut test_attr = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let t = code.trim();
        if skip_depth.is_none() && t == "#[cfg(test)]" {
            test_attr = true;
            continue;
        }
        if test_attr && skip_depth.is_none() {
            test_attr = false;
            if t.starts_with("mod ") && t.ends_with('{') {
                skip_depth = Some(depth);
            } else if t.starts_with("mod ") || t.starts_with("use ") {
                continue;
            }
        }
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The code's tokens that matter to a path: identifiers, `::`, braces and commas (string and
/// character literals dropped, every other character one token).
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A raw string: `r"…"` or `r#"…"#`.
            if word == "r" && i < chars.len() && (chars[i] == '"' || chars[i] == '#') {
                let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
                if chars.get(i + hashes) == Some(&'"') {
                    let close: String = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    let rest: String = chars[i + hashes + 1..].iter().collect();
                    let end = rest.find(&close).map_or(rest.len(), |e| e + close.len());
                    i += hashes + 1 + rest[..end].chars().count();
                    continue;
                }
            }
            out.push(word);
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
            if chars.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Reads the path's tail at `tokens[k..]` below `base` (a segment, `self`, or a `{…}` group),
/// pushes every full path it names to `out`, and returns the index after it.
fn tail(tokens: &[String], mut k: usize, base: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    match tokens.get(k).map(String::as_str) {
        Some("{") => {
            k += 1;
            while k < tokens.len() && tokens[k] != "}" {
                k = tail(tokens, k, base.clone(), out);
                // Skip `as name` and anything else up to the item's end.
                while k < tokens.len() && tokens[k] != "," && tokens[k] != "}" {
                    k += 1;
                }
                if tokens.get(k).map(String::as_str) == Some(",") {
                    k += 1;
                }
            }
            k + 1
        }
        Some("self") => {
            out.push(base);
            k + 1
        }
        Some(word) if word.chars().all(|c| c.is_alphanumeric() || c == '_') => {
            let mut path = base;
            path.push(word.to_string());
            if tokens.get(k + 1).map(String::as_str) == Some("::") {
                tail(tokens, k + 2, path, out)
            } else {
                out.push(path);
                k + 1
            }
        }
        _ => {
            out.push(base);
            k
        }
    }
}

/// Every path from the crate's root that `code`, the code of the module at `here` (e.g.
/// `["conditions", "network"]`), names through `crate::`, `super::` or `self::`. Inline
/// modules (`mod name {`) are followed, so their `super::` resolves to their parent.
fn paths_used(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let tokens = tokens(code);
    let mut out = Vec::new();
    // The inline modules open at this point: (name, brace depth inside it).
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut k = 0;
    while k < tokens.len() {
        let t = tokens[k].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| depth < *d) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(k + 2).map(String::as_str) == Some("{") => {
                inline.push((tokens[k + 1].clone(), depth + 1));
            }
            _ => {}
        }
        let after_path = k > 0 && tokens[k - 1] == "::";
        if !after_path
            && matches!(t, "crate" | "super" | "self")
            && tokens.get(k + 1).map(String::as_str) == Some("::")
        {
            let mut base: Vec<String> = here
                .iter()
                .cloned()
                .chain(inline.iter().map(|(n, _)| n.clone()))
                .collect();
            match t {
                "crate" => base.clear(),
                "super" => {
                    base.pop();
                }
                _ => {}
            }
            let mut j = k + 2;
            while tokens.get(j).map(String::as_str) == Some("super")
                && tokens.get(j + 1).map(String::as_str) == Some("::")
            {
                base.pop();
                j += 2;
            }
            k = tail(&tokens, j, base, &mut out);
            continue;
        }
        k += 1;
    }
    out
}

/// The module path of a file below `src/`: `conditions/network.rs` is
/// `["conditions", "network"]`, `conditions/mod.rs` is `["conditions"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut out: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if out.last().is_some_and(|l| l == "mod") {
        out.pop();
    }
    out
}

/// What is wrong with the uses of the file at `here` (its module path) whose code is `code`.
fn wrong_uses(
    layers: &BTreeMap<String, u32>,
    file: &str,
    here: &[String],
    code: &str,
) -> Vec<String> {
    let module = &here[0];
    let Some(&mine) = layers.get(module) else {
        return vec![format!(
            "{file}: module `{module}` has no row in docs/ARCHITECTURE.md"
        )];
    };
    let mut wrong = Vec::new();
    for path in paths_used(code, here) {
        let Some(dep) = path.first() else { continue };
        if dep == module {
            continue;
        }
        match layers.get(dep) {
            Some(&theirs) if theirs < mine => {}
            Some(&theirs) => wrong.push(format!(
                "{file}: `{module}` (layer {mine}) uses `{dep}` (layer {theirs})"
            )),
            None => wrong.push(format!("{file}: uses `{dep}`, which has no row")),
        }
    }
    wrong
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every layered source file: (path below `src/`, module path, code).
fn sources() -> Vec<(String, Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let name = rel.file_name().unwrap().to_string_lossy();
        // Test files and the binary's entry point are not layered.
        if name == "tests.rs"
            || name.ends_with("_tests.rs")
            || rel == Path::new("main.rs")
            || rel == Path::new("layering.rs")
        {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        out.push((rel.display().to_string(), module_path(rel), code));
    }
    out.sort();
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let layers = layers();
    assert!(
        layers.len() > 10,
        "the code map's table was not found: {layers:?}"
    );
    let mut wrong = Vec::new();
    for (file, here, code) in sources() {
        wrong.extend(wrong_uses(&layers, &file, &here, &code));
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "dependencies that point up:\n{}",
        wrong.join("\n")
    );
}

/// A circle between the files of one module, if there is one: `a -> b -> a`. The files of a
/// module (`conditions/network.rs`, `conditions/metered.rs`) may use each other one way only: a
/// circle means neither can be read, tested or moved without the other. A module's `mod.rs`
/// (what its files share, and their re-exports) is left out.
fn circle(sources: &[(String, Vec<String>, String)]) -> Option<String> {
    type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;
    let files: BTreeSet<&Vec<String>> = sources
        .iter()
        .map(|(_, here, _)| here)
        .filter(|h| h.len() >= 2)
        .collect();
    // file -> the sibling files it uses.
    let mut edges = Graph::new();
    for (_, here, code) in sources {
        if here.len() < 2 {
            continue;
        }
        let parent = &here[..here.len() - 1];
        for path in paths_used(code, here) {
            let sibling = files.iter().find(|f| {
                f.len() == here.len() && f[..f.len() - 1] == *parent && path.starts_with(f)
            });
            if let Some(s) = sibling.filter(|s| **s != here) {
                edges.entry(here.clone()).or_default().insert((*s).clone());
            }
        }
    }
    fn visit(
        node: &Vec<String>,
        edges: &Graph,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<String> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let names: Vec<String> = stack[at..].iter().map(|n| n.join("::")).collect();
            return Some(format!("{} -> {}", names.join(" -> "), node.join("::")));
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, &edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_circle_between_the_files_of_a_module() {
    if let Some(c) = circle(&sources()) {
        panic!("a circle between the files of a module: {c}");
    }
}

#[cfg(test)]
mod checker {
    use super::*;

    fn table() -> BTreeMap<String, u32> {
        [("gate", 2), ("store", 4), ("app", 9), ("scheduler", 10)]
            .into_iter()
            .map(|(m, l)| (m.to_string(), l))
            .collect()
    }

    fn here(p: &str) -> Vec<String> {
        p.split("::").map(String::from).collect()
    }

    /// Each way of naming `app` from `store` (layer 4 below 9) must be caught, the two forms the
    /// first checker let through (a group after `crate::`, and `super::super::`) included.
    #[test]
    fn every_form_of_an_upward_path_is_caught() {
        let forms = [
            ("store::queue", "use crate::app::App;"),
            ("store::queue", "use crate::{app::App};"),
            ("store::queue", "use crate::{gate, app::App};"),
            (
                "store::queue",
                "use crate::{gate::{self, Verdict}, app::{self, App}};",
            ),
            ("store::queue", "use super::super::app::App;"),
            ("store", "use super::app::App;"),
            ("store::queue", "fn f() -> crate::app::App { todo!() }"),
            ("store::queue", "use crate::\n{\n  app::App,\n};"),
            ("store", "mod inner { use super::super::app::App; }"),
        ];
        for (at, code) in forms {
            let wrong = wrong_uses(&table(), "x.rs", &here(at), code);
            assert!(
                !wrong.is_empty() && wrong.iter().all(|w| w.contains("uses `app` (layer 9)")),
                "{code:?} in {at}: {wrong:?}"
            );
        }
    }

    #[test]
    fn downward_and_inner_paths_pass() {
        let forms = [
            ("scheduler", "use crate::{gate, store::Store, app::App};"),
            (
                "store::queue",
                "use super::Store; use super::super::gate::Verdict;",
            ),
            (
                "store::queue",
                "use self::inner::X; const S: &str = \"crate::app\";",
            ),
            (
                "store::queue",
                "let c = 'x'; fn f<'a>(x: &'a str) {} use crate::gate;",
            ),
            ("store", "mod inner { use super::Store; }"),
        ];
        for (at, code) in forms {
            let wrong = wrong_uses(&table(), "x.rs", &here(at), code);
            assert!(wrong.is_empty(), "{code:?} in {at}: {wrong:?}");
        }
    }

    #[test]
    fn a_circle_between_two_files_is_found() {
        let file = |at: &str, code: &str| (format!("{at}.rs"), here(at), code.to_string());
        let circled = [
            file("conditions::metered", "use super::network::Link;"),
            file("conditions::network", "use super::metered::Metered;"),
            file("conditions", "pub use network::Link;"),
        ];
        let found = circle(&circled).expect("the circle is found");
        assert!(
            found.contains("conditions::metered -> conditions::network"),
            "{found}"
        );
        let one_way = [
            file("conditions::metered", "use super::{Network, read_attr};"),
            file(
                "conditions::network",
                "use crate::conditions::metered::Metered;",
            ),
        ];
        assert_eq!(circle(&one_way), None);
    }
}
