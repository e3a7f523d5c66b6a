//! The shard's modules import each other without a cycle (issue #16: "no import cycle inside
//! `shard/`"): read from the sources, so a new `use super::...` that closes a loop fails here.

use std::collections::{BTreeMap, BTreeSet};

#[test]
fn shard_modules_form_no_import_cycle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/shard");
    let names: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_string))
        .filter(|m| m != "mod")
        .collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in &names {
        let text = std::fs::read_to_string(format!("{dir}/{module}.rs")).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = BTreeSet::new();
        for prefix in ["super::", "crate::shard::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if names.contains(&name) && &name != module {
                    found.insert(name);
                }
            }
        }
        deps.insert(module.clone(), found);
    }
    // Depth-first search for a back edge.
    fn visit(
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
                "import cycle in src/shard: {}",
                path[at..].join(" -> ") + " -> " + node
            );
        }
        path.push(node.to_string());
        for next in &deps[node] {
            visit(next, deps, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for module in deps.keys() {
        visit(module, &deps, &mut Vec::new(), &mut done);
    }
    assert!(deps.len() >= 10, "read the shard's modules: {deps:?}");
}
