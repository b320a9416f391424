//! The layering test (rust-analyzer's "tidy" tests do the same): `docs/ARCHITECTURE.md`'s code
//! map gives each module a layer, and a module may use only modules of a lower one. This reads
//! the table and every `crate::` path in `src/` (outside comments and test code) and fails on a
//! path that points up or sideways, or a module the table does not name.

use std::collections::BTreeMap;
use std::path::Path;

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

fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let layers = layers();
    assert!(
        layers.len() > 10,
        "the code map's table was not found: {layers:?}"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut wrong = Vec::new();
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
        let module = module_of(rel);
        let Some(&mine) = layers.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no row in docs/ARCHITECTURE.md",
                rel.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for (i, _) in code.match_indices("crate::") {
            let dep: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if dep == module || dep.is_empty() {
                continue;
            }
            match layers.get(&dep) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "{}: `{module}` (layer {mine}) uses `{dep}` (layer {theirs})",
                    rel.display()
                )),
                None => wrong.push(format!("{}: uses `{dep}`, which has no row", rel.display())),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "dependencies that point up:\n{}",
        wrong.join("\n")
    );
}
