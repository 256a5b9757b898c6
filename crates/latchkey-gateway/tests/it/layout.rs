//! The crate's layout shows its architecture: no module imports one that imports it
//! back (directly or through others), and the domain service and the shared state never
//! reach up into the HTTP handlers. Read from the source, so a new circle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module (top-level, under `src/`) → the top-level modules it names as `crate::…`,
/// comments and tests left out.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(top.clone()).or_default();
            for line in code.lines() {
                let line = line.split("//").next().unwrap_or("");
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// Every module reachable from `from`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = vec![from];
    while let Some(m) = todo.pop() {
        for d in graph.get(m).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d);
            }
        }
    }
    seen
}

#[test]
fn no_module_imports_itself_back() {
    let graph = imports();
    assert!(graph.contains_key("state") && graph.contains_key("service"));
    let circles: Vec<&String> = graph
        .keys()
        .filter(|m| reachable(&graph, m).contains(*m))
        .collect();
    assert!(circles.is_empty(), "import circles through {circles:?}");
}

#[test]
fn the_state_and_the_service_sit_under_the_handlers() {
    let graph = imports();
    let handlers = [
        "app",
        "servers",
        "credentials",
        "flows",
        "tools",
        "proxy",
        "federated",
        "api_keys",
        "ui",
    ];
    for lower in ["state", "service", "config", "error", "setting"] {
        let below = reachable(&graph, lower);
        for h in handlers {
            assert!(!below.contains(h), "{lower} reaches the handler module {h}");
        }
    }
}
