//! The layers of src/ (README "Layout", issue 18), one folder each, lowest first:
//! domain (pure), store (SQLite), share (the remote), notify (alert delivery), app (what
//! the commands do). Code in a layer imports only its own layer and those below it;
//! `error` and `exit` are for everyone. Modules are named by their folder path
//! (`crate::domain::plan`) or by the short name the crate root re-exports
//! (`crate::plan`); both resolve to the folder here. Doc comments and the test module
//! at the end of a file may mention anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["domain", "store", "share", "notify", "app"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module name to the layer's rank: each layer, and the modules of the layers whose
/// modules the crate root re-exports by their short names (domain, share, app; the
/// store's and notify's own modules are reached through `crate::store`/`crate::notify`).
fn rank_of_module() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        out.insert(layer.to_string(), rank);
        if ["store", "notify"].contains(layer) {
            continue;
        }
        for entry in std::fs::read_dir(src().join(layer)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name != "mod" && (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
                assert!(
                    out.insert(name.clone(), rank).is_none(),
                    "module name {name} is used by two layers"
                );
            }
        }
    }
    out
}

/// The modules `source` names as `crate::NAME` or `crate::LAYER::NAME` in code (comments
/// and the test module left out).
fn uses(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let mut rest = line.split("//").next().unwrap_or("");
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // crate::{time, Error, Result}: the first segment of each item
                let group = group.split('}').next().unwrap_or("");
                out.extend(
                    group
                        .split(',')
                        .map(|item| item.trim().split("::").next().unwrap_or("").to_string()),
                );
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn each_layer_imports_only_itself_and_the_layers_below() {
    let ranks = rank_of_module();
    let mut checked = 0;
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src().join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in uses(&text) {
                if let Some(&used) = ranks.get(&name) {
                    assert!(
                        used <= rank,
                        "{} (layer {layer}) imports crate::{name} (layer {})",
                        file.display(),
                        LAYERS[used]
                    );
                } else {
                    assert!(
                        ["error", "exit", "Error", "Result"].contains(&name.as_str()),
                        "{} names crate::{name}, which is in no layer",
                        file.display()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} files checked");
}

#[test]
fn the_checker_sees_an_upward_import() {
    let ranks = rank_of_module();
    let names = uses("use crate::sync::Writer;\nuse crate::{time, app::cli, Error};\n// crate::app::runner\nfn f() { crate::store::Store::open(p); }\n#[cfg(test)]\nmod tests { use crate::cli; }\n");
    assert_eq!(names, ["sync", "time", "app", "Error", "store"]);
    assert_eq!(ranks["sync"], 2);
    assert_eq!(ranks["plan"], 0);
    assert_eq!(ranks["runner"], 4);
    assert_eq!(ranks["notify"], 3);
    assert!(!ranks.contains_key("slack"));
}
