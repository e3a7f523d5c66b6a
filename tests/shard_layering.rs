//! No import cycle anywhere in `src/` (issue #16 asked it of `shard/`, #29 of the whole crate):
//! read from the sources, so a new `use` that closes a loop fails here. Two levels are checked:
//! the crate's top-level modules (`crate::x` in any file of module `y` is an edge `y -> x`), and
//! the sibling files of each directory module (`super::x` or `crate::<dir>::x`). A directory's
//! `mod.rs` is its parent, not a sibling: its children may use what it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `path` (the file itself for a file module).
fn files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The modules of directory `dir` (`name -> its files`), `mod.rs`, `lib.rs` and `main.rs` left
/// out.
fn modules(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "testdata") {
                continue;
            }
            name
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if ["mod", "lib", "main"].contains(&stem) {
                continue;
            }
            stem.to_string()
        } else {
            continue;
        };
        out.insert(module, files(&path));
    }
    out
}

/// `module -> the modules it names` through any of `prefixes`, comments left out.
fn edges(
    modules: &BTreeMap<String, Vec<PathBuf>>,
    prefixes: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = BTreeMap::new();
    for (module, paths) in modules {
        let mut found = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path).unwrap();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for prefix in prefixes {
                for (at, _) in code.match_indices(prefix.as_str()) {
                    let name: String = code[at + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if modules.contains_key(&name) && &name != module {
                        found.insert(name);
                    }
                }
            }
        }
        deps.insert(module.clone(), found);
    }
    deps
}

/// Panics with the cycle if the graph has one (depth-first search for a back edge).
fn assert_acyclic(what: &str, deps: &BTreeMap<String, BTreeSet<String>>) {
    fn visit(
        what: &str,
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == node) {
            panic!(
                "import cycle in {what}: {}",
                path[at..].join(" -> ") + " -> " + node
            );
        }
        path.push(node.to_string());
        for next in &deps[node] {
            visit(what, next, deps, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for module in deps.keys() {
        visit(what, module, deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn no_module_of_the_crate_imports_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top = modules(&src);
    assert!(top.len() >= 15, "read the crate's modules: {top:?}");
    assert_acyclic("src/", &edges(&top, &["crate::".to_string()]));
    let mut directories = 0;
    for name in top.keys() {
        let dir = src.join(name);
        if !dir.is_dir() {
            continue;
        }
        directories += 1;
        let siblings = modules(&dir);
        let prefixes = ["super::".to_string(), format!("crate::{name}::")];
        assert_acyclic(&format!("src/{name}/"), &edges(&siblings, &prefixes));
    }
    assert!(directories >= 10, "read the directory modules");
    let shard = modules(&src.join("shard"));
    assert!(shard.len() >= 10, "read the shard's modules: {shard:?}");
}
